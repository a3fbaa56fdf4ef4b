"""Before acting on an alert: is it one Azure Monitor raised, and about this VM?

The alert route takes only a function key, which the action group holds and anyone who may read the action group
can see. So a posted alert is read back through Alerts Management before the worker's first call to the VM: an
alert Azure Monitor has no record of, or one whose target is another VM, runs nothing and ends `skipped` with that
reason. A log search alert targets its workspace (the VM is a dimension the alert object does not carry), so for
it only the alert's existence is checked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from remediate.azure.alerts import get_alert
from remediate.engine.alert_loop import alert_of
from remediate.model import PermanentError, Trigger, VmId

if TYPE_CHECKING:
    from remediate.azure.clients import AzureClients
    from remediate.model import RemediationRequest

_VM_TYPE = "/providers/microsoft.compute/virtualmachines/"


def alert_refusal(request: RemediationRequest, clients: AzureClients) -> str | None:
    """Why the alert behind `request` must not be acted on (None: it may, or the request is not an alert's).
    Raises the classified error when Alerts Management cannot answer (the delivery is retried)."""
    if request.trigger is not Trigger.ALERT:
        return None
    alert_id = alert_of(request)
    if alert_id is None:
        return (
            "the alert names no Alerts Management id (/subscriptions/ID/providers/Microsoft.AlertsManagement/"
            "alerts/ID), so it cannot be read back: not acted on"
        )
    essentials = get_alert(clients, alert_id)
    if essentials is None:
        return f"Azure Monitor has no alert {alert_id}: an alert it did not raise is not acted on"
    target = str(essentials.get("targetResource") or "")
    if _VM_TYPE in target.lower() and _key(target) != request.vm.key:
        return f"alert {alert_id} is about {target[:300]}, not this VM: not acted on"
    return None


def _key(resource_id: str) -> str:
    try:
        return VmId.parse(resource_id).key
    except PermanentError:
        return resource_id.lower()
