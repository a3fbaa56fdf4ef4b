"""The reconciler: closes what crashes and storage outages left half done, once storage answers again.

Run by a timer (and by tests at will). Each pass is idempotent and needs nothing but the ledger and the queue:

* an intake outbox entry (a dedup claim whose message was prepared but never confirmed queued) is finished:
  request row (insert-only), message, confirmation. A claim that never got as far as a message is given back,
  so the sender's next retry is accepted instead of being answered "duplicate";
* a request whose outcome is recorded but whose VM row was not finished (cooldown, lock) is completed;
* a request without an outcome, that no execution holds (no live lease), and that has not moved for longer
  than any delivery could take, is closed from its journal (`failed`, with where it stopped, the restarts
  Azure accepted, and a cooldown only if the VM may have been changed). A *queued* one only once no copy of
  its message can still arrive: its messages live `remediate.intake.queue.message_ttl_seconds`, and a copy sent
  after acceptance (the outbox, a slot wait, a hold) records when it expires. The row says so (`ClosedBy`), so
  a delivery that still comes is recorded by the worker, never silently dropped.
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
# Who closed a request, on its row: a delivery that finds it done reads this (remediate.intake.worker).
CLOSED_BY = "ClosedBy"
RECONCILER = "reconciler"
# How long the reconciler holds a request while it closes it (a few storage calls and an Activity Log read).
RECONCILER_LEASE_SECONDS = 120.0


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
            # Its message comes back by itself (budget, window, approval expiry); only once that message has
            # expired unseen (a put-back records when) can nothing finish it but this.
            why = _parked_abandoned(ledger, record, at, running_stale_seconds)
        elif record.state == QUEUED:
            why = _queued_abandoned(ledger, record, at, queued_stale_seconds, running_stale_seconds)
        else:
            quiet = _last_activity(record) <= at - dt.timedelta(seconds=running_stale_seconds)
            why = f"closed by the reconciler after {running_stale_seconds:.0f} s without progress" if quiet else None
        if why is None:
            continue
        # Closing takes the request's execution lease, as a delivery does: a delivery that comes now finds it
        # held (and later the outcome), instead of running beside a close that says nothing ran it.
        taken, _holder = ledger.take_lease(record.request_id, RECONCILER, RECONCILER_LEASE_SECONDS)
        if not taken:
            continue  # an execution still holds it
        try:
            current = ledger.get(record.request_id)  # as it is under the lease: a delivery may have moved it on
            if current is None or current.state == DONE or _last_activity(current) > _last_activity(record):
                continue
            if close_abandoned(ledger, current, why, at, restart_evidence):
                ledger.note(record.request_id, **{CLOSED_BY: RECONCILER})
            report.closed.append(record.request_id)
        finally:
            ledger.drop_lease(record.request_id, RECONCILER)
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


def _queued_abandoned(
    ledger: Ledger, record: AuditRecord, at: dt.datetime, queued_stale: float, grace: float
) -> str | None:
    """Why a queued request is abandoned, or None while a copy of its message may still be delivered.

    The message sent at acceptance lives `queued_stale - grace` seconds; a copy sent later records its expiry.
    `grace` (a lock lifetime) covers a delivery that took a copy just before it expired.
    """
    if _last_activity(record) > at - dt.timedelta(seconds=queued_stale):
        return None
    expiry = ledger.request_fields(record.request_id, "MessageExpires").get("MessageExpires")
    if isinstance(expiry, dt.datetime):
        expiry = expiry if expiry.tzinfo else expiry.replace(tzinfo=dt.UTC)
        if expiry > at - dt.timedelta(seconds=grace):
            return None
        last = f"its last queue message expired at {expiry.isoformat(timespec='seconds')}"
    else:
        last = f"its queue message expired (it lives {max(queued_stale - grace, 0):.0f} s)"
    return f"closed by the reconciler: no delivery ran it and none can come any more ({last})"


def _parked_abandoned(ledger: Ledger, record: AuditRecord, at: dt.datetime, grace: float) -> str | None:
    """Why a held, waiting or approval-awaiting request is abandoned: the message that was to bring it back
    expired more than `grace` (a lock lifetime) ago. None while it may still come (or no expiry is recorded)."""
    expiry = ledger.request_fields(record.request_id, "MessageExpires").get("MessageExpires")
    if not isinstance(expiry, dt.datetime):
        return None
    expiry = expiry if expiry.tzinfo else expiry.replace(tzinfo=dt.UTC)
    if expiry > at - dt.timedelta(seconds=grace):
        return None
    return (
        f"closed by the reconciler: it was {record.state} and the queue message that was to bring it back "
        f"expired at {expiry.isoformat(timespec='seconds')} unseen"
    )


def _last_activity(record: AuditRecord) -> dt.datetime:
    moments = [record.accepted_at.timestamp()]
    for step in record.steps:
        moments.append(step.finished_at or step.started_at)
    return dt.datetime.fromtimestamp(max(moments), dt.UTC)
