"""The queue worker: one message, one VM, one workflow. What the queue trigger calls."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from remediate import telemetry
from remediate.engine.runner import remediate
from remediate.engine.workflow import WorkflowResult
from remediate.ledger import Ledger
from remediate.model import Outcome, PermanentError, RemediationError, RemediationRequest
from remediate.settings import Settings

if TYPE_CHECKING:
    from remediate.azure.clients import AzureClients

log = logging.getLogger(__name__)


def handle_message(
    body: str, dequeue_count: int, settings: Settings, ledger: Ledger, clients: AzureClients
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
    last_delivery = dequeue_count >= settings.max_dequeue_count
    try:
        return remediate(
            request, settings, ledger, clients, retry_later=not last_delivery, trace_context=telemetry.carrier_of(data)
        )
    except Exception as exc:
        if last_delivery:
            # Record before the host moves the message to the poison queue: nothing accepted is lost silently.
            reason = exc.reason if isinstance(exc, RemediationError) else f"{type(exc).__name__}: {exc}"
            try:
                ledger.record_outcome(
                    request.request_id, Outcome.FAILED, f"gave up after {dequeue_count} deliveries: {reason}"
                )
                # The VM may have been changed or restarted before the failure: start its cooldown anyway.
                ledger.record_finished(request.vm, Outcome.FAILED, changed=True)
            finally:
                ledger.release(request.vm, request.request_id)
        log.warning(
            "delivery failed",
            extra={
                "vm": str(request.vm),
                "request_id": request.request_id,
                "dequeue_count": dequeue_count,
                "last_delivery": last_delivery,
            },
        )
        raise


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


def handle_poison(body: str, ledger: Ledger) -> None:
    """A message the host gave up on. If its request still has no outcome (the worker died or timed out on the
    last delivery, so it could not record one), record it now and free the VM's lock.
    """
    try:
        request = RemediationRequest.from_message(json.loads(body))
    except (ValueError, PermanentError) as exc:
        _drop_unreadable(body, exc, ledger)
        return
    record = ledger.get(request.request_id)
    if record is not None and record.outcome is not None:
        return  # the worker recorded the failure before the host poisoned the message
    if record is None:
        ledger.record_accepted(request)
    ledger.record_outcome(
        request.request_id,
        Outcome.FAILED,
        "the request reached the poison queue without an outcome: its worker died or timed out on every delivery",
    )
    ledger.record_finished(request.vm, Outcome.FAILED, changed=True)
    ledger.release(request.vm, request.request_id)
    log.error("poisoned request closed", extra={"vm": str(request.vm), "request_id": request.request_id})
