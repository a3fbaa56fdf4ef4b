"""Exactly-once effects, one mechanism at a time: the execution lease, conditional journal rows, the outcome
written once, the finish completed after a crash, a repair and a restart resolved from evidence."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from remediate.engine.closing import close_abandoned
from remediate.engine.journal import Journal
from remediate.engine.workflow import WorkflowResult
from remediate.ledger import ExecutionConflict, Ledger
from remediate.model import Outcome, RemediationRequest, StepResult, TransientError
from sim.server import RESTART_ACTION
from tests.engine.conftest import Engine

RESTART = "restart"


class WorkerDied(BaseException):
    """Stands for a SIGKILL: nothing in the workflow catches it."""


def accepted_restarts(engine: Engine, scenario: str) -> int:
    vm = engine.vm(scenario).resource_id.lower()
    return sum(
        1
        for event in engine.emulator.activity.events_of(RESTART_ACTION)
        if event["resourceId"].lower() == vm and event["status"]["value"] == "Accepted"
    )


def test_a_second_execution_of_a_running_request_stops_before_touching_the_vm(engine: Engine) -> None:
    request = engine.request("expired-certificate")
    engine.ledger.record_accepted(request)
    assert engine.ledger.take_lease(request.request_id, "another-delivery", 60)[0]
    with pytest.raises(ExecutionConflict):
        engine.workflow(request, retry_later=True).run()
    assert engine.calls_to("expired-certificate") == []
    record = engine.ledger.get(request.request_id)
    assert record is not None and record.outcome is None  # nothing recorded by the duplicate


def test_two_deliveries_at_once_restart_the_vm_once_and_record_one_verdict(engine: Engine) -> None:
    request = engine.request("expired-certificate")
    results: list[WorkflowResult | BaseException] = []
    barrier = threading.Barrier(2)

    def deliver() -> None:
        barrier.wait()
        try:
            results.append(engine.workflow(request, retry_later=True).run())
        except ExecutionConflict as exc:
            results.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    verdicts = [r for r in results if isinstance(r, WorkflowResult)]
    assert len(verdicts) >= 1 and all(v.outcome is Outcome.REMEDIATED for v in verdicts)
    assert accepted_restarts(engine, "expired-certificate") == 1
    record = engine.ledger.get(request.request_id)
    assert record is not None and record.outcome == "remediated" and record.rebooted


def test_a_journal_row_cannot_be_overwritten_by_a_concurrent_writer(ledger: Ledger) -> None:
    first = Journal(ledger, "req-1", [])
    stale = Journal(ledger, "req-1", [])  # read the same (empty) journal before the first one wrote
    step = first.start("diagnose")
    with pytest.raises(ExecutionConflict):
        stale.start("probe")  # would be row 0 too
    first.finish(step, "ok", "clean")
    rows = ledger.audit.query_entities("PartitionKey eq 'req-1'")
    assert [(r["Name"], r["Status"]) for r in rows] == [("diagnose", "ok")]


def test_the_outcome_is_written_once(engine: Engine) -> None:
    request = engine.request("healthy")
    engine.ledger.record_accepted(request)
    assert engine.ledger.record_outcome(request.request_id, Outcome.REMEDIATED, "first", rebooted=True)
    assert not engine.ledger.record_outcome(request.request_id, Outcome.FAILED, "late duplicate")
    record = engine.ledger.get(request.request_id)
    assert record is not None and record.outcome == "remediated" and record.rebooted


def test_a_repair_whose_end_was_not_recorded_still_leads_to_its_reboot_and_cooldown(engine: Engine) -> None:
    # The ledger fails as the repair finishes: the certificate is renewed, the journal does not know it.
    request = engine.request("expired-certificate")
    update = Ledger.update_step
    failed: list[str] = []

    def flaky(self: Ledger, request_id: str, index: int, step: StepResult, etag: str) -> str:
        if step.name == "renew-certificate" and step.status != "started" and not failed:
            failed.append(step.name)
            raise TransientError("ledger busy (503) while trying to record a workflow step")
        return update(self, request_id, index, step, etag)

    Ledger.update_step = flaky  # type: ignore[method-assign]
    try:
        with pytest.raises(TransientError):
            engine.workflow(request, retry_later=True).run()
    finally:
        Ledger.update_step = update  # type: ignore[method-assign]
    assert failed and accepted_restarts(engine, "expired-certificate") == 0
    result = engine.workflow(request).run()  # the redelivery: the script now says "no change needed"
    assert result.outcome is Outcome.REMEDIATED and result.rebooted
    assert accepted_restarts(engine, "expired-certificate") == 1
    assert engine.ledger.vm_state(request.vm).last_finished is not None  # cooldown started


def test_a_repair_whose_answer_was_lost_within_one_delivery_still_leads_to_its_reboot_and_cooldown(
    engine: Engine,
) -> None:
    # Azure runs the renewal and the caller sees a 500: the retry finds the listener already changed and refuses.
    vm = engine.vm("expired-certificate")

    def arm(step: str, detail: str) -> None:
        if step == "renew-certificate" and detail == "started":
            engine.emulator.faults.add("runCommand", "lost-answer", count=1, vm=vm.resource_id)

    request = engine.request("expired-certificate")
    result = engine.workflow(request, progress=arm).run()
    renew = next(step for step in result.steps if step.name == "renew-certificate")
    assert (renew.summary or {}).get("resumed") and (renew.summary or {}).get("changed"), renew
    # One POST for the lost answer, one rerun, one read-only diagnose to resolve it: never re-sent by the transport.
    # The Run Commands Azure ran (a lost answer is a 500 to a command that did run); a 409 "in progress" that
    # Compute answers for a while after a command ends ran nothing and is not counted.
    runs = [
        e.status for e in engine.calls_to("expired-certificate") if e.method == "POST" and e.operation == "runCommand"
    ]
    runs = [status for status in runs if status != 409]
    assert len(runs) == 1 + 2 + 1 + 1, runs  # diagnose, renew x2 + diagnose, verify-guest
    assert result.outcome is Outcome.REMEDIATED and result.rebooted
    assert accepted_restarts(engine, "expired-certificate") == 1
    assert engine.ledger.vm_state(request.vm).last_finished is not None


def test_a_crash_between_outcome_and_finish_is_completed_by_the_next_delivery(engine: Engine) -> None:
    request = engine.request("expired-certificate")
    finish = Ledger.finish_vm

    def die(self: Ledger, *args: Any, **kwargs: Any) -> None:
        raise WorkerDied

    Ledger.finish_vm = die  # type: ignore[method-assign]
    try:
        with pytest.raises(WorkerDied):
            engine.workflow(request, retry_later=True).run()
    finally:
        Ledger.finish_vm = finish  # type: ignore[method-assign]
    state = engine.ledger.vm_state(request.vm)
    assert state.owner == request.request_id and state.last_finished is None  # the crash left both
    again = engine.workflow(request).run()  # the redelivery finds the outcome
    assert again.outcome is Outcome.REMEDIATED
    state = engine.ledger.vm_state(request.vm)
    assert state.owner is None and state.last_finished is not None
    assert accepted_restarts(engine, "expired-certificate") == 1


def test_a_restart_started_but_never_sent_is_sent_once_on_redelivery(engine: Engine) -> None:
    from remediate.azure import vm as azure_vm

    request = engine.request("expired-certificate")
    begin = azure_vm.begin_restart

    def die(*args: Any, **kwargs: Any) -> Any:
        raise WorkerDied  # killed after "reboot started" was recorded, before the POST left

    azure_vm.begin_restart = die
    try:
        with pytest.raises(WorkerDied):
            engine.workflow(request, retry_later=True).run()
    finally:
        azure_vm.begin_restart = begin
    assert accepted_restarts(engine, "expired-certificate") == 0
    result = engine.workflow(request).run()
    assert accepted_restarts(engine, "expired-certificate") == 1
    assert result.rebooted and result.outcome is Outcome.REMEDIATED
    reboot = next(step for step in result.steps if step.name == "reboot")
    assert reboot.status == "ok"


@pytest.mark.parametrize(("journal", "cooldown"), [(["diagnose"], False), (["diagnose", "renew-certificate"], True)])
def test_a_request_closed_from_its_journal_cools_down_only_after_a_change(
    engine: Engine, journal: list[str], cooldown: bool
) -> None:
    request: RemediationRequest = engine.request("healthy")
    engine.ledger.record_accepted(request)
    steps = Journal(engine.ledger, request.request_id, [])
    for name in ("preflight", "locate", "probe"):
        steps.finish(steps.start(name), "ok")
    for name in journal:
        steps.start(name)  # started, never finished: the worker died in it
    record = engine.ledger.get(request.request_id)
    assert record is not None
    assert close_abandoned(engine.ledger, record, "gave up after 5 deliveries")
    closed = engine.ledger.get(request.request_id)
    assert closed is not None and closed.outcome == "failed" and not closed.rebooted
    assert f"stopped at step {journal[-1]} (started)" in closed.outcome_reason
    assert (engine.ledger.vm_state(request.vm).last_finished is not None) is cooldown
