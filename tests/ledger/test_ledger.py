"""The ledger against Azurite: locks, attempts, dedup, audit records and steps."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from remediate.ledger import DONE, QUEUED, Ledger
from remediate.model import Outcome, RemediationRequest, StepResult, Trigger, VmId

VM = VmId.parse(
    "/subscriptions/00000000-0000-4000-8000-000000000001/resourceGroups/rg-prod"
    "/providers/Microsoft.Compute/virtualMachines/vm01"
)


def test_lock_is_exclusive_reentrant_and_released(ledger: Ledger) -> None:
    taken, _ = ledger.acquire(VM, "req-a", minutes=10)
    assert taken
    again, _ = ledger.acquire(VM, "req-a", minutes=10)  # a redelivery of the same request resumes
    assert again
    other, state = ledger.acquire(VM, "req-b", minutes=10)
    assert not other and state.owner == "req-a"
    ledger.release(VM, "req-b")  # not the owner: no effect
    assert ledger.vm_state(VM).owner == "req-a"
    ledger.release(VM, "req-a")
    assert ledger.acquire(VM, "req-b", minutes=10)[0]


def test_lock_ids_are_case_insensitive(ledger: Ledger) -> None:
    assert ledger.acquire(VM, "req-a", minutes=10)[0]
    shouted = VmId.parse(str(VM).upper().replace("SUBSCRIPTIONS", "subscriptions"))
    assert not ledger.acquire(shouted, "req-b", minutes=10)[0]


def test_expired_lock_is_taken_over(ledger: Ledger) -> None:
    now = [dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)]
    clocked = Ledger(ledger._service, ledger.vms.table_name[:-3], clock=lambda: now[0])
    assert clocked.acquire(VM, "req-a", minutes=10)[0]
    now[0] += dt.timedelta(minutes=11)
    taken, state = clocked.acquire(VM, "req-b", minutes=10)
    assert taken and state.owner == "req-b"


def test_racing_workers_exactly_one_wins(ledger: Ledger) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        barrier.wait()
        results.append(ledger.acquire(VM, f"req-{n}", minutes=10)[0])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1


def test_dedup_claims_once(ledger: Ledger) -> None:
    assert ledger.claim("alert:abc:vm01")
    assert not ledger.claim("alert:abc:vm01")
    assert ledger.claim("alert:abc:vm02")


def test_attempts_count_once_per_request(ledger: Ledger) -> None:
    ledger.record_attempt(VM, "req-a")
    ledger.record_attempt(VM, "req-a")
    ledger.record_attempt(VM, "req-b")
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    assert ledger.vm_state(VM).attempts_since(since) == 2


def test_audit_record_round_trip(ledger: Ledger) -> None:
    request = RemediationRequest(VM, Trigger.RUNBOOK, "operator asked")
    ledger.record_accepted(request)
    record = ledger.get(request.request_id)
    assert record is not None and record.state == QUEUED and record.vm == str(VM)
    ledger.record_step(request.request_id, 0, StepResult("diagnose", "started", 1.0))
    ledger.record_step(request.request_id, 0, StepResult("diagnose", "ok", 1.0, 2.0, "clean", {"script": "x"}))
    ledger.record_step(request.request_id, 1, StepResult("reboot", "started", 3.0))
    ledger.record_outcome(request.request_id, Outcome.FAILED, "VM never came back", failed_step="wait", rebooted=True)
    record = ledger.get(request.request_id)
    assert record is not None
    assert record.state == DONE and record.outcome == "failed" and record.failed_step == "wait"
    assert [(s.name, s.status) for s in record.steps] == [("diagnose", "ok"), ("reboot", "started")]
    assert record.steps[0].summary == {"script": "x"}
    assert [r.request_id for r in ledger.history(VM)] == [request.request_id]
    assert ledger.get("no-such-request") is None


def test_recent_outcomes_for_the_circuit_breaker(ledger: Ledger) -> None:
    for outcome in (Outcome.FAILED, Outcome.REMEDIATED, Outcome.FAILED):
        request = RemediationRequest(VM, Trigger.SWEEP, "sweep")
        ledger.record_accepted(request)
        ledger.record_outcome(request.request_id, outcome, "x", changed=outcome is Outcome.REMEDIATED)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    decisions = ledger.recent_decisions(since)
    assert sorted((d.outcome, d.changed) for d in decisions) == [
        ("failed", False),
        ("failed", False),
        ("remediated", True),
    ]
    assert {d.vm for d in decisions} == {str(VM)}


@pytest.mark.parametrize(("one", "other"), [("\u00b5", "\u03bc"), ("\u03c2", "\u03c3"), ("\u01c5", "\u01c6")])
def test_two_spellings_azure_may_equate_share_one_lock(ledger: Ledger, one: str, other: str) -> None:
    """Micro sign and mu (and other pairs that are not case round trips) may be one group to Azure: the lock
    and the pending slot must hold for both spellings, or one VM could be remediated twice at once."""
    sub = "00000000-0000-4000-8000-000000000001"
    first, second = (
        VmId.parse(f"/subscriptions/{sub}/resourceGroups/rg-{c}/providers/Microsoft.Compute/virtualMachines/vm1")
        for c in (one, other)
    )
    assert first.key != second.key  # scope still tells them apart...
    taken, _ = ledger.acquire(first, "request-a", 30)
    assert taken
    taken, state = ledger.acquire(second, "request-b", 30)
    assert not taken and state.owner == "request-a"  # ...the lock does not
