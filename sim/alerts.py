"""Azure Monitor alerts as the Alerts Management API serves them: fired alerts and their state changes.

Source: azure-rest-api-specs, specification/alertsmanagement/resource-manager/Microsoft.AlertsManagement/
AlertsManagement/preview/2019-05-05-preview/examples/Alerts_ChangeState.json:
`POST /subscriptions/{subscriptionId}/providers/Microsoft.AlertsManagement/alerts/{alertId}/changestate
?api-version=2019-05-05-preview&newState=Acknowledged` with body `{"comment": "..."}` answers 200 with the alert
(`id`, `type` "Microsoft.AlertsManagement/alerts", `name`, `properties.essentials` with the fields the example shows,
`properties.egressConfig`, `properties.context`). The alert is subscription-scoped: there is no resource-group
form of the path, so the emulator serves none (an unknown route is a 404 there as here). The same
operation's `newState` is one of New, Acknowledged, Closed (AlertsManagement.json, parameter `newState`), and
an error answers with the `errorResponse` definition: `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim.server import Call, Emulator
    from sim.transport import Response

STATES = ("New", "Acknowledged", "Closed")
API_VERSIONS = ("2019-05-05-preview", "2025-05-25-preview")


@dataclass
class FiredAlert:
    alert_id: str  # the full id, as the common alert schema's `essentials.alertId` carries it
    target: str
    state: str = "New"
    fired: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    changes: list[tuple[str, str]] = field(default_factory=list)  # (new state, comment), oldest first


class AlertStore:
    """The alerts the emulator's Azure Monitor has fired (tests fire them beside the webhook they post)."""

    def __init__(self) -> None:
        self._alerts: dict[str, FiredAlert] = {}
        self._lock = threading.Lock()

    def fire(self, alert_id: str, target: str) -> FiredAlert:
        with self._lock:
            return self._alerts.setdefault(alert_id.lower(), FiredAlert(alert_id, target))

    def get(self, alert_id: str) -> FiredAlert | None:
        with self._lock:
            return self._alerts.get(alert_id.lower())

    def change(self, alert_id: str, state: str, comment: str) -> FiredAlert | None:
        with self._lock:
            alert = self._alerts.get(alert_id.lower())
            if alert is not None:
                alert.state = state
                alert.changes.append((state, comment))
            return alert


def change_state(emulator: Emulator, call: Call, groups: tuple[str, ...]) -> Response:
    from sim.server import ArmError, json_response

    if call.api_version not in API_VERSIONS:
        raise ArmError(400, "InvalidApiVersionParameter", f"The api-version '{call.api_version}' is invalid.")
    new_state = call.query.get("newState", "")
    if new_state not in STATES:
        raise ArmError(400, "InvalidParameter", f"newState must be one of {', '.join(STATES)}, got '{new_state}'.")
    body = call.json_body()
    comment = body.get("comment", "") if isinstance(body, dict) else ""
    if not isinstance(comment, str):
        raise ArmError(400, "InvalidRequestContent", "comment must be a string.")
    alert_id = f"/subscriptions/{groups[0]}/providers/Microsoft.AlertsManagement/alerts/{groups[1]}"
    alert = emulator.alerts.change(alert_id, new_state, comment)
    if alert is None:
        raise ArmError(404, "ResourceNotFound", f"The alert '{groups[1]}' could not be found.")
    return json_response(200, _alert_body(alert))


def get_alert(emulator: Emulator, call: Call, groups: tuple[str, ...]) -> Response:
    """`GET /subscriptions/{id}/providers/Microsoft.AlertsManagement/alerts/{alertId}` (the specification's
    `Alerts_GetById` operation): the alert in the same shape as the changestate answer, or 404."""
    from sim.server import ArmError, json_response

    if call.api_version not in API_VERSIONS:
        raise ArmError(400, "InvalidApiVersionParameter", f"The api-version '{call.api_version}' is invalid.")
    alert = emulator.alerts.get(f"/subscriptions/{groups[0]}/providers/Microsoft.AlertsManagement/alerts/{groups[1]}")
    if alert is None:
        raise ArmError(404, "ResourceNotFound", f"The alert '{groups[1]}' could not be found.")
    return json_response(200, _alert_body(alert))


def _alert_body(alert: FiredAlert) -> dict[str, Any]:
    """The alert as Alerts_ChangeState.json's 200 answer shows it: every essentials field of the example, filled
    in from the fired alert (the emulator fires metric alerts on VMs from the platform's monitor service)."""
    target = alert.target.strip("/").split("/")
    now = dt.datetime.now(dt.UTC).isoformat()
    logs = "/microsoft.operationalinsights/workspaces/" in alert.target.lower()  # a log search alert's target
    return {
        "properties": {
            "essentials": {
                "severity": "Sev1",
                "signalType": "Log" if logs else "Metric",
                "alertState": alert.state,
                "monitorCondition": "Fired",
                "monitorService": "Log Alerts V2" if logs else "Platform",
                "targetResource": alert.target,
                "targetResourceName": target[-1],
                "targetResourceGroup": target[3] if len(target) > 3 else "",
                "targetResourceType": target[-2] if len(target) > 1 else "",
                "sourceCreatedId": alert.alert_id.rsplit("/", 1)[-1],
                "smartGroupId": "",
                "smartGroupingReason": "",
                "alertRule": "rdp-remediate test alert",
                "startDateTime": alert.fired.isoformat(),
                "lastModifiedDateTime": now,
                "lastModifiedUserName": "System",
                "actionStatus": {"isSuppressed": False},
                "description": "",
            },
            "egressConfig": {},
            "context": {},
        },
        "id": alert.alert_id,
        "type": "Microsoft.AlertsManagement/alerts",
        "name": "rdp-remediate test alert",
    }
