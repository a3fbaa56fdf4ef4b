"""Approval mode: for the triggers in `RDPR_APPROVAL_TRIGGERS`, a person says yes before anything changes.

1. The first delivery runs a read-only diagnosis as its own request (`<id>plan`, a diagnose-only workflow: its
   journal keeps the evidence, the engine's decision gives the plan) and records the plan on the request: in
   words, and as its exact steps (`PlanSteps`: the ordered actions with their targets) and their fingerprint.
   The request then waits in `awaiting-approval` until `RDPR_APPROVAL_EXPIRY_MINUTES` pass. Its queue message
   waits with it. A diagnosis that finds nothing to repair ends the request with that verdict: nothing to approve.
2. `approve` records who (the authenticated principal), why, and the exact plan approved (`ApprovedPlan`), and
   makes the message visible: the request then runs the whole workflow, which diagnoses the VM again first. The
   approval binds what runs: a fresh plan with any step outside the approved one (remediate.engine.approved)
   ends the request unchanged, both plans in its reason. An approval older than RDPR_APPROVAL_EXPIRY_MINUTES when
   its run would start (it waited for a slot, a hold or its window) is stale: it is withdrawn (kept on the row
   as `StaleApproval`), the VM is diagnosed again and the new plan waits for a new approval.
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
from remediate.engine import approved
from remediate.engine.runner import remediate
from remediate.ledger import (
    AWAITING_APPROVAL,
    DONE,
    HELD,
    QUEUED,
    REQUEST_ROW,
    WAITING,
    Ledger,
    _storage_errors,
    utcnow,
)
from remediate.model import NotFound, Outcome, PermanentError, RemediationRequest, StepResult
from remediate.settings import Settings

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient

    from remediate.azure.clients import AzureClients

log = logging.getLogger(__name__)
FIELDS = (
    "Plan",
    "PlanRequest",
    approved.PLAN_STEPS,
    approved.PLAN_FINGERPRINT,
    "ApprovalExpires",
    "ApprovedBy",
    "ApprovedAt",
    approved.APPROVED_FINGERPRINT,
    "DecisionReason",
    "RejectedBy",
    "OnBehalfOf",
    "StaleApproval",
)


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
    plan_id = _next_plan_request(ledger, request.request_id)
    diagnosis = dataclasses.replace(request, options=options, request_id=plan_id, dedup_key=None)
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
    steps = _plan_steps(result.steps)
    ledger.mark_waiting(
        request.request_id,
        AWAITING_APPROVAL,
        reason,
        Plan=result.reason[:8000],
        PlanRequest=diagnosis.request_id,
        ApprovalExpires=expires,
        **{approved.PLAN_STEPS: steps, approved.PLAN_FINGERPRINT: approved.fingerprint(steps)},
    )
    telemetry.control_event("awaiting approval", request.request_id, result.reason)
    # A few seconds past the expiry, so that the message finds the request expired when it comes back.
    return AWAITING_APPROVAL, math.ceil((expires - now).total_seconds()) + 5


def _plan_steps(steps: list[StepResult]) -> str:
    """The exact plan the diagnosis decided: the journal's `plan` step holds the engine's decision."""
    decision = next((step.summary for step in steps if step.name == "plan" and step.summary), None)
    return approved.of_decision_json(decision or {})


def _next_plan_request(ledger: Ledger, request_id: str) -> str:
    """`<id>plan` for the first diagnosis, `<id>plan2`, `<id>plan3`... for each fresh one after a stale approval
    (a diagnosis is a request of its own: one that ran is never run again under the same id)."""
    last = ledger.request_fields(request_id, "PlanRequest").get("PlanRequest")
    if not isinstance(last, str) or not last.startswith(f"{request_id}plan"):
        return f"{request_id}plan"
    number = last.removeprefix(f"{request_id}plan")
    return f"{request_id}plan{int(number) + 1 if number.isdigit() else 2}"


def withdraw_if_stale(settings: Settings, ledger: Ledger, request: RemediationRequest, state: str | None) -> bool:
    """An approval older than RDPR_APPROVAL_EXPIRY_MINUTES whose run has not started is withdrawn (recorded), so
    the request is diagnosed again and waits for a new approval: it never runs on facts that may have changed."""
    if state not in (QUEUED, HELD, WAITING) or request.trigger.value not in settings.approval_triggers:
        return False  # not approved and waiting to run (awaiting, running, done; no approval mode)
    request_id = request.request_id
    fields = ledger.request_fields(request_id, "ApprovedBy", "ApprovedAt")
    at = fields.get("ApprovedAt")
    if not fields.get("ApprovedBy") or not isinstance(at, dt.datetime):
        return False
    if utcnow() - at < dt.timedelta(minutes=settings.approval_expiry_minutes) or _changed(ledger.steps(request_id)):
        # Fresh, or its run changed the VM already: the approval was used in time. A run that only read (its
        # preflight and diagnosis journaled before a storm hold or a window wait) has not used it yet.
        return False
    stale = f"approved by {fields['ApprovedBy']} at {at.isoformat(timespec='seconds')}; expired before its run started"
    ledger.note(request_id, ApprovedBy="", OnBehalfOf="", StaleApproval=stale[:1000], **{approved.APPROVED_PLAN: ""})
    telemetry.control_event("approval expired", request_id, f"{stale}; diagnosed again")
    return True


def _changed(steps: list[StepResult]) -> bool:
    """Whether any journaled step may have changed the VM (a script that said so, or a restart sent)."""
    return any((step.summary or {}).get("changed") or step.name.startswith("reboot") for step in steps)


def expired(ledger: Ledger, request_id: str, now: dt.datetime | None = None) -> bool:
    until = ledger.request_fields(request_id, "ApprovalExpires").get("ApprovalExpires")
    return isinstance(until, dt.datetime) and (now or utcnow()) >= until


def close_expired(ledger: Ledger, request_id: str) -> bool:
    """End a request whose wait for approval ran out, conditional on the row still awaiting approval as read: an
    approval (or rejection) that won a moment before the expiry stands. True when this call ended it."""
    head = _head(ledger, request_id)
    if head is None or head.get("State") != AWAITING_APPROVAL:
        return False
    reason = (
        "approval expired: nobody approved the plan in time (RDPR_APPROVAL_EXPIRY_MINUTES); nothing was changed, "
        "and a new alert or request starts over with a fresh diagnosis"
    )
    if not _write_if_unchanged(ledger, head, _skipped(reason, utcnow())):
        return False
    telemetry.control_event("approval expired", request_id, "nobody decided in time")
    return True


def decide(
    ledger: Ledger,
    queue: QueueClient,
    request_id: str,
    who: str,
    why: str,
    *,
    approve: bool,
    on_behalf_of: str = "",
) -> dict[str, Any]:
    """Approve or reject a request waiting for approval; raises NotFound / NotAwaiting and changes nothing then.

    The decision is one write conditional on the ETag of the request row as it was read and checked: of two
    decisions at once (two approvers, or an approve and a reject) exactly one wins; the other finds the row
    changed, changes nothing and is told the state the winner left. `who` is the authenticated identity;
    `on_behalf_of` is the caller's own note, recorded apart from it and labelled as a claim, never as who decided.
    """
    head = _head(ledger, request_id)
    if head is None:
        raise NotFound(f"request_id: no request {request_id} in the ledger")
    _require_awaiting(head, request_id)
    now = utcnow()
    stamp = now.isoformat(timespec="seconds")
    fields = _approval(head, who, why, now) if approve else _rejection(who, why, now)
    if on_behalf_of:
        fields["OnBehalfOf"] = f"on behalf of {on_behalf_of} (stated by {who}, not verified)"[:1000]
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
    plan = fields[approved.APPROVED_FINGERPRINT]
    return {"requestId": request_id, "decision": "approved", "by": who, "at": stamp, "planFingerprint": plan}


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


def _approval(head: Any, who: str, why: str, now: dt.datetime) -> dict[str, Any]:
    """The decision, and the exact plan it approves: the one recorded on the row this decision read (its ETag
    makes sure no newer plan was recorded in between). A row without recorded steps approves none."""
    stamp = now.isoformat(timespec="seconds")
    plan = head.get(approved.PLAN_STEPS) or approved.canonical([])
    return {
        approved.APPROVED_PLAN: plan,
        approved.APPROVED_FINGERPRINT: approved.fingerprint(plan),
        "State": QUEUED,
        "OutcomeReason": f"approved by {who} at {stamp}: {why}",
        "ApprovedBy": who,
        "ApprovedAt": now,
        "DecisionReason": why[:1000],
    }


def _rejection(who: str, why: str, now: dt.datetime) -> dict[str, Any]:
    stamp = now.isoformat(timespec="seconds")
    reason = f"rejected by {who} at {stamp}: {why}; nothing was changed"
    return {**_skipped(reason, now), "RejectedBy": who, "DecisionReason": why[:1000]}


def _skipped(reason: str, now: dt.datetime) -> dict[str, Any]:
    """The outcome columns `Ledger.record_outcome` writes, for a request that ends unchanged."""
    return {
        "State": DONE,
        "Outcome": Outcome.SKIPPED.value,
        "OutcomeReason": reason[:8000],
        "FailedStep": "",
        "Rebooted": False,
        "Changed": False,
        "FinishedAt": now,
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
