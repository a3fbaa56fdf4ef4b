"""The Alerts Management API: read back the Azure Monitor alert that started a request, and close (or comment on)
it when the request ends.

`GET {alertId}?api-version=2019-05-05-preview` answers the alert (`Alerts_GetById` in the same specification;
the object's shape is the one Alerts_ChangeState.json shows: `properties.essentials.targetResource`, ...).

`POST {alertId}/changestate?api-version=2019-05-05-preview&newState=Closed` with `{"comment": "..."}`, where
`alertId` is the common alert schema's `essentials.alertId`
(`/subscriptions/{id}/providers/Microsoft.AlertsManagement/alerts/{guid}`). Source: azure-rest-api-specs,
specification/alertsmanagement/.../AlertsManagement/preview/2019-05-05-preview/examples/Alerts_ChangeState.json.
The call goes through the Compute client's pipeline: the same credential, retry and loopback policies.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from remediate.azure.errors import azure_errors

if TYPE_CHECKING:
    from remediate.azure.clients import AzureClients

API_VERSION = "2019-05-05-preview"
_ALERT_ID = re.compile(
    r"^/subscriptions/(?P<sub>[0-9a-fA-F-]{36})/providers/microsoft\.alertsmanagement/alerts/"
    r"(?P<id>[0-9a-zA-Z-]{1,64})$",
    re.IGNORECASE,
)


def parse_alert_id(alert_id: str) -> tuple[str, str] | None:
    """(subscription, alert guid) of a well-formed alert id; None for anything else (never sent anywhere)."""
    match = _ALERT_ID.match(alert_id.strip())
    return (match["sub"].lower(), match["id"]) if match else None


def change_state(clients: AzureClients, alert_id: str, new_state: str, comment: str) -> str:
    """Set the alert's state with a comment; returns the state Azure reports. Raises the classified error."""
    from azure.core.rest import HttpRequest

    parsed = parse_alert_id(alert_id)
    if parsed is None:
        raise ValueError(f"not an Alerts Management alert id: {alert_id[:200]!r}")
    subscription, guid = parsed
    request = HttpRequest(
        "POST",
        f"/subscriptions/{subscription}/providers/Microsoft.AlertsManagement/alerts/{guid}/changestate",
        params={"api-version": API_VERSION, "newState": new_state},
        json={"comment": comment[:4000]},
    )
    with azure_errors(f"set alert {guid} to {new_state}"):
        response = clients.compute(subscription).send_request(request)
        response.raise_for_status()
        body = response.json()
    return str(body.get("properties", {}).get("essentials", {}).get("alertState", new_state))


def get_alert(clients: AzureClients, alert_id: str) -> dict[str, Any] | None:
    """The alert's `essentials`, or None when Azure Monitor has no such alert (404). Raises the classified error
    otherwise (a 403 names the missing `Microsoft.AlertsManagement/alerts/read`)."""
    from azure.core.rest import HttpRequest

    parsed = parse_alert_id(alert_id)
    if parsed is None:
        return None
    subscription, guid = parsed
    request = HttpRequest(
        "GET",
        f"/subscriptions/{subscription}/providers/Microsoft.AlertsManagement/alerts/{guid}",
        params={"api-version": API_VERSION},
    )
    with azure_errors(f"read alert {guid}"):
        response = clients.compute(subscription).send_request(request)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        body = response.json()
    essentials = body.get("properties", {}).get("essentials", {}) if isinstance(body, dict) else {}
    return essentials if isinstance(essentials, dict) else {}
