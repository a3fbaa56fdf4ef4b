"""A restart's fate from the Activity Log: only the calls carrying the step's own correlation id count, and
absence means "not accepted" only after the documented lag (the emulator's log lags too)."""

from __future__ import annotations

import time

import pytest

from remediate.azure import vm as azure_vm
from remediate.engine import evidence
from remediate.engine.journal import restart_correlation_id
from remediate.model import Outcome, TransientError, VmId
from sim.server import RESTART_ACTION
from tests.engine.conftest import Engine


def _fate(engine: Engine, vm: VmId, sent_after: float, correlation_id: str, *, wait: bool) -> evidence.RestartFate:
    give_up = time.monotonic() + (engine.settings.restart_evidence_seconds + 5 if wait else 0.0)
    return evidence.restart_fate(
        engine.clients,
        vm,
        sent_after,
        correlation_id,
        evidence_seconds=engine.settings.restart_evidence_seconds,
        give_up=give_up,
        poll_seconds=0.2,
    )


def test_a_restart_whose_answer_was_lost_is_unknown_while_the_log_lags_then_accepted(engine: Engine) -> None:
    vm = VmId.parse(engine.vm("healthy").resource_id)
    correlation_id = restart_correlation_id("request-1", "reboot")
    engine.emulator.faults.add("restart", "lost-answer", count=1, vm=str(vm))
    sent = time.time()
    with pytest.raises(TransientError):
        azure_vm.begin_restart(engine.clients, vm, correlation_id)
    # Azure took it, the log does not show it yet: that is not "not accepted" (a resend would reboot twice).
    assert _fate(engine, vm, sent, correlation_id, wait=False).accepted is None
    fate = _fate(engine, vm, sent, correlation_id, wait=True)
    assert fate.accepted is True and correlation_id in fate.detail
    events = [e for e in engine.emulator.activity.events() if e["correlationId"] == correlation_id]
    assert events and all(e["submissionTimestamp"] > e["eventTimestamp"] for e in events)


def test_another_callers_restart_is_not_taken_for_ours(engine: Engine) -> None:
    vm = VmId.parse(engine.vm("healthy").resource_id)
    sent = time.time()
    # Someone else restarts the VM (no correlation id of ours); our step's POST never left.
    poller = engine.clients.compute(vm.subscription).virtual_machines.begin_restart(vm.resource_group, vm.name)
    poller.result(timeout=30)
    fate = _fate(engine, vm, sent, restart_correlation_id("request-1", "reboot"), wait=True)
    assert fate.accepted is False, fate.detail


def test_a_second_rounds_refused_restart_is_not_counted_as_the_first_rounds(engine: Engine) -> None:
    def arm(step: str, detail: str) -> None:
        if step == "reboot-2" and detail == "started":
            engine.emulator.faults.add("restart", "503", count=50)

    settings = engine.with_settings(retry_total=0, retry_backoff_seconds=0.0)
    request = engine.request("keystore-corrupt", force=True, force_keystore=True)
    result = engine.workflow(request, progress=arm, settings=settings).run()
    restarts = engine.emulator.activity.events_of(RESTART_ACTION)
    accepted = [e for e in restarts if e["status"]["value"] == "Accepted"]
    reboots = {s.name: s.status for s in result.steps if s.name.startswith("reboot")}
    assert len(accepted) == 1, accepted
    assert reboots.get("reboot") == "ok" and reboots.get("reboot-2") not in (None, "ok"), reboots
    assert result.outcome is Outcome.FAILED and result.rebooted


@pytest.mark.parametrize("fault", ["lro-canceled", "lro-failed"])
def test_a_restart_operation_that_ends_canceled_or_failed_is_never_sent_again(engine: Engine, fault: str) -> None:
    def arm(step: str, detail: str) -> None:
        if step == "reboot" and detail == "started":
            engine.emulator.faults.add("restart", fault, count=1)

    request = engine.request("expired-certificate")
    result = engine.workflow(request, progress=arm).run()
    restarts = [p for p in engine.posts_to("expired-certificate") if p == "restart"]
    assert restarts == ["restart"], restarts  # a failed restart may still have restarted the VM: not resent
    wait = next(step for step in result.steps if step.name == "wait")
    assert wait.status == "ok" and "did not succeed" in wait.detail, wait
    assert result.outcome is Outcome.REMEDIATED and result.rebooted, result.reason
    assert engine.ledger.vm_state(request.vm).last_finished is not None
    again = engine.workflow(request).run()  # a redelivery changes nothing
    assert again.outcome is Outcome.REMEDIATED
    assert [p for p in engine.posts_to("expired-certificate") if p == "restart"] == ["restart"]


def test_no_restart_is_sent_by_an_execution_whose_lease_ran_out_while_recording_the_step(engine: Engine) -> None:
    from remediate.engine.journal import Journal
    from remediate.ledger import ExecutionConflict
    from remediate.model import StepResult

    request = engine.request("expired-certificate")
    workflow = engine.workflow(request)
    start = Journal.start

    def slow_start(self: Journal, name: str, summary: dict[str, object] | None = None) -> StepResult:
        step = start(self, name, summary)
        if name == "reboot":  # the write's retries outlasted the lease and another delivery took over
            lease = workflow._lease
            assert lease is not None
            engine.ledger.drop_lease(request.request_id, lease.holder)
            assert engine.ledger.take_lease(request.request_id, "another-delivery", 600)[0]
        return step

    Journal.start = slow_start  # type: ignore[method-assign]
    try:
        with pytest.raises(ExecutionConflict):
            workflow.run()
    finally:
        Journal.start = start  # type: ignore[method-assign]
    assert "restart" not in engine.posts_to("expired-certificate")


def test_a_repair_that_ran_more_than_once_counts_as_a_possible_change() -> None:
    from remediate.engine.journal import may_have_changed
    from remediate.model import StepResult

    unresolved = {"changed": False, "reboot_required": False, "errors": [], "refused": "facts changed"}
    once = StepResult("renew-certificate", "ok", 1.0, 2.0, "refused", unresolved)
    twice = StepResult("renew-certificate", "ok", 1.0, 2.0, "refused", {**unresolved, "resumed": True})
    assert not may_have_changed([once])
    assert may_have_changed([twice])  # an earlier run may have changed the VM unseen: the cooldown starts


def test_an_empty_log_that_does_not_even_show_our_run_commands_proves_nothing(engine: Engine) -> None:
    """A caller without the read grant can get 200 and no events: with the VM's own Run Commands missing from
    the answer, the absence of our restart is unknown, never "not accepted" (that would send it twice)."""
    request = engine.request("expired-certificate")
    engine.workflow(request).run()  # diagnosed, renewed, restarted: the log holds our Run Commands and restart
    vm = request.vm
    sent = time.time() - engine.settings.restart_evidence_seconds - 1  # long enough ago for an absence to count
    missing = restart_correlation_id("request-never-sent", "reboot")
    assert _fate(engine, vm, sent, missing, wait=False).accepted is False  # a log that sees the VM: believed
    engine.emulator.faults.add("activityLog", "empty-answer", count=2)
    fate = _fate(engine, vm, sent, missing, wait=False)
    assert fate.accepted is None and "not even this product's Run Commands" in fate.detail


def test_a_restart_the_log_shows_only_as_started_and_timed_out_is_unknown_never_sent_again(engine: Engine) -> None:
    """ARM forwarded it and timed out (504); Compute restarted the VM anyway. `Started` and a 5xx say nothing
    about Compute, so the absence of `Accepted` is not "not accepted" even after the log's lag."""
    vm = VmId.parse(engine.vm("healthy").resource_id)
    correlation_id = restart_correlation_id("request-1", "reboot")
    engine.emulator.faults.add("restart", "gateway-timeout", count=1, vm=str(vm))
    sent = time.time()
    with pytest.raises(TransientError):
        azure_vm.begin_restart(engine.clients, vm, correlation_id)
    fate = _fate(engine, vm, sent, correlation_id, wait=True)
    assert fate.accepted is None and "only as" in fate.detail and "accepted" not in fate.detail, fate.detail
    events = [e for e in engine.emulator.activity.events_of(RESTART_ACTION) if e["correlationId"] == correlation_id]
    assert [e["subStatus"]["localizedValue"] for e in events][-1] == "GatewayTimeout (HTTP Status Code: 504)"
