"""Approval mode: for the triggers in `RDPR_APPROVAL_TRIGGERS`, a person says yes before anything changes.

1. The first delivery runs a read-only diagnosis as its own request (`<id>plan`, a diagnose-only workflow: its
   journal keeps the evidence, the engine's decision gives the plan) and records the plan on the request, which
   then waits in `awaiting-approval` until `RDPR_APPROVAL_EXPIRY_MINUTES` pass. Its queue message waits with it.
   A diagnosis that finds nothing to repair ends the request with that verdict: there is nothing to approve.
2. `approve` records who (the authenticated principal) and why, and makes the message visible: the request then
   runs the whole workflow, which diagnoses the VM again first, so facts that changed since the plan are seen.
   `reject` ends the request as skipped with who and why. Both refuse an unknown, finished or expired request,
   and each is one ETag-conditional write on the request row: of two decisions at once exactly one wins.
3. A request nobody decided on expires: when its message comes back it ends as skipped with that reason.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from typing import TYPE_CHECKING, Any

from remediate import telemetry
from remediate.engine.runner import remediate
from remediate.ledger import AWAITING_APPROVAL, DONE, QUEUED, REQUEST_ROW, Ledger, _storage_errors, utcnow
from remediate.model import NotFound, Outcome, PermanentError, RemediationRequest
from remediate.settings import Settings

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient

    from remediate.azure.clients import AzureClients

log = logging.getLogger(__name__)
FIELDS = ("Plan", "PlanRequest", "ApprovalExpires", "ApprovedBy", "ApprovedAt", "DecisionReason", "RejectedBy")


class NotAwaiting(PermanentError):
    """Deciding on a request that is not waiting for approval (or whose wait expired): nothing changed."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.code = code


def needs_approval(settings: Settings, ledger: Ledger, request: RemediationRequest) -> bool:
    if request.trigger.value not in settings.approval_triggers:
        return False
    if request.options.dry_run or request.options.diagnose_only or settings.dry_run:
        return False  # changes nothing: nothing to approve
    return not ledger.request_fields(request.request_id, "ApprovedBy").get("ApprovedBy")


def diagnose_and_wait(
    settings: Settings, ledger: Ledger, clients: AzureClients, request: RemediationRequest
) -> tuple[str, int] | None:
    """Run the read-only diagnosis and record the plan; the state and delay to put the message back with, or None
    when the diagnosis ended the request (nothing to repair, skipped, out of scope)."""
    options = dataclasses.replace(request.options, diagnose_only=True)
    diagnosis = dataclasses.replace(request, options=options, request_id=f"{request.request_id}plan", dedup_key=None)
    result = remediate(diagnosis, settings, ledger, clients, retry_later=True)
    if result.outcome is not Outcome.PLANNED:
        ledger.record_outcome(
            request.request_id,
            result.outcome,
            f"{result.reason} (read-only diagnosis {diagnosis.request_id}; nothing to approve)",
        )
        return None
    now = utcnow()
    expires = now + dt.timedelta(minutes=settings.approval_expiry_minutes)
    reason = f"awaiting approval until {expires.isoformat(timespec='minutes')}: {result.reason}"
    ledger.mark_waiting(
        request.request_id,
        AWAITING_APPROVAL,
        reason,
        Plan=result.reason[:8000],
        PlanRequest=diagnosis.request_id,
        ApprovalExpires=expires,
    )
    telemetry.control_event("awaiting approval", request.request_id, result.reason)
    # A few seconds past the expiry, so that the message finds the request expired when it comes back.
    return AWAITING_APPROVAL, math.ceil((expires - now).total_seconds()) + 5


def expired(ledger: Ledger, request_id: str, now: dt.datetime | None = None) -> bool:
    until = ledger.request_fields(request_id, "ApprovalExpires").get("ApprovalExpires")
    return isinstance(until, dt.datetime) and (now or utcnow()) >= until


def close_expired(ledger: Ledger, request_id: str) -> None:
    ledger.record_outcome(
        request_id,
        Outcome.SKIPPED,
        "approval expired: nobody approved the plan in time (RDPR_APPROVAL_EXPIRY_MINUTES); nothing was changed, "
        "and a new alert or request starts over with a fresh diagnosis",
    )
    telemetry.control_event("approval expired", request_id, "nobody decided in time")


def decide(ledger: Ledger, queue: QueueClient, request_id: str, who: str, why: str, *, approve: bool) -> dict[str, Any]:
    """Approve or reject a request waiting for approval; raises NotFound / NotAwaiting and changes nothing then.

    The decision is one write conditional on the ETag of the request row as it was read and checked: of two
    decisions at once (two approvers, or an approve and a reject) exactly one wins; the other finds the row
    changed, changes nothing and is told the state the winner left.
    """
    head = _head(ledger, request_id)
    if head is None:
        raise NotFound(f"request_id: no request {request_id} in the ledger")
    _require_awaiting(head, request_id)
    now = utcnow()
    stamp = now.isoformat(timespec="seconds")
    fields = _approval(who, why, now) if approve else _rejection(who, why, now)
    if not _write_if_unchanged(ledger, head, fields):
        found = _head(ledger, request_id)
        raise NotAwaiting(
            f"request_id: request {request_id} was decided by someone else meanwhile: it is {_state_of(found)}",
            "AlreadyDecided",
        )
    if not approve:
        telemetry.control_event("request rejected", request_id, f"by {who}: {why}")
        return {"requestId": request_id, "decision": "rejected", "by": who, "at": stamp}
    _make_visible(ledger, queue, request_id)
    telemetry.control_event("request approved", request_id, f"by {who}: {why}")
    return {"requestId": request_id, "decision": "approved", "by": who, "at": stamp}


def _head(ledger: Ledger, request_id: str) -> Any:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        with _storage_errors("read a request"):
            return ledger.audit.get_entity(request_id, REQUEST_ROW)
    except ResourceNotFoundError:
        return None


def _state_of(head: Any) -> str:
    if head is None:
        return "gone"
    if head.get("Outcome"):
        return f"finished ({head['Outcome']})"
    return f"in state {head.get('State')}"


def _require_awaiting(head: Any, request_id: str) -> None:
    if head.get("State") != AWAITING_APPROVAL:
        raise NotAwaiting(
            f"request_id: request {request_id} is not awaiting approval: it is {_state_of(head)}", "NotAwaiting"
        )
    until = head.get("ApprovalExpires")
    if isinstance(until, dt.datetime) and utcnow() >= until:
        raise NotAwaiting(f"request_id: the approval of request {request_id} has expired", "ApprovalExpired")


def _approval(who: str, why: str, now: dt.datetime) -> dict[str, Any]:
    stamp = now.isoformat(timespec="seconds")
    return {
        "State": QUEUED,
        "OutcomeReason": f"approved by {who} at {stamp}: {why}",
        "ApprovedBy": who,
        "ApprovedAt": now,
        "DecisionReason": why[:1000],
    }


def _rejection(who: str, why: str, now: dt.datetime) -> dict[str, Any]:
    """The same outcome columns `Ledger.record_outcome` writes, with who rejected and why."""
    stamp = now.isoformat(timespec="seconds")
    return {
        "State": DONE,
        "Outcome": Outcome.SKIPPED.value,
        "OutcomeReason": f"rejected by {who} at {stamp}: {why}; nothing was changed",
        "FailedStep": "",
        "Rebooted": False,
        "Changed": False,
        "FinishedAt": now,
        "RejectedBy": who,
        "DecisionReason": why[:1000],
    }


def _write_if_unchanged(ledger: Ledger, head: Any, fields: dict[str, Any]) -> bool:
    """Merge `fields` into the request row if nobody wrote it since `head` was read; False when somebody did."""
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
    from azure.data.tables import UpdateMode

    entity = {"PartitionKey": head["PartitionKey"], "RowKey": REQUEST_ROW, **fields}
    try:
        with _storage_errors("record a decision"):
            ledger.audit.update_entity(
                entity, mode=UpdateMode.MERGE, etag=head.metadata["etag"], match_condition=MatchConditions.IfNotModified
            )
    except (ResourceModifiedError, ResourceNotFoundError):
        return False
    return True


def _make_visible(ledger: Ledger, queue: QueueClient, request_id: str) -> None:
    from azure.core.exceptions import HttpResponseError

    message = ledger.request_fields(request_id, "MessageId", "PopReceipt")
    try:
        if message.get("MessageId") and message.get("PopReceipt"):
            queue.update_message(message["MessageId"], pop_receipt=message["PopReceipt"], visibility_timeout=0)
    except HttpResponseError:
        log.info("approved message not made visible; it runs at its next delivery", extra={"request_id": request_id})
