"""Safety properties that a review of the engine asked for, each pinned by a scenario on the emulator."""

from __future__ import annotations

import pytest

from remediate.intake.queue import RequestQueue, queue_client
from remediate.model import Outcome, RemediationRequest, TransientError, Trigger
from sim.server import RESTART_ACTION
from tests.engine.conftest import Engine

RESTART = "restart"


def test_a_restart_whose_answer_was_lost_is_never_sent_again(engine: Engine) -> None:
    # Azure accepts the restart, then the answer is lost (a 500): the transport must not re-send the POST, and
    # the workflow learns from the Activity Log that the restart was accepted.
    engine.emulator.faults.add("restart", "lost-answer", count=1)
    result = engine.run("expired-certificate")
    assert engine.posts_to("expired-certificate").count(RESTART) == 1
    assert result.outcome is Outcome.REMEDIATED and result.rebooted
    reboot = next(step for step in result.steps if step.name == "reboot")
    assert "Activity Log" in reboot.detail


def test_a_restart_azure_never_got_is_sent_once_on_redelivery(engine: Engine) -> None:
    request = engine.request("expired-certificate")
    settings = engine.with_settings(retry_total=1, retry_backoff_seconds=0.0)
    clients = type(engine.clients)(settings)
    engine.emulator.faults.add("restart", "503", count=1000)  # refused before Azure acted, every time
    with pytest.raises(TransientError):
        engine.workflow(request, settings=settings, retry_later=True, clients=clients).run()
    assert engine.emulator.activity.events_of(RESTART_ACTION) == []  # Azure never accepted one
    engine.emulator.faults.clear()
    result = engine.workflow(request).run()  # the redelivery establishes that, and sends it once
    accepted = [e for e in engine.emulator.activity.events_of(RESTART_ACTION) if e["status"]["value"] == "Accepted"]
    assert len(accepted) == 1 and result.rebooted and result.outcome is Outcome.REMEDIATED
    clients.close()


def test_a_request_that_already_has_an_outcome_is_not_run_again(engine: Engine) -> None:
    request = engine.request("expired-certificate")
    first = engine.workflow(request).run()
    posts = engine.posts_to("expired-certificate")
    again = engine.workflow(request).run()  # a duplicate delivery
    assert again.outcome is first.outcome and again.reason == first.reason
    assert engine.posts_to("expired-certificate") == posts


def test_rebooted_is_true_for_a_request_resumed_after_its_restart(engine: Engine) -> None:
    request = engine.request("expired-certificate")

    def die_when_waiting(step: str, detail: str) -> None:
        if step == "wait" and detail == "started":
            raise KeyboardInterrupt  # the worker dies

    with pytest.raises(KeyboardInterrupt):
        engine.workflow(request, progress=die_when_waiting).run()
    result = engine.workflow(request).run()
    record = engine.ledger.get(request.request_id)
    assert result.rebooted and record is not None and record.rebooted


def test_escalation_is_not_tried_when_the_key_store_is_not_the_problem(engine: Engine) -> None:
    vm = engine.vm("firewall-closed")

    def policy_reapplies(step: str, detail: str) -> None:
        if step == "reboot" and detail != "started":  # a group policy closes the rule again at boot
            vm.guest.firewall = dict.fromkeys(vm.guest.firewall, False)

    result = engine.workflow(engine.request("firewall-closed"), progress=policy_reapplies).run()
    assert result.outcome is Outcome.FAILED and "repeating it would not help" in result.reason
    assert engine.posts_to("firewall-closed").count(RESTART) == 1


def test_a_dry_run_takes_no_lock(engine: Engine) -> None:
    request = engine.request("expired-certificate", dry_run=True)
    assert engine.ledger.acquire(request.vm, "someoneelse", minutes=10)[0]
    result = engine.workflow(request).run()
    assert result.outcome is Outcome.PLANNED
    assert engine.ledger.vm_state(request.vm).owner == "someoneelse"


def test_a_locked_vm_is_retried_later_by_a_worker_and_skipped_on_the_last_delivery(engine: Engine) -> None:
    request = engine.request("expired-certificate")
    assert engine.ledger.acquire(request.vm, "someoneelse", minutes=10)[0]
    with pytest.raises(TransientError, match="locked"):
        engine.workflow(request, retry_later=True).run()
    final = engine.workflow(request).run()
    assert final.outcome is Outcome.SKIPPED and final.reason.startswith("locked")
    assert engine.ledger.vm_state(request.vm).owner == "someoneelse"  # not ours to release
    assert engine.posts_to("expired-certificate") == []


def test_a_request_that_cannot_be_recorded_gives_its_dedup_key_back(engine: Engine) -> None:
    queue = RequestQueue(queue_client(engine.settings, engine.settings.queue_name), engine.ledger)
    queue.create()
    request = RemediationRequest(engine.request("healthy").vm, Trigger.ALERT, "alert", dedup_key="alert:x:vm")
    assert queue.claim("alert:x:vm")
    engine.ledger.audit.delete_table()  # the ledger's audit table is gone: the row cannot be written
    with pytest.raises(TransientError):
        queue.enqueue(request)
    assert queue.claim("alert:x:vm")  # the action group's retry is not mistaken for a duplicate
