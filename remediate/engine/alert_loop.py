"""Close the loop on the alert: the Azure Monitor alert that started a request hears how it ended.

One alert can name several VMs (the common alert schema's `alertTargetIDs`, a log alert's dimensions), and
intake starts one request per VM. The alert is closed only when every request it started has a verified fix
(`remediated`), with a comment naming each request; until then each request that ends leaves it open (set to
Acknowledged: seen by the automation, not fixed) with a comment saying which VMs are fixed and which are not,
so the on-call person reads the verdict on the alert itself. The requests an alert started are read from the
alert's dedup keys (`alert:<alertId>:<vm>`, each naming its request). Of two requests that end at the same
moment, at least one reads the other's outcome (each writes its own before reading the others'), so the last
verified fix always closes the alert. Dry runs touch nothing, the alert included. What happened to the alert
is recorded on the request (`AlertState`, `AlertNote`); a failure to reach the Alerts Management API is
recorded there too and never changes the remediation's outcome.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from remediate.azure import alerts
from remediate.ledger import DONE, Ledger, _storage_errors
from remediate.model import Outcome, PermanentError, RemediationError, RemediationRequest, Trigger, VmId
from remediate.settings import Settings

if TYPE_CHECKING:
    from remediate.azure.clients import AzureClients
    from remediate.engine.workflow import WorkflowResult

log = logging.getLogger(__name__)
ALERT_KEY_PREFIX = "alert:"
SHOWN = 10  # VMs named one by one in a comment; the rest are counted (a comment holds at most 4,000 characters)


def alert_of(request: RemediationRequest) -> str | None:
    """The alert id intake put in the dedup key (`alert:<alertId>:<vm>`), for requests an alert started."""
    key = request.dedup_key or ""
    if request.trigger is not Trigger.ALERT or not key.startswith(ALERT_KEY_PREFIX):
        return None
    alert_id = key[len(ALERT_KEY_PREFIX) :].rsplit(":", 1)[0]
    return alert_id if alerts.parse_alert_id(alert_id) else None


@dataclass(frozen=True)
class Sibling:
    """Another request the same alert started, as the ledger has it now."""

    request_id: str
    vm: str
    state: str
    outcome: str | None

    @property
    def fixed(self) -> bool:
        return self.state == DONE and self.outcome == Outcome.REMEDIATED.value

    def describe(self) -> str:
        status = self.outcome if self.state == DONE else f"not finished ({self.state})"
        return f"{_vm_name(self.vm)} {status} (request {self.request_id})"


def siblings(ledger: Ledger, alert_id: str, request_id: str) -> list[Sibling]:
    """The other requests `alert_id` started, from its dedup keys; a key without a request (absorbed by a
    request already pending for the VM, or being written) started none."""
    prefix = f"{ALERT_KEY_PREFIX}{alert_id}:"
    # Key range [prefix, prefix with its last ':' raised to ';'): every key that starts with the prefix.
    with _storage_errors("read the requests an alert started"):
        rows = ledger.dedup.query_entities(
            "PartitionKey eq 'dedup' and Key ge @low and Key lt @high",
            parameters={"low": prefix, "high": prefix[:-1] + ";"},
            select=["RequestId"],
        )
        ids = sorted({str(row["RequestId"]) for row in rows if row.get("RequestId")} - {request_id})
    found = []
    for other in ids:
        fields = ledger.request_fields(other, "Vm", "State", "Outcome")
        if fields.get("State"):
            found.append(Sibling(other, str(fields.get("Vm") or "?"), str(fields["State"]), fields.get("Outcome")))
    return found


def verdict(request: RemediationRequest, result: WorkflowResult, others: list[Sibling]) -> tuple[str, str]:
    """The alert's new state and its comment: closed only when this request and every other the alert started
    ended with a verified fix."""
    state, comment = comment_for(request, result)
    if not others:
        return state, comment
    fixed = [o for o in others if o.fixed]
    not_fixed = [o for o in others if not o.fixed]
    total = len(others) + 1
    if state == "Closed" and not not_fixed:
        return "Closed", f"{comment} Every VM this alert named is fixed and verified: {_listed(fixed)}."
    done = len(fixed) + (1 if state == "Closed" else 0)
    summary = f" {done} of {total} VMs this alert named are fixed and verified"
    summary += f" ({_listed(fixed)})" if fixed else ""
    summary += f"; not yet: {_listed(not_fixed)}." if not_fixed else "."
    if state == "Closed":  # this VM is fixed, others are not: the alert stays open
        head = comment.removesuffix(".")
        return "Acknowledged", f"{head}. {summary.strip()} The alert is left open until every VM is fixed."
    return "Acknowledged", comment + summary


def _listed(items: list[Sibling]) -> str:
    shown = ", ".join(item.describe() for item in items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _vm_name(vm: str) -> str:
    try:
        return VmId.parse(vm).name
    except (PermanentError, ValueError):
        return vm[:200]


def comment_for(request: RemediationRequest, result: WorkflowResult) -> tuple[str, str]:
    """The new state and the comment: closed only after a verified fix."""
    done = "; ".join(result.actions) or "no change"
    if result.outcome is Outcome.REMEDIATED:
        return "Closed", (
            f"rdp-remediate request {request.request_id} ({request.vm.name}): fixed and verified "
            f"({result.reason}). Done: {done}."
            f"{' The VM was restarted.' if result.rebooted else ''}"
        )
    return "Acknowledged", (
        f"rdp-remediate request {request.request_id} ({request.vm.name}) ended {result.outcome.value}: "
        f"{result.reason}. "
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
    try:
        state, comment = verdict(request, result, siblings(ledger, alert_id, request.request_id))
        reported = alerts.change_state(clients, alert_id, state, comment)
    except RemediationError as exc:
        log.warning("alert not updated", extra={"request_id": request.request_id, "reason": exc.reason})
        ledger.note(request.request_id, AlertState="not updated", AlertNote=exc.reason[:4000])
        return
    ledger.note(request.request_id, AlertState=reported, AlertNote=comment[:4000])
    log.info("alert updated", extra={"request_id": request.request_id, "alert_state": reported})
