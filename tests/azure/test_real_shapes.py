"""The product against the shapes and timings real Azure shows (sim.realism defaults): several NICs with the
primary not first, a restart operation that ends before the guest is back while the agent's old Ready lingers,
an agent that does not answer right after a reboot, and the three answer styles of long-running operations."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from remediate.azure import vm as azure_vm
from remediate.azure.clients import AzureClients
from remediate.ledger import Ledger
from remediate.model import Outcome, PermanentError, VmId
from remediate.settings import Settings
from sim.operations import Latencies
from sim.realism import ANSWER_STYLES, Realism
from sim.server import Emulator
from tests.engine.conftest import Engine
from tests.fixtures.emulator import EmulatorFactory

pytestmark = pytest.mark.emulator

RC, RESTART = "runCommand", "restart"
# Shorter waits for an absent agent than Azure's, so a test that makes one command wait for it stays quick.
QUICK_AGENT = Latencies(agent_wait_limit=40.0)


@pytest.fixture(params=ANSWER_STYLES)
def emulator(request: pytest.FixtureRequest, emulator_factory: EmulatorFactory) -> Emulator:
    """The demo fleet in each of Azure's answer styles (and every other realistic default)."""
    return emulator_factory(realism=Realism(answer_style=request.param), latencies=QUICK_AGENT)


@pytest.fixture
def engine(
    emulator: Emulator, product_settings: Settings, product_ledger: Ledger, product_clients: AzureClients
) -> Engine:
    return Engine(emulator, product_settings, product_ledger, product_clients)


# --- Primary NIC, primary IP configuration ---------------------------------------------------------------


def test_the_probe_address_is_the_primary_configuration_of_the_primary_nic(
    emulator: Emulator, azure_clients: AzureClients
) -> None:
    source = emulator.fleet.by_scenario("expired-certificate")[0]
    view = azure_vm.get_vm(azure_clients, VmId.parse(source.resource_id))
    assert len(view.nic_ids) == 2 and view.nic_ids[0].endswith(source.nic_name)  # the primary, listed second
    assert azure_vm.private_ip(azure_clients, view) == source.private_ip


# --- The workflow in every answer style --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "posts"),
    [
        ("expired-certificate", [RC, RC, RESTART, RC]),
        ("firewall-closed", [RC, RC, RESTART, RC]),
        ("key-corrupt", [RC, RC, RESTART, RC]),
    ],
)
def test_broken_vms_are_remediated_and_verified_in_every_answer_style(
    engine: Engine, scenario: str, posts: list[str]
) -> None:
    result = engine.run(scenario)
    assert result.outcome is Outcome.REMEDIATED, result.reason
    assert result.rebooted and result.verification == "healthy"
    assert accepted_posts(engine, scenario) == posts


def test_a_vm_that_never_returns_fails_in_every_answer_style(engine: Engine) -> None:
    result = engine.run("never-returns")
    assert result.outcome is Outcome.FAILED and result.failed_step == "wait", result.reason
    assert "did not come back" in result.reason


# --- After a reboot ------------------------------------------------------------------------------------------


def test_wait_does_not_trust_the_ready_from_before_the_restart(emulator: Emulator, azure_clients: AzureClients) -> None:
    source = emulator.fleet.by_scenario("healthy")[0]
    vm = VmId.parse(source.resource_id)
    asked = dt.datetime.now(dt.UTC)
    azure_clients.compute(vm.subscription).virtual_machines.begin_restart(vm.resource_group, vm.name).result()
    lingering = azure_vm.get_vm(azure_clients, vm)
    assert lingering.ready and not lingering.ready_since(asked)  # Azure still shows the old Ready

    view = azure_vm.wait_until_ready(azure_clients, vm, 30.0, since=asked, poll_seconds=0.02)

    with emulator.fleet.lock:
        assert (source.power_state, source.agent_ready) == ("running", True)  # the guest really is back
    assert view.agent_time is not None and view.agent_time > asked


def test_wait_gives_up_when_only_the_old_ready_is_shown(emulator: Emulator, azure_clients: AzureClients) -> None:
    source = emulator.fleet.by_scenario("never-returns")[0]
    vm = VmId.parse(source.resource_id)
    asked = dt.datetime.now(dt.UTC)
    azure_clients.compute(vm.subscription).virtual_machines.begin_restart(vm.resource_group, vm.name).result()
    with pytest.raises(PermanentError, match="did not come back"):
        azure_vm.wait_until_ready(azure_clients, vm, 0.05, since=asked, poll_seconds=0.01)


def accepted_posts(engine: Engine, scenario: str) -> list[str]:
    """The POSTs Azure accepted (not the 409s "in progress" that can follow a command that just succeeded)."""
    path = engine.vm(scenario).resource_id.lower() + "/"
    return [
        e.operation
        for e in engine.emulator.log.entries()
        if e.method == "POST" and e.status in (200, 202) and (e.path.lower() + "/").startswith(path)
    ]


def _on_step(step_name: str, action: Any) -> Any:
    def progress(step: str, detail: str) -> None:
        if step == step_name and detail == "started":
            action()

    return progress


def test_an_agent_that_does_not_answer_right_after_the_reboot_is_waited_for(engine: Engine) -> None:
    request = engine.request("expired-certificate")
    vm_id = engine.vm("expired-certificate").resource_id
    arm = _on_step("verify-guest", lambda: engine.emulator.faults.add("runCommand", "agent-not-ready", 1, vm_id))

    result = engine.workflow(request, progress=arm).run()

    assert result.outcome is Outcome.REMEDIATED, result.reason
    posts = engine.posts_to("expired-certificate")
    assert posts.count(RESTART) == 1
    assert posts[posts.index(RESTART) + 1 :].count(RC) >= 2  # the in-guest check, again after the agent failure


def test_the_verdict_carries_the_verification_even_when_the_in_guest_check_fails(engine: Engine) -> None:
    request = engine.request("expired-certificate")
    vm_id = engine.vm("expired-certificate").resource_id
    arm = _on_step("verify-guest", lambda: engine.emulator.faults.add("runCommand", "garbage-output", 1, vm_id))

    result = engine.workflow(request, progress=arm).run()

    assert result.outcome is Outcome.FAILED and result.failed_step == "verify-guest"
    assert result.verification == "healthy"
    assert result.to_json()["verification"] == "healthy"


def test_polls_follow_the_cadence_not_the_sdk_default(emulator: Emulator, azure_clients: AzureClients) -> None:
    """No Retry-After comes, yet a Run Command is polled about every `RDPR_POLL_INTERVAL_SECONDS`."""
    from remediate.azure.runcommand import run_script

    if emulator.realism.answer_style == "sync":
        pytest.skip("a synchronous answer is not polled")
    source = emulator.fleet.by_scenario("healthy")[0]
    started = time.monotonic()
    run_script(azure_clients, VmId.parse(source.resource_id), "diagnose", {}, started + 30)
    took = time.monotonic() - started
    polls = [e for e in emulator.log.entries() if e.operation == "operationStatus"]
    # Without the cadence the SDK would wait 30 s before its first poll.
    assert took < 5 * emulator.latencies.run_command + 1.0
    assert len(polls) >= 2
