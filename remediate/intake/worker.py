"""The queue worker: one message, one VM, one workflow. What the queue trigger calls."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from remediate import telemetry
from remediate.engine.alert_check import alert_refusal
from remediate.engine.closing import RestartEvidence, close_abandoned
from remediate.engine.evidence import activity_log_evidence
from remediate.engine.runner import remediate
from remediate.engine.workflow import WorkflowResult
from remediate.intake.reconcile import CLOSED_BY, RECONCILER
from remediate.ledger import DONE, RUNNING, ExecutionConflict, Ledger, utcnow
from remediate.model import Outcome, PermanentError, RemediationError, RemediationRequest, TransientError
from remediate.settings import Settings

if TYPE_CHECKING:
    from remediate.azure.clients import AzureClients
    from remediate.engine.storm import StormGuard

log = logging.getLogger(__name__)


def handle_message(
    body: str,
    dequeue_count: int,
    settings: Settings,
    ledger: Ledger,
    clients: AzureClients,
    storm: StormGuard | None = None,
) -> WorkflowResult | None:
    """Run the request in `body`. Raises to have the host redeliver; returns None for a message that no
    retry can help (recorded in the ledger when it names a request, logged as an error either way).
    """
    try:
        data = json.loads(body)
        request = RemediationRequest.from_message(data)
    except (ValueError, PermanentError) as exc:
        _drop_unreadable(body, exc, ledger)
        return None
    row = ledger.request_fields(request.request_id, "Vm", "Trigger", "Options", "State", CLOSED_BY, "LateDeliveries")
    refusal = _not_accepted(request, row)
    if refusal is not None:
        # Whoever can write to the queue must not gain what the intake guards (app roles, storm guard, approval):
        # only a message for a request the intake recorded, as recorded, runs. Nothing is written for it.
        log.error("queue message refused", extra={**_fields(request, dequeue_count), "reason": refusal})
        if row.get("Vm"):  # the request exists: its record says a message for it was refused, and why
            ledger.note(request.request_id, RefusedMessageAt=utcnow(), RefusedMessage=refusal[:500])
        return None
    if _closed_by_reconciler(request, row, ledger, dequeue_count):
        return None
    last_delivery = dequeue_count >= settings.max_dequeue_count
    try:
        if row.get("State") not in (DONE, RUNNING):  # a resumed request passed this check when it started
            refusal = alert_refusal(request, clients)
            if refusal is not None:
                ledger.record_outcome(request.request_id, Outcome.SKIPPED, refusal)
                log.warning("alert not acted on", extra={**_fields(request, dequeue_count), "reason": refusal})
                return None
        return remediate(
            request,
            settings,
            ledger,
            clients,
            retry_later=not last_delivery,
            trace_context=telemetry.carrier_of(data),
            storm=storm,
        )
    except ExecutionConflict as exc:
        # Another delivery of the same request is running it: that one records the outcome (or, if it dies,
        # the next delivery or the reconciler does). This copy is done.
        # Raised even on the last delivery: the message then goes to the poison queue, whose handler waits for
        # that execution and resumes the request if it died (a dropped copy could be the last one there is).
        log.warning("duplicate delivery while the request runs elsewhere", extra=_fields(request, dequeue_count))
        raise TransientError(exc.reason) from exc
    except Exception as exc:
        if last_delivery:
            # Record before the host moves the message to the poison queue: nothing accepted is lost silently.
            reason = exc.reason if isinstance(exc, RemediationError) else f"{type(exc).__name__}: {exc}"
            why = f"gave up after {dequeue_count} deliveries: {reason}"
            _close(request, ledger, why, activity_log_evidence(clients, settings))
        log.warning("delivery failed", extra={**_fields(request, dequeue_count), "last_delivery": last_delivery})
        raise


def _not_accepted(request: RemediationRequest, row: dict[str, Any]) -> str | None:
    """Why this message is not a request the intake accepted (None: it is). The intake writes the audit row
    before it sends the message (remediate/intake/queue.py), so a message without one, or one that differs
    from it in VM, trigger or options, was not written by the intake."""
    if not row.get("Vm"):
        return f"no accepted request {request.request_id} in the ledger"
    differs = [
        name
        for name, recorded, sent in (
            ("vm", row.get("Vm"), str(request.vm)),
            ("trigger", row.get("Trigger"), request.trigger.value),
            ("options", json.loads(row.get("Options") or "{}"), request.options.to_json()),
        )
        if recorded != sent
    ]
    return f"the message differs from the accepted request in {', '.join(differs)}" if differs else None


def _closed_by_reconciler(request: RemediationRequest, row: dict[str, Any], ledger: Ledger, dequeue_count: int) -> bool:
    """A delivery of a request the reconciler already closed: its outcome stands and nothing runs, but the
    delivery is recorded on the request row (`LateDeliveries`, `LateDeliveryAt`) and logged, never dropped
    silently. The reconciler waits until no copy of the message can arrive, so this should not happen; when it
    does (a clock far off, a message sent around the product), the row shows it."""
    if row.get(CLOSED_BY) != RECONCILER:
        return False
    count = int(row.get("LateDeliveries") or 0) + 1
    now = utcnow()
    note = (
        f"a delivery (dequeue count {dequeue_count}) arrived at {now.isoformat(timespec='seconds')} after the "
        "reconciler had closed the request; nothing was run and the recorded outcome stands"
    )
    ledger.note(request.request_id, LateDeliveries=count, LateDeliveryAt=now, LateDeliveryNote=note)
    telemetry.control_event("late delivery", request.request_id, note)
    log.warning("delivery after the reconciler closed the request", extra=_fields(request, dequeue_count))
    return True


def _close(request: RemediationRequest, ledger: Ledger, why: str, evidence: RestartEvidence | None) -> None:
    record = ledger.get(request.request_id)
    if record is None:
        ledger.record_accepted(request)
        record = ledger.get(request.request_id)
    if record is not None:
        close_abandoned(ledger, record, why, restart_evidence=evidence)


REQUEUED = "Requeued"  # when the poison path sent a started request back to the queue (once per request)


def _fields(request: RemediationRequest, dequeue_count: int) -> dict[str, object]:
    return {"vm": str(request.vm), "request_id": request.request_id, "dequeue_count": dequeue_count}


def _drop_unreadable(body: str, exc: Exception, ledger: Ledger) -> None:
    reason = exc.reason if isinstance(exc, RemediationError) else f"not JSON: {exc}"
    request_id = None
    try:
        data = json.loads(body)
        request_id = data.get("requestId") if isinstance(data, dict) else None
    except ValueError:
        pass
    if isinstance(request_id, str) and ledger.get(request_id) is not None:
        ledger.record_outcome(request_id, Outcome.FAILED, f"unreadable queue message: {reason}")
    log.error(
        "unreadable queue message dropped", extra={"reason": reason, "request_id": request_id, "body_start": body[:200]}
    )


def handle_poison(
    body: str,
    ledger: Ledger,
    dequeue_count: int = 1,
    max_dequeue_count: int = 1,
    restart_evidence: RestartEvidence | None = None,
    requeue: Callable[[str], object] | None = None,
) -> None:
    """A message the host gave up on. If its request still has no outcome (the worker died or timed out on the
    last delivery, so it could not record one), record it now from the journal and free the VM's lock.

    It must make progress while storage fails: on a failure it asks for a later delivery while it has
    deliveries left, and after that it lets the message go (logged); the reconciler closes the request once
    storage answers again. (The host gives a `-poison` queue no poison queue of its own: a failed delivery
    stays invisible for the host's receive timeout, 10 minutes, and comes back for as long as the message
    lives; azure-webjobs-sdk `QueueListenerFactory.CreatePoisonQueueReference`, `QueueProcessor`.)
    """
    try:
        request = RemediationRequest.from_message(json.loads(body))
    except (ValueError, PermanentError) as exc:
        _drop_unreadable(body, exc, ledger)
        return
    try:
        _close_poisoned(request, body, ledger, restart_evidence, requeue)
    except Exception:
        if dequeue_count < max_dequeue_count:
            raise  # the host retries the poison message later
        log.exception(
            "poisoned request left to the reconciler (the ledger did not answer)",
            extra={"vm": str(request.vm), "request_id": request.request_id},
        )


def _close_poisoned(
    request: RemediationRequest,
    body: str,
    ledger: Ledger,
    evidence: RestartEvidence | None,
    requeue: Callable[[str], object] | None,
) -> None:
    record = ledger.get(request.request_id)
    if record is not None and record.state == "done":
        ledger.complete_finish(record)  # the worker recorded the failure; finish what a crash may have left
        return
    expires = ledger.lease_expires(request.request_id)
    if expires is not None and expires > utcnow():
        # An execution still runs it (this copy met it on every delivery): ask again later; if that execution
        # dies, its lease runs out and this message finds the request to resume or close.
        raise ExecutionConflict(f"request {request.request_id} is still running elsewhere")
    if (
        record is not None
        and record.steps
        and requeue is not None
        and not ledger.request_fields(request.request_id, REQUEUED).get(REQUEUED)
    ):
        # Started, and its execution died with every copy of its message used up: resumed once from its
        # journal (a step with no recorded end is resolved from evidence, never simply repeated).
        ledger.note(request.request_id, **{REQUEUED: utcnow()})
        requeue(body)
        log.warning("a started request whose worker died was sent back once", extra=_fields(request, 0))
        return
    _close(
        request,
        ledger,
        "the request reached the poison queue without an outcome: its worker died or timed out on every delivery",
        evidence,
    )
