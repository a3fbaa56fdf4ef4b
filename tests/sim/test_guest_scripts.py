"""The shipped PowerShell scripts through the real SDK, the emulator's Run Command and the simulated guest."""

from __future__ import annotations

import pytest
from azure.mgmt.compute.models import RunCommandInput, RunCommandInputParameter

from remediate.azure.clients import AzureClients
from remediate.guest.contract import parse_output, script_text
from sim.fleet import RESOURCE_GROUP, SUBSCRIPTION
from sim.server import Emulator
from tests.sim.support import streams


def run_script(clients: AzureClients, vm: str, script: str, **parameters: str) -> tuple[str, str]:
    command = RunCommandInput(
        command_id="RunPowerShellScript",
        script=script_text(script).splitlines(),
        parameters=[RunCommandInputParameter(name=name, value=value) for name, value in parameters.items()],
    )
    result = clients.compute(SUBSCRIPTION).virtual_machines.begin_run_command(RESOURCE_GROUP, vm, command).result()
    return streams(result)


@pytest.mark.parametrize(
    ("vm", "hash_type", "event_1058"),
    [("vm-healthy", 1, 0), ("vm-expired-certificate", 1, 1), ("vm-policy-certificate", 2, 1)],
)
def test_diagnose_ps1_returns_a_valid_json_summary(
    azure_clients: AzureClients, vm: str, hash_type: int, event_1058: int
) -> None:
    stdout, stderr = run_script(azure_clients, vm, "diagnose", DetectOnly="true")

    summary = parse_output(stdout, stderr, "diagnose")

    assert summary["script"] == "diagnose"
    assert summary["changed"] is False
    assert summary["findings"]["listener"]["hash_type"] == hash_type
    assert summary["findings"]["events"]["1058"]["count"] == event_1058


def test_the_summary_survives_the_4096_byte_cut(emulator: Emulator, azure_clients: AzureClients) -> None:
    emulator.faults.add("runCommand", "oversized-output")

    stdout, stderr = run_script(azure_clients, "vm-expired-certificate", "diagnose")

    assert len(stdout.encode()) == 4096
    assert parse_output(stdout, stderr, "diagnose")["findings"]["events"]["1058"]["count"] == 1
