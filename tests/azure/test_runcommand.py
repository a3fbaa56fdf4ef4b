"""Run Command against the emulator with the real SDK: the script and its parameters go through, transient
refusals are retried within the deadline, and everything else becomes a permanent error quoting the output."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import pytest
from azure.mgmt.compute.models import RunCommandInput, RunCommandInputParameter

from remediate.azure.clients import AzureClients
from remediate.azure.runcommand import run_script
from remediate.guest.contract import GuestOutputError, script_text
from remediate.model import PermanentError, TransientError, VmId
from remediate.settings import Settings
from sim.fleet import VirtualMachine
from sim.operations import Latencies
from sim.server import Emulator
from tests.fixtures.emulator import EmulatorFactory, emulator_env

pytestmark = pytest.mark.emulator


class Sleeps:
    """A stand-in for time.sleep that records the waits and can act during them (like time passing)."""

    def __init__(self, during: Callable[[], None] | None = None) -> None:
        self.waits: list[float] = []
        self._during = during

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self._during is not None:
            self._during()


def the_vm(emulator: Emulator, scenario: str) -> tuple[VirtualMachine, VmId]:
    vm = emulator.fleet.by_scenario(scenario)[0]
    return vm, VmId.parse(vm.resource_id)


def run_commands(emulator: Emulator) -> list[int]:
    """The status of each Run Command POST the emulator answered, in order."""
    return [entry.status for entry in emulator.log.entries() if entry.operation == "runCommand"]


def within(seconds: float) -> float:
    return time.monotonic() + seconds


@contextlib.contextmanager
def product_clients(emulator: Emulator) -> Iterator[AzureClients]:
    clients = AzureClients(Settings.from_env(emulator_env(emulator)))
    try:
        yield clients
    finally:
        clients.close()


def test_diagnose_returns_the_validated_summary(emulator: Emulator, azure_clients: AzureClients) -> None:
    _, vm = the_vm(emulator, "expired-certificate")
    summary = run_script(azure_clients, vm, "diagnose", {}, within(30))
    assert summary["script"] == "diagnose"
    assert summary["findings"]["listener"]["hash_type"] == 1
    assert summary["findings"]["events"]["1058"]["count"] == 1
    assert run_commands(emulator) == [202]


def test_a_repair_changes_the_guest(emulator: Emulator, azure_clients: AzureClients) -> None:
    guest_vm, vm = the_vm(emulator, "expired-certificate")
    with emulator.fleet.lock:
        assert guest_vm.guest.certificate is not None
        old = guest_vm.guest.certificate.thumbprint
    summary = run_script(azure_clients, vm, "renew-certificate", {"Thumbprint": old}, within(30))
    assert summary["changed"] is True
    with emulator.fleet.lock:
        assert guest_vm.guest.certificate is not None
        assert summary["findings"]["listener"] == guest_vm.guest.certificate.thumbprint != old


def test_detect_only_reaches_the_script_and_changes_nothing(emulator: Emulator, azure_clients: AzureClients) -> None:
    guest_vm, vm = the_vm(emulator, "expired-certificate")
    with emulator.fleet.lock:
        before = guest_vm.guest.certificate
        assert before is not None
    parameters = {"DetectOnly": "true", "Thumbprint": before.thumbprint}
    summary = run_script(azure_clients, vm, "renew-certificate", parameters, within(30))
    assert summary["detect_only"] is True and summary["changed"] is False
    assert any(action.startswith("would remove") for action in summary["actions"])
    with emulator.fleet.lock:
        assert guest_vm.guest.certificate is before


def test_a_run_command_in_progress_is_waited_out(emulator: Emulator, azure_clients: AzureClients) -> None:
    guest_vm, vm = the_vm(emulator, "healthy")
    with emulator.fleet.lock:
        guest_vm.run_command_busy = True

    def the_other_command_ends() -> None:
        with emulator.fleet.lock:
            guest_vm.run_command_busy = False

    sleeps = Sleeps(the_other_command_ends)
    summary = run_script(azure_clients, vm, "diagnose", {}, within(60), sleep=sleeps)
    assert summary["errors"] == [] and summary["findings"]["key"]["network_service_read"] is True
    assert run_commands(emulator) == [409, 202]
    assert len(sleeps.waits) == 1


def test_an_agent_not_back_from_a_reboot_is_waited_for_until_the_agent_deadline(
    emulator_factory: EmulatorFactory,
) -> None:
    emulator = emulator_factory(latencies=Latencies(agent_wait_limit=20.0), listeners=False)
    guest_vm, vm = the_vm(emulator, "healthy")
    emulator.faults.add("runCommand", "agent-not-ready", 2, guest_vm.resource_id)
    sleeps = Sleeps()
    with product_clients(emulator) as clients:
        summary = run_script(clients, vm, "diagnose", {}, within(60), agent_deadline=within(60), sleep=sleeps)
    assert summary["script"] == "diagnose"
    # Each attempt was accepted, waited for the agent and failed with VMAgentStatusCommunicationError.
    assert run_commands(emulator) == [202, 202, 202]
    assert len(sleeps.waits) == 2


def test_an_unresponsive_agent_without_a_reboot_is_permanent(emulator_factory: EmulatorFactory) -> None:
    emulator = emulator_factory(latencies=Latencies(agent_wait_limit=20.0), listeners=False)
    guest_vm, vm = the_vm(emulator, "healthy")
    emulator.faults.add("runCommand", "agent-not-ready", 1, guest_vm.resource_id)
    with product_clients(emulator) as clients, pytest.raises(PermanentError, match="VMAgentStatusCommunicationError"):
        run_script(clients, vm, "diagnose", {}, within(60))
    assert run_commands(emulator) == [202]


def test_an_unresponsive_agent_past_the_agent_deadline_is_permanent(emulator_factory: EmulatorFactory) -> None:
    emulator = emulator_factory(latencies=Latencies(agent_wait_limit=20.0), listeners=False)
    guest_vm, vm = the_vm(emulator, "healthy")
    emulator.faults.add("runCommand", "agent-not-ready", 5, guest_vm.resource_id)
    with product_clients(emulator) as clients, pytest.raises(PermanentError, match="VMAgentStatusCommunicationError"):
        run_script(clients, vm, "diagnose", {}, within(60), agent_deadline=within(0.1))
    assert run_commands(emulator) == [202]


def test_retries_stop_at_the_deadline(emulator: Emulator, azure_clients: AzureClients) -> None:
    guest_vm, vm = the_vm(emulator, "healthy")
    emulator.faults.add("runCommand", "409", 1000, guest_vm.resource_id)
    now = [0.0]

    def clock() -> float:
        return now[0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(TransientError, match="in progress"):
        run_script(azure_clients, vm, "diagnose", {}, 120.0, clock=clock, sleep=sleep)
    assert now[0] < 120.0, "no wait may end past the deadline"
    assert 2 <= len(run_commands(emulator)) < 40


def test_an_operation_that_failed_with_a_retry_later_code_is_run_again(
    emulator: Emulator, azure_clients: AzureClients
) -> None:
    # InternalExecutionError: "An internal execution error occurred. Please retry later." (Microsoft Learn).
    guest_vm, vm = the_vm(emulator, "healthy")
    emulator.faults.add("runCommand", "lro-failed", 1, guest_vm.resource_id)
    sleeps = Sleeps()
    summary = run_script(azure_clients, vm, "diagnose", {}, within(60), sleep=sleeps)
    assert summary["script"] == "diagnose"
    assert len(sleeps.waits) == 1
    assert run_commands(emulator) == [202, 202]


def test_garbage_output_is_permanent_and_quoted(emulator: Emulator, azure_clients: AzureClients) -> None:
    guest_vm, vm = the_vm(emulator, "healthy")
    emulator.faults.add("runCommand", "garbage-output", 1, guest_vm.resource_id)
    with pytest.raises(GuestOutputError) as caught:
        run_script(azure_clients, vm, "diagnose", {}, within(60))
    assert "printed no JSON summary" in caught.value.reason
    assert "StdOut ends:" in caught.value.reason and "powershell.exe" in caught.value.reason


def test_oversized_output_cut_to_its_tail_still_yields_the_summary(
    emulator: Emulator, azure_clients: AzureClients
) -> None:
    guest_vm, vm = the_vm(emulator, "firewall-closed")
    emulator.faults.add("runCommand", "oversized-output", 2, guest_vm.resource_id)
    # What Azure returns: only the last 4096 bytes, the first line cut.
    compute = azure_clients.compute(vm.subscription)
    command = RunCommandInput(
        command_id="RunPowerShellScript",
        script=script_text("diagnose").splitlines(),
        parameters=[RunCommandInputParameter(name="DetectOnly", value="true")],
    )
    raw = compute.virtual_machines.begin_run_command(vm.resource_group, vm.name, command).result()
    stdout = str((raw.value or [])[0].message)
    assert len(stdout.encode("utf-8")) == 4096
    assert not stdout.startswith("progress: checking item 0000")
    summary = run_script(azure_clients, vm, "diagnose", {}, within(60))
    assert summary["findings"]["firewall"]["builtin_rule"]["enabled"] is False


def test_a_script_parameter_it_does_not_take_is_refused_before_any_call(
    emulator: Emulator, azure_clients: AzureClients
) -> None:
    _, vm = the_vm(emulator, "healthy")
    with pytest.raises(PermanentError, match="takes no parameter Force"):
        run_script(azure_clients, vm, "enable-tls12", {"Force": "true"}, within(30))
    assert run_commands(emulator) == []


def test_a_deallocated_vm_is_a_permanent_refusal(emulator: Emulator, azure_clients: AzureClients) -> None:
    _, vm = the_vm(emulator, "deallocated")
    sleeps = Sleeps()
    with pytest.raises(PermanentError, match="OperationNotAllowed") as caught:
        run_script(azure_clients, vm, "diagnose", {}, within(30), sleep=sleeps)
    assert not isinstance(caught.value, TransientError)
    assert sleeps.waits == []
