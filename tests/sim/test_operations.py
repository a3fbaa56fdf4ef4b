"""Run Command and restart as long-running operations, through the real SDK, over simulated time.

Tests that watch state change use a clock they move themselves, so each transition is exact and nothing
depends on how fast this machine is.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.core.rest import HttpRequest
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import (
    RunCommandInput,
    RunCommandInputParameter,
    RunCommandResult,
    VirtualMachineInstanceView,
)

from remediate.azure.clients import AzureClients
from remediate.settings import Settings
from sim.fleet import RESOURCE_GROUP, SUBSCRIPTION
from sim.realism import Realism
from sim.server import Emulator
from tests.fixtures.emulator import EmulatorFactory, emulator_env
from tests.sim.support import SUMMARY, ManualClock, RecordingGuest, agent_status, error_code, status_codes, streams

SCRIPT = ["$ScriptName = 'fake'", "Write-Output 'hello'"]
HEALTHY_ID = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
    "/providers/Microsoft.Compute/virtualMachines/vm-healthy"
)


def command(script: list[str] | None = None, command_id: str = "RunPowerShellScript", **params: str) -> RunCommandInput:
    return RunCommandInput(
        command_id=command_id,
        script=script or SCRIPT,
        parameters=[RunCommandInputParameter(name=name, value=value) for name, value in params.items()],
    )


@pytest.fixture
def guest() -> RecordingGuest:
    return RecordingGuest()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def live(emulator_factory: EmulatorFactory, guest: RecordingGuest) -> Emulator:
    """The demo fleet at 1/100 of real time, with a recording guest."""
    return emulator_factory(guest=guest, listeners=False)


@pytest.fixture
def frozen(emulator_factory: EmulatorFactory, guest: RecordingGuest, clock: ManualClock) -> Emulator:
    """The demo fleet at 1/100 of real time whose clock moves only when the test advances it."""
    return emulator_factory(guest=guest, clock=clock, listeners=False)


def compute_for(emulator: Emulator) -> Iterator[ComputeManagementClient]:
    clients = AzureClients(Settings.from_env(emulator_env(emulator)))
    yield clients.compute(SUBSCRIPTION)
    clients.close()


@pytest.fixture
def compute(live: Emulator) -> Iterator[ComputeManagementClient]:
    yield from compute_for(live)


@pytest.fixture
def frozen_compute(frozen: Emulator) -> Iterator[ComputeManagementClient]:
    yield from compute_for(frozen)


def run(compute: ComputeManagementClient, vm: str = "vm-healthy") -> RunCommandResult:
    return compute.virtual_machines.begin_run_command(RESOURCE_GROUP, vm, command()).result()


def view(compute: ComputeManagementClient, name: str = "vm-healthy") -> VirtualMachineInstanceView:
    return compute.virtual_machines.instance_view(RESOURCE_GROUP, name)


def agent_time(current: VirtualMachineInstanceView) -> dt.datetime:
    """When the agent last reported, as the instance view says."""
    agent: Any = current.vm_agent
    return cast(dt.datetime, agent.statuses[0].time)


def power_and_agent(compute: ComputeManagementClient, name: str = "vm-healthy") -> tuple[str, str | None]:
    current = view(compute, name)
    return status_codes(current)[1], agent_status(current)


# --- Run Command ---------------------------------------------------------------------------------------


def test_run_command_returns_stdout_and_stderr_of_the_guest(
    compute: ComputeManagementClient, guest: RecordingGuest
) -> None:
    guest.stderr = "a warning\n"

    result = compute.virtual_machines.begin_run_command(
        RESOURCE_GROUP, "vm-healthy", command(DetectOnly="true")
    ).result()

    stdout, stderr = streams(result)
    assert stdout.splitlines()[-1] == SUMMARY
    assert stderr == "a warning\r\n"  # Windows line ends
    assert stdout.endswith(SUMMARY + "\r\n")
    assert guest.scripts == [("vm-healthy", "\n".join(SCRIPT), {"DetectOnly": "true"})]


def test_run_command_keeps_only_the_last_4096_bytes_of_each_stream(
    compute: ComputeManagementClient, guest: RecordingGuest
) -> None:
    guest.stdout_prefix = "é" * 6000  # two bytes each: the cut may fall inside a character
    guest.stderr = "x" * 5000 + "END"

    stdout, stderr = streams(run(compute))

    assert 4094 <= len(stdout.encode()) <= 4096
    assert stdout.endswith(SUMMARY + "\r\n")
    assert len(stderr.encode()) == 4096
    assert stderr.endswith("END")


def test_oversized_output_fault_pushes_the_start_of_the_output_out(
    live: Emulator, compute: ComputeManagementClient
) -> None:
    live.faults.add("runCommand", "oversized-output")

    stdout, _ = streams(run(compute))

    assert len(stdout.encode()) == 4096
    assert "running fake script" in stdout
    assert stdout.splitlines()[-1] == SUMMARY
    assert not stdout.startswith("progress: checking item 0000")


def test_garbage_output_fault_prints_no_json(
    live: Emulator, compute: ComputeManagementClient, guest: RecordingGuest
) -> None:
    live.faults.add("runCommand", "garbage-output")

    stdout, _ = streams(run(compute))

    assert stdout
    for line in stdout.splitlines():
        with pytest.raises(ValueError):
            json.loads(line)
    assert guest.scripts == []  # the script never ran


def test_a_second_run_command_while_one_runs_is_a_409_conflict(
    frozen: Emulator, frozen_compute: ComputeManagementClient, clock: ManualClock
) -> None:
    first = frozen_compute.virtual_machines.begin_run_command(RESOURCE_GROUP, "vm-healthy", command())

    with pytest.raises(ResourceExistsError) as caught:
        frozen_compute.virtual_machines.begin_run_command(RESOURCE_GROUP, "vm-healthy", command())
    clock.advance(frozen.latencies.run_command)

    code, message = error_code(caught.value)
    assert caught.value.status_code == 409
    assert code == "Conflict"
    assert "execution is in progress" in message
    assert streams(first.result())[0].splitlines()[-1] == SUMMARY
    # Right after the first succeeded, Run Command still says it is in progress for a moment.
    with pytest.raises(ResourceExistsError) as still:
        frozen_compute.virtual_machines.begin_run_command(RESOURCE_GROUP, "vm-healthy", command())
    assert "execution is in progress" in error_code(still.value)[1]
    clock.advance(frozen.latencies.busy_after_success)
    frozen_compute.virtual_machines.begin_run_command(RESOURCE_GROUP, "vm-healthy", command(), polling=False)
    posts = [entry.status for entry in frozen.log.entries() if entry.operation == "runCommand"]
    assert posts == [202, 409, 409, 202]


def test_run_command_on_a_deallocated_vm_is_a_409_saying_why(compute: ComputeManagementClient) -> None:
    with pytest.raises(ResourceExistsError) as caught:
        compute.virtual_machines.begin_run_command(RESOURCE_GROUP, "vm-deallocated", command())

    assert error_code(caught.value)[0] == "OperationNotAllowed"
    assert "since the VM is deallocated" in error_code(caught.value)[1]


def test_run_command_sent_while_the_agent_is_down_waits_then_fails(
    frozen: Emulator, frozen_compute: ComputeManagementClient, clock: ManualClock, guest: RecordingGuest
) -> None:
    poller = frozen_compute.virtual_machines.begin_run_command(RESOURCE_GROUP, "vm-agent-not-ready", command())
    clock.advance(frozen.latencies.agent_wait_limit / 2)
    assert not poller.done()  # accepted, waiting for the agent (no immediate refusal)
    clock.advance(frozen.latencies.agent_wait_limit)

    with pytest.raises(HttpResponseError) as caught:
        poller.result()
    assert "VMAgentStatusCommunicationError" in str(caught.value)
    assert guest.scripts == []


def test_run_command_sent_during_a_reboot_waits_for_the_agent_and_then_runs(
    frozen: Emulator, frozen_compute: ComputeManagementClient, clock: ManualClock, guest: RecordingGuest
) -> None:
    latencies = frozen.latencies
    restart = frozen_compute.virtual_machines.begin_restart(RESOURCE_GROUP, "vm-healthy")
    clock.advance(latencies.restart_operation)
    restart.result()
    poller = frozen_compute.virtual_machines.begin_run_command(RESOURCE_GROUP, "vm-healthy", command())
    clock.advance(latencies.restart + latencies.agent_ready)
    assert not poller.done() and guest.scripts == []
    clock.advance(latencies.run_command)

    assert streams(poller.result())[0].splitlines()[-1] == SUMMARY
    assert guest.boots == [("vm-healthy", "running")] and len(guest.scripts) == 1


def test_agent_not_ready_fault_makes_one_command_wait_and_fail(
    live: Emulator, compute: ComputeManagementClient
) -> None:
    live.faults.add("runCommand", "agent-not-ready", vm=HEALTHY_ID.upper())  # ids compare case-insensitively

    with pytest.raises(HttpResponseError) as caught:
        compute.virtual_machines.begin_run_command(RESOURCE_GROUP, "vm-healthy", command()).result()
    result = compute.virtual_machines.begin_run_command(RESOURCE_GROUP, "vm-healthy", command()).result()

    assert "VMAgentStatusCommunicationError" in str(caught.value)
    assert streams(result)[0].splitlines()[-1] == SUMMARY


def test_the_command_id_must_match_the_os(compute: ComputeManagementClient, guest: RecordingGuest) -> None:
    with pytest.raises(HttpResponseError) as windows:
        compute.virtual_machines.begin_run_command(RESOURCE_GROUP, "vm-healthy", command(command_id="RunShellScript"))
    linux = compute.virtual_machines.begin_run_command(
        RESOURCE_GROUP, "vm-linux", command(["echo hi"], command_id="RunShellScript")
    ).result()

    assert windows.value.status_code == 400
    assert streams(linux)[0].splitlines()[-1] == SUMMARY
    assert [name for name, _, _ in guest.scripts] == ["vm-linux"]


def test_a_failed_run_command_raises_with_the_arm_error(
    live: Emulator, compute: ComputeManagementClient, guest: RecordingGuest
) -> None:
    live.faults.add("runCommand", "lro-failed")

    poller = compute.virtual_machines.begin_run_command(RESOURCE_GROUP, "vm-healthy", command())
    with pytest.raises(HttpResponseError) as caught:
        poller.result()

    assert "InternalExecutionError" in str(caught.value)
    assert poller.status() == "Failed"
    assert guest.scripts == []


def test_a_restart_interrupts_a_running_command(
    frozen: Emulator, frozen_compute: ComputeManagementClient, clock: ManualClock, guest: RecordingGuest
) -> None:
    running = frozen_compute.virtual_machines.begin_run_command(RESOURCE_GROUP, "vm-healthy", command())
    restart = frozen_compute.virtual_machines.begin_restart(RESOURCE_GROUP, "vm-healthy")
    clock.advance(frozen.latencies.restart + frozen.latencies.agent_ready)

    with pytest.raises(HttpResponseError) as caught:
        running.result()
    restart.result()
    assert "OperationPreempted" in str(caught.value)
    assert guest.scripts == []


# --- Restart -------------------------------------------------------------------------------------------


@pytest.fixture
def kind(emulator_factory: EmulatorFactory, guest: RecordingGuest, clock: ManualClock) -> Emulator:
    """A manual-clock emulator whose restart operation lasts until the guest runs again (not Azure's way)."""
    return emulator_factory(guest=guest, clock=clock, listeners=False, realism=Realism(restart_early=False))


@pytest.fixture
def kind_compute(kind: Emulator) -> Iterator[ComputeManagementClient]:
    yield from compute_for(kind)


def test_the_restart_operation_ends_at_once_while_the_old_ready_lingers(
    frozen: Emulator, frozen_compute: ComputeManagementClient, clock: ManualClock, guest: RecordingGuest
) -> None:
    latencies = frozen.latencies
    before = agent_time(view(frozen_compute))
    poller = frozen_compute.virtual_machines.begin_restart(RESOURCE_GROUP, "vm-healthy")
    clock.advance(latencies.restart_operation)
    poller.result()
    booted_when_done = list(guest.boots)
    lingering = view(frozen_compute)
    clock.advance(latencies.agent_linger)
    gone = power_and_agent(frozen_compute)
    clock.advance(latencies.restart + latencies.agent_ready)
    back = view(frozen_compute)

    # Done at once, VM reported running, and the agent's Ready from before the reboot, with its old time.
    assert poller.status() == "Succeeded" and booted_when_done == []
    assert (status_codes(lingering)[1], agent_status(lingering)) == ("PowerState/running", "Ready")
    assert agent_time(lingering) == before
    assert gone == ("PowerState/running", "Not Ready")
    assert agent_status(back) == "Ready" and agent_time(back) > before
    assert guest.boots == [("vm-healthy", "running")]


def test_restart_moves_the_vm_through_stopping_and_starting_to_running(
    kind: Emulator, kind_compute: ComputeManagementClient, clock: ManualClock, guest: RecordingGuest
) -> None:
    frozen, frozen_compute = kind, kind_compute
    latencies = frozen.latencies
    poller = frozen_compute.virtual_machines.begin_restart(RESOURCE_GROUP, "vm-healthy")
    seen = [power_and_agent(frozen_compute)]
    provisioning = status_codes(view(frozen_compute))[0]
    clock.advance(latencies.restart_stop)
    seen.append(power_and_agent(frozen_compute))
    still_running = poller.done()
    clock.advance(latencies.restart_start)
    seen.append(power_and_agent(frozen_compute))
    poller.result()
    clock.advance(latencies.agent_ready)
    seen.append(power_and_agent(frozen_compute))

    assert seen == [
        ("PowerState/stopping", "Not Ready"),
        ("PowerState/starting", "Not Ready"),
        ("PowerState/running", "Not Ready"),  # the LRO succeeds before the agent is back
        ("PowerState/running", "Ready"),
    ]
    assert provisioning == "ProvisioningState/updating"
    assert still_running is False
    assert guest.boots == [("vm-healthy", "running")]


def test_restart_of_a_vm_that_never_returns_succeeds_but_the_vm_stays_starting(
    kind: Emulator, kind_compute: ComputeManagementClient, clock: ManualClock, guest: RecordingGuest
) -> None:
    frozen, frozen_compute = kind, kind_compute
    poller = frozen_compute.virtual_machines.begin_restart(RESOURCE_GROUP, "vm-never-returns")
    clock.advance(frozen.latencies.restart + frozen.latencies.agent_ready * 10)

    poller.result()  # Azure did restart it: the product must notice on its own that it never came back
    assert power_and_agent(frozen_compute, "vm-never-returns") == ("PowerState/starting", "Not Ready")
    assert guest.boots == []


def test_never_returns_fault_strands_a_healthy_vm_once(
    kind: Emulator, kind_compute: ComputeManagementClient, clock: ManualClock
) -> None:
    frozen, frozen_compute = kind, kind_compute
    frozen.faults.add("restart", "never-returns")
    frozen_compute.virtual_machines.begin_restart(RESOURCE_GROUP, "vm-healthy", polling=False)
    frozen_compute.virtual_machines.begin_restart(RESOURCE_GROUP, "vm-expired-certificate", polling=False)
    clock.advance(frozen.latencies.restart + frozen.latencies.agent_ready)

    assert power_and_agent(frozen_compute, "vm-healthy") == ("PowerState/starting", "Not Ready")
    assert power_and_agent(frozen_compute, "vm-expired-certificate") == ("PowerState/running", "Ready")


def test_restart_of_a_deallocated_vm_is_a_409(compute: ComputeManagementClient) -> None:
    with pytest.raises(ResourceExistsError) as caught:
        compute.virtual_machines.begin_restart(RESOURCE_GROUP, "vm-deallocated")

    assert error_code(caught.value)[0] == "OperationNotAllowed"


def test_a_second_restart_while_one_runs_is_a_409(frozen: Emulator, frozen_compute: ComputeManagementClient) -> None:
    frozen_compute.virtual_machines.begin_restart(RESOURCE_GROUP, "vm-healthy", polling=False)

    with pytest.raises(ResourceExistsError):
        frozen_compute.virtual_machines.begin_restart(RESOURCE_GROUP, "vm-healthy")


def test_a_failed_restart_raises_and_leaves_the_vm_running(
    live: Emulator, compute: ComputeManagementClient, guest: RecordingGuest
) -> None:
    live.faults.add("restart", "lro-failed")

    with pytest.raises(HttpResponseError) as caught:
        compute.virtual_machines.begin_restart(RESOURCE_GROUP, "vm-healthy").result()

    assert "InternalExecutionError" in str(caught.value)
    assert power_and_agent(compute) == ("PowerState/running", "Ready")
    assert guest.boots == []


def test_lro_answers_carry_both_polling_headers_and_whole_second_retry_after(
    emulator_factory: EmulatorFactory, guest: RecordingGuest, clock: ManualClock
) -> None:
    slow = emulator_factory(
        guest=guest,
        clock=clock,
        time_scale=1.0,
        listeners=False,
        realism=Realism(retry_after=True, restart_early=False),
    )
    clients = AzureClients(Settings.from_env(emulator_env(slow)))
    url = f"{slow.arm_url}{HEALTHY_ID}/restart?api-version=2026-04-01"
    try:
        initial = clients.compute(SUBSCRIPTION).send_request(HttpRequest("POST", url))
    finally:
        clients.close()

    assert initial.status_code == 202
    assert "/operations/" in initial.headers["Azure-AsyncOperation"]
    assert "monitor=true" in initial.headers["Location"]
    assert initial.headers["Retry-After"] == "30"  # capped polling hint for a 60 s restart


def test_real_lro_answers_carry_no_retry_after_and_signed_urls_followed_verbatim(
    live: Emulator, compute: ComputeManagementClient
) -> None:
    initial = compute.send_request(HttpRequest("POST", f"{live.arm_url}{HEALTHY_ID}/restart?api-version=2026-04-01"))
    assert initial.status_code == 202 and "Retry-After" not in initial.headers
    url = initial.headers["Azure-AsyncOperation"]
    assert "p=" in url and "%2B" in url and "%2F" in url and "%3D" in url  # signed values, percent-encoded
    assert compute.send_request(HttpRequest("GET", url)).status_code == 200
    # A client that rebuilds the URL without the signed parameters does not reach the operation.
    stripped = url.split("?")[0] + "?api-version=2026-04-01"
    assert compute.send_request(HttpRequest("GET", stripped)).status_code == 404


@pytest.mark.parametrize("style", ["async", "location", "sync"])
def test_every_answer_style_gives_the_sdk_the_result(
    emulator_factory: EmulatorFactory, guest: RecordingGuest, style: str
) -> None:
    styled = emulator_factory(guest=guest, listeners=False, realism=Realism(answer_style=style))
    for compute in compute_for(styled):
        initial = compute.send_request(
            HttpRequest(
                "POST", f"{styled.arm_url}{HEALTHY_ID}/runCommand?api-version=2026-04-01", json=command().as_dict()
            )
        )
        expected = {"async": (202, True), "location": (202, False), "sync": (200, False)}[style]
        assert (initial.status_code, "Azure-AsyncOperation" in initial.headers) == expected
        styled.operations.advance()
        import time

        time.sleep(styled.latencies.run_command + styled.latencies.busy_after_success + 0.05)
        result = compute.virtual_machines.begin_run_command(RESOURCE_GROUP, "vm-healthy", command()).result()
        assert streams(result)[0].splitlines()[-1] == SUMMARY
