"""The reconciler: closes what crashes and storage outages left half done, once storage answers again.

Run by a timer (and by tests at will). Each pass is idempotent and needs nothing but the ledger and the queue:

* an intake outbox entry (a dedup claim whose message was prepared but never confirmed queued) is finished:
  request row (insert-only), message, confirmation. A claim that never got as far as a message is given back,
  so the sender's next retry is accepted instead of being answered "duplicate";
* a request whose outcome is recorded but whose VM row was not finished (cooldown, lock) is completed;
* a request without an outcome, that no execution holds (no live lease), and that has not moved for longer
  than any delivery could take, is closed from its journal (`failed`, with where it stopped, the restarts
  Azure accepted, and a cooldown only if the VM may have been changed).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from remediate.engine.closing import RestartEvidence, close_abandoned
from remediate.ledger import AWAITING_APPROVAL, DONE, HELD, QUEUED, WAITING, AuditRecord, Ledger, utcnow

if TYPE_CHECKING:
    from remediate.intake.queue import RequestQueue

log = logging.getLogger(__name__)

# An intake answers within seconds (an action group waits at most 10 s): a claim older than this was abandoned.
CLAIM_STALE_SECONDS = 60.0
# Requests parked on purpose by the fleet controls: not abandoned, however long they wait.
PARKED = frozenset({HELD, WAITING, AWAITING_APPROVAL})


@dataclass
class ReconcileReport:
    resent: list[str] = field(default_factory=list)  # request ids whose outbox message was sent
    released_claims: int = 0
    finished: list[str] = field(default_factory=list)  # done requests whose VM row was completed
    closed: list[str] = field(default_factory=list)  # requests closed from their journal


def reconcile(
    ledger: Ledger,
    queue: RequestQueue,
    *,
    running_stale_seconds: float,
    queued_stale_seconds: float,
    claim_stale_seconds: float = CLAIM_STALE_SECONDS,
    now: dt.datetime | None = None,
    restart_evidence: RestartEvidence | None = None,
) -> ReconcileReport:
    at = now or utcnow()
    report = ReconcileReport()
    _finish_outbox(ledger, queue, at - dt.timedelta(seconds=claim_stale_seconds), report)
    _finish_locks(ledger, report)
    for record in ledger.open_requests():
        if record.state in PARKED:
            continue  # its message comes back by itself (budget, window) or it expires by its own rule (approval)
        stale = queued_stale_seconds if record.state == QUEUED else running_stale_seconds
        if _last_activity(record) > at - dt.timedelta(seconds=stale):
            continue
        expires = ledger.lease_expires(record.request_id)
        if expires is not None and expires > at:
            continue  # an execution still holds it
        why = f"closed by the reconciler after {stale:.0f} s without progress"
        close_abandoned(ledger, record, why, at, restart_evidence)
        report.closed.append(record.request_id)
    if report.resent or report.released_claims or report.finished or report.closed:
        log.warning(
            "reconciler completed unfinished work",
            extra={
                "resent": len(report.resent),
                "released_claims": report.released_claims,
                "finished": len(report.finished),
                "closed": len(report.closed),
            },
        )
    return report


def _finish_outbox(ledger: Ledger, queue: RequestQueue, before: dt.datetime, report: ReconcileReport) -> None:
    for claim in ledger.unfinished_claims(before):
        if claim.message:
            queue.complete_outbox(claim)
            report.resent.append(claim.request_id or "?")
        elif ledger.retake_claim(claim):
            ledger.unclaim(claim.key)
            report.released_claims += 1


def _finish_locks(ledger: Ledger, report: ReconcileReport) -> None:
    for vm_key, owner in ledger.locked_vms():
        record = ledger.get(owner)
        if record is not None and record.state == DONE:
            ledger.complete_finish(record)
            report.finished.append(owner)
        elif record is None:
            log.warning("a VM is locked by an unknown request", extra={"vm": vm_key, "request_id": owner})


def _last_activity(record: AuditRecord) -> dt.datetime:
    moments = [record.accepted_at.timestamp()]
    for step in record.steps:
        moments.append(step.finished_at or step.started_at)
    return dt.datetime.fromtimestamp(max(moments), dt.UTC)
