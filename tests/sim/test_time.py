"""The time model: scaled latencies, transitions applied in order, and without anyone asking ARM."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from remediate.azure.clients import AzureClients
from sim.faults import Faults
from sim.fleet import RESOURCE_GROUP, SUBSCRIPTION, VirtualMachine, demo_fleet
from sim.operations import Latencies, Operations, Refused
from sim.server import Emulator
from tests.sim.support import ManualClock, RecordingGuest


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll `condition` until it holds or `timeout` passes (a deadline for a hung test, not a measurement)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def vm_named(operations: Operations, name: str) -> VirtualMachine:
    return next(vm for vm in operations.fleet if vm.name == name)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def operations(clock: ManualClock) -> Operations:
    return Operations(demo_fleet(), Latencies(), Faults(), clock=clock, guest=RecordingGuest())


def test_scaling_multiplies_every_latency() -> None:
    base = Latencies()

    scaled = base.scaled(0.01)

    assert scaled.run_command == pytest.approx(0.35)
    assert scaled.restart == pytest.approx((base.restart_stop + base.restart_start) * 0.01)
    assert scaled.agent_ready == pytest.approx(0.3)
    with pytest.raises(ValueError):
        base.scaled(-1)


def test_transitions_apply_in_order_when_due(operations: Operations, clock: ManualClock) -> None:
    vm = vm_named(operations, "vm-healthy")
    operations.start_restart(vm)
    states = [vm.power_state]
    for step in (19.9, 0.1, 39.9, 0.1, 29.9, 0.1):
        clock.advance(step)
        operations.advance()
        states.append(f"{vm.power_state}/{'ready' if vm.agent_ready else 'not-ready'}")

    assert states == [
        "stopping",
        "stopping/not-ready",
        "starting/not-ready",
        "starting/not-ready",
        "running/not-ready",
        "running/not-ready",
        "running/ready",
    ]


def test_a_broken_agent_stays_broken_across_a_restart(operations: Operations, clock: ManualClock) -> None:
    vm = vm_named(operations, "vm-agent-not-ready")
    operations.start_restart(vm)
    clock.advance(Latencies().restart + Latencies().agent_ready * 2)
    operations.advance()

    assert (vm.power_state, vm.agent_ready) == ("running", False)


def test_a_vm_restarted_again_before_its_agent_returned_gets_its_agent_back(
    operations: Operations, clock: ManualClock
) -> None:
    vm = vm_named(operations, "vm-healthy")
    latencies = Latencies()
    operations.start_restart(vm)
    clock.advance(latencies.restart + 1)
    operations.advance()
    operations.start_restart(vm)  # running, agent not ready yet
    clock.advance(latencies.restart + latencies.agent_ready)
    operations.advance()

    assert (vm.power_state, vm.agent_ready) == ("running", True)


def test_operations_refuse_what_azure_refuses(operations: Operations) -> None:
    with pytest.raises(Refused) as deallocated:
        operations.start_restart(vm_named(operations, "vm-deallocated"))
    waiting = operations.start_run_command(vm_named(operations, "vm-agent-not-ready"), "x", {})

    assert deallocated.value.code == "OperationNotAllowed"
    assert waiting.waiting_for_agent and not waiting.done  # accepted: it waits for the agent, then fails


def test_simulated_seconds_add_up_the_accepted_operations(operations: Operations) -> None:
    operations.start_restart(vm_named(operations, "vm-healthy"))
    operations.start_run_command(vm_named(operations, "vm-expired-certificate"), "x", {})

    # The restart operation itself ends at once; the guest's boot is not part of it.
    assert operations.simulated_seconds == pytest.approx(Latencies().restart_operation + Latencies().run_command)
    assert operations.stats()["operations"] == {"restart.InProgress": 1, "runCommand.InProgress": 1}


def test_the_vm_comes_back_without_any_arm_request(emulator: Emulator, azure_clients: AzureClients) -> None:
    vm = emulator.fleet.get(
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
        "/providers/Microsoft.Compute/virtualMachines/vm-healthy"
    )
    assert vm is not None
    azure_clients.compute(SUBSCRIPTION).virtual_machines.begin_restart(RESOURCE_GROUP, "vm-healthy", polling=False)

    # What the RDP listeners see: the fleet itself, read under its lock, with nobody polling ARM.
    def back() -> bool:
        with emulator.fleet.lock:
            return vm.power_state == "running" and vm.agent_ready

    assert wait_until(back)
    assert [entry.operation for entry in emulator.log.entries()] == ["restart"]
