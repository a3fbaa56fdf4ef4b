"""Close the loop on the alert: the Azure Monitor alert that started a request hears how it ended.

After a verified fix (`remediated`) the alert is closed with a comment naming the request and what was done.
After any other outcome it stays open (set to Acknowledged: seen by the automation, not fixed) with a comment
saying why, so the on-call person reads the verdict on the alert itself. Dry runs touch nothing, the alert
included. What happened to the alert is recorded on the request (`AlertState`, `AlertNote`); a failure to reach
the Alerts Management API is recorded there too and never changes the remediation's outcome.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from remediate.azure import alerts
from remediate.ledger import Ledger
from remediate.model import Outcome, RemediationError, RemediationRequest, Trigger
from remediate.settings import Settings

if TYPE_CHECKING:
    from remediate.azure.clients import AzureClients
    from remediate.engine.workflow import WorkflowResult

log = logging.getLogger(__name__)
ALERT_KEY_PREFIX = "alert:"


def alert_of(request: RemediationRequest) -> str | None:
    """The alert id intake put in the dedup key (`alert:<alertId>:<vm>`), for requests an alert started."""
    key = request.dedup_key or ""
    if request.trigger is not Trigger.ALERT or not key.startswith(ALERT_KEY_PREFIX):
        return None
    alert_id = key[len(ALERT_KEY_PREFIX) :].rsplit(":", 1)[0]
    return alert_id if alerts.parse_alert_id(alert_id) else None


def comment_for(request: RemediationRequest, result: WorkflowResult) -> tuple[str, str]:
    """The new state and the comment: closed only after a verified fix."""
    done = "; ".join(result.actions) or "no change"
    if result.outcome is Outcome.REMEDIATED:
        return "Closed", (
            f"rdp-remediate request {request.request_id}: fixed and verified ({result.reason}). Done: {done}."
            f"{' The VM was restarted.' if result.rebooted else ''}"
        )
    return "Acknowledged", (
        f"rdp-remediate request {request.request_id} ended {result.outcome.value}: {result.reason}. "
        f"Done: {done}. The alert is left open for a person."
    )


def close_the_loop(
    request: RemediationRequest, result: WorkflowResult, settings: Settings, ledger: Ledger, clients: AzureClients
) -> None:
    alert_id = alert_of(request)
    if alert_id is None or request.options.dry_run or settings.dry_run:
        return
    if ledger.request_fields(request.request_id, "AlertState").get("AlertState"):
        return  # a redelivery of a finished request: the alert already heard
    state, comment = comment_for(request, result)
    try:
        reported = alerts.change_state(clients, alert_id, state, comment)
    except RemediationError as exc:
        log.warning("alert not updated", extra={"request_id": request.request_id, "reason": exc.reason})
        ledger.note(request.request_id, AlertState="not updated", AlertNote=exc.reason[:4000])
        return
    ledger.note(request.request_id, AlertState=reported, AlertNote=comment[:4000])
    log.info("alert updated", extra={"request_id": request.request_id, "alert_state": reported})
