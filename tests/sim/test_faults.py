"""Fault injection: each fault behaves as Azure's failure does, and the real SDK reacts as it would to Azure."""

from __future__ import annotations

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.mgmt.compute.models import RunCommandInput

from remediate.azure.clients import AzureClients
from sim.faults import Faults
from sim.fleet import RESOURCE_GROUP, SUBSCRIPTION
from sim.server import Emulator
from tests.sim.support import streams

HEALTHY = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
    "/providers/Microsoft.Compute/virtualMachines/vm-healthy"
)


def statuses(emulator: Emulator, operation: str) -> list[int]:
    return [entry.status for entry in emulator.log.entries() if entry.operation == operation]


def test_429_with_retry_after_is_retried_by_the_sdk(emulator: Emulator, azure_clients: AzureClients) -> None:
    emulator.faults.add("getVm", "429", count=2, retry_after=1)

    vm = azure_clients.compute(SUBSCRIPTION).virtual_machines.get(RESOURCE_GROUP, "vm-healthy")

    assert vm.name == "vm-healthy"
    assert statuses(emulator, "getVm") == [429, 429, 200]
    assert emulator.faults.pending() == []


def test_429_on_a_post_is_retried_because_it_carries_retry_after(
    emulator: Emulator, azure_clients: AzureClients
) -> None:
    emulator.faults.add("restart", "429")

    azure_clients.compute(SUBSCRIPTION).virtual_machines.begin_restart(RESOURCE_GROUP, "vm-healthy").result()

    assert statuses(emulator, "restart") == [429, 202]


@pytest.mark.parametrize("kind", ["500", "503"])
def test_server_errors_on_list_are_retried(emulator: Emulator, azure_clients: AzureClients, kind: str) -> None:
    emulator.faults.add("listVms", kind)

    names = [vm.name for vm in azure_clients.compute(SUBSCRIPTION).virtual_machines.list(RESOURCE_GROUP)]

    assert "vm-healthy" in names
    assert statuses(emulator, "listVms") == [int(kind), 200]


def test_a_dropped_connection_is_retried(emulator: Emulator, azure_clients: AzureClients) -> None:
    emulator.faults.add("getNic", "reset")

    nic = azure_clients.network(SUBSCRIPTION).network_interfaces.get(RESOURCE_GROUP, "vm-healthy-nic")

    assert nic.name == "vm-healthy-nic"
    assert statuses(emulator, "getNic") == [0, 200]


def test_a_dropped_connection_without_retries_left_surfaces(emulator: Emulator, azure_clients: AzureClients) -> None:
    emulator.faults.add("instanceView", "reset")
    compute = azure_clients.compute(SUBSCRIPTION)

    with pytest.raises((ServiceRequestError, ServiceResponseError)):
        compute.virtual_machines.instance_view(RESOURCE_GROUP, "vm-healthy", retry_total=0)


def test_a_fault_for_one_vm_leaves_the_others_alone(emulator: Emulator, azure_clients: AzureClients) -> None:
    emulator.faults.add("getVm", "503", count=10, vm=HEALTHY)
    compute = azure_clients.compute(SUBSCRIPTION)

    other = compute.virtual_machines.get(RESOURCE_GROUP, "vm-linux")

    assert other.name == "vm-linux"
    assert statuses(emulator, "getVm") == [200]
    assert emulator.faults.pending()[0]["remaining"] == 10


def test_status_polling_survives_a_throttled_poll(emulator: Emulator, azure_clients: AzureClients) -> None:
    emulator.faults.add("operationStatus", "429")
    compute = azure_clients.compute(SUBSCRIPTION)

    compute.virtual_machines.begin_restart(RESOURCE_GROUP, "vm-healthy").result()

    assert statuses(emulator, "operationStatus")[0] == 429
    assert statuses(emulator, "operationStatus")[-1] == 200


def test_a_server_error_without_retries_left_raises(emulator: Emulator, azure_clients: AzureClients) -> None:
    emulator.faults.add("runCommand", "500")
    command = RunCommandInput(command_id="RunPowerShellScript", script=["x"])
    compute = azure_clients.compute(SUBSCRIPTION)

    with pytest.raises(HttpResponseError) as caught:
        compute.virtual_machines.begin_run_command(RESOURCE_GROUP, "vm-healthy", command, retry_total=0)

    assert caught.value.status_code == 500
    assert not any(vm.run_command_busy for vm in emulator.fleet)


def test_faults_fire_count_times_then_disappear(emulator: Emulator, azure_clients: AzureClients) -> None:
    emulator.faults.add("runCommand", "garbage-output", count=1)
    compute = azure_clients.compute(SUBSCRIPTION)
    command = RunCommandInput(command_id="RunPowerShellScript", script=["$ScriptName = 'diagnose'"])

    first = compute.virtual_machines.begin_run_command(RESOURCE_GROUP, "vm-healthy", command).result()

    assert "CLIXML" in streams(first)[0]
    assert emulator.faults.pending() == []


@pytest.mark.parametrize(
    ("operation", "kind", "count", "retry_after"),
    [
        ("deleteVm", "500", 1, 1),  # no such operation
        ("getVm", "teapot", 1, 1),  # no such fault
        ("getVm", "lro-failed", 1, 1),  # a GET is not a long-running operation
        ("restart", "garbage-output", 1, 1),  # a restart prints nothing
        ("getVm", "429", 0, 1),  # never fires
        ("getVm", "429", 1, 0),  # Retry-After: 0 means "absent" to azure-core
    ],
)
def test_faults_azure_cannot_produce_are_refused(operation: str, kind: str, count: int, retry_after: int) -> None:
    with pytest.raises(ValueError):
        Faults().add(operation, kind, count=count, retry_after=retry_after)
