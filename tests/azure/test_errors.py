"""How Azure's errors are classified: by the innermost ARM error code, with the real SDK against the emulator
where the emulator can produce the answer, and with the SDK's own ARM error parser for documented bodies."""

from __future__ import annotations

import re

import pytest
from azure.mgmt.core.exceptions import ARMErrorFormat

from remediate.azure.clients import AzureClients
from remediate.azure.errors import CODES, AzureConflict, ErrorKind, classify, error_chain
from remediate.azure.vm import begin_restart, get_vm
from remediate.model import PermanentError, TransientError, VmId
from remediate.settings import Settings
from sim.server import Emulator
from tests.fixtures.emulator import EmulatorFactory, emulator_env
from tests.sim.support import ManualClock, RecordingGuest

# Microsoft Learn, "Troubleshooting throttling errors in Azure": Compute's 429 body.
COMPUTE_THROTTLED = {
    "code": "OperationNotAllowed",
    "message": "The server rejected the request because too many requests have been received for this subscription.",
    "details": [{"code": "TooManyRequests", "target": "HighCostGet30Min", "message": "{}"}],
}


def the_vm(emulator: Emulator, scenario: str) -> VmId:
    return VmId.parse(emulator.fleet.by_scenario(scenario)[0].resource_id)


def test_the_innermost_code_decides_over_the_top_level_one() -> None:
    parsed = ARMErrorFormat({"error": COMPUTE_THROTTLED})

    assert [code for code, _ in error_chain(parsed)] == ["OperationNotAllowed", "TooManyRequests"]
    assert classify(error_chain(parsed), 429).kind is ErrorKind.TRANSIENT
    # Without its detail the same top-level code is final, whatever the status.
    alone = ARMErrorFormat({"error": {"code": "OperationNotAllowed", "message": "The VM is generalized."}})
    assert classify(error_chain(alone), 409).kind is ErrorKind.PERMANENT


def test_operation_not_allowed_is_a_conflict_only_with_the_documented_in_progress_messages() -> None:
    busy = "Operation 'restart' is not allowed on VM 'vm1' since another operation is in progress."
    power = (
        "An ongoing operation is changing power state of Virtual Machine vm1 to running. "
        "Please perform operation x after some time."
    )
    stopped = "Operation 'restart' is not allowed on VM 'vm1' since the VM is deallocated."

    assert classify([("OperationNotAllowed", busy)], 409).kind is ErrorKind.CONFLICT
    assert classify([("OperationNotAllowed", power)], 409).kind is ErrorKind.CONFLICT
    assert classify([("OperationNotAllowed", stopped)], 409).kind is ErrorKind.PERMANENT


def test_a_409_with_an_unknown_code_is_final_and_a_5xx_without_one_is_transient() -> None:
    assert classify([("SomethingNew", "")], 409).kind is ErrorKind.PERMANENT
    assert classify([], 503).kind is ErrorKind.TRANSIENT
    assert classify([("OperationPreempted", "")], 200).kind is ErrorKind.CONFLICT
    assert classify([("InternalExecutionError", "")], 200).kind is ErrorKind.TRANSIENT


def test_every_code_rule_names_its_public_source() -> None:
    for code, rule in CODES.items():
        assert code == code.lower()
        assert "Microsoft Learn" in rule.source or re.search(r"\b[\w.-]+/[\w.-]+\b", rule.source), code


@pytest.mark.emulator
def test_restarting_a_deallocated_vm_is_permanent(emulator: Emulator, azure_clients: AzureClients) -> None:
    vm = the_vm(emulator, "deallocated")

    with pytest.raises(PermanentError, match="OperationNotAllowed") as caught:
        begin_restart(azure_clients, vm, "c0ffee00-0000-4000-8000-000000000001")

    assert not isinstance(caught.value, TransientError)
    assert "since the VM is deallocated" in caught.value.reason


@pytest.mark.emulator
def test_a_restart_while_another_operation_runs_is_a_conflict_worth_retrying(
    emulator_factory: EmulatorFactory,
) -> None:
    frozen = emulator_factory(guest=RecordingGuest(), clock=ManualClock(), listeners=False)  # time stands still
    vm = the_vm(frozen, "healthy")
    clients = AzureClients(Settings.from_env(emulator_env(frozen)))
    try:
        begin_restart(clients, vm, "c0ffee00-0000-4000-8000-000000000002")
        with pytest.raises(AzureConflict, match="another operation is in progress"):
            begin_restart(clients, vm, "c0ffee00-0000-4000-8000-000000000003")
    finally:
        clients.close()


@pytest.mark.emulator
def test_compute_throttling_is_transient_and_names_the_inner_code(
    emulator: Emulator, azure_clients: AzureClients
) -> None:
    vm = the_vm(emulator, "healthy")
    emulator.faults.add("getVm", "429", 50, emulator.fleet.by_scenario("healthy")[0].resource_id)

    with pytest.raises(TransientError, match="TooManyRequests") as caught:
        get_vm(azure_clients, vm)

    assert "OperationNotAllowed" in caught.value.reason


def test_a_state_conflict_is_final_and_only_an_in_progress_conflict_waits() -> None:
    """`Conflict` is the deployment-errors table's "not allowed in the resource's current state" (final); only the
    Run Command 409 "execution is in progress" (Azure/azure-cli issue 19137) ends by itself."""
    state = classify([("Conflict", "Disk resizing is allowed only when creating a VM or when it is deallocated.")], 409)
    busy = classify([("Conflict", "Run command extension execution is in progress. Please wait.")], 409)
    assert state.kind is ErrorKind.PERMANENT and busy.kind is ErrorKind.CONFLICT
