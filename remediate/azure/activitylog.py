"""Was a restart accepted? The VM's Activity Log answers.

Azure records every `Microsoft.Compute/virtualMachines/restart/action` call in the subscription's Activity
Log with its caller, time, correlation id and status (`Started` when ARM received it, `Accepted` when Compute
took it (202), then `Succeeded` or `Failed`). A worker that died after sending a restart, or lost the
answer, asks the log instead of guessing. Read with `azure-mgmt-monitor`'s `activity_logs.list` (REST:
`GET /subscriptions/{id}/providers/Microsoft.Insights/eventtypes/management/values` with a `$filter` on the
time window and the resource), authorised by `Microsoft.Insights/eventtypes/values/read`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from remediate.azure.errors import azure_errors
from remediate.model import VmId

if TYPE_CHECKING:
    from remediate.azure.clients import AzureClients

RESTART_ACTION = "microsoft.compute/virtualmachines/restart/action"
# `Started` alone means ARM received the call and has not said how it ended: it may be running now, so it
# counts as accepted (a second restart of a production machine is the worse error).
ACCEPTED_STATUSES = frozenset({"started", "accepted", "succeeded"})


@dataclass(frozen=True)
class RestartRecord:
    """One restart call as the Activity Log tells it (its events grouped by correlation id)."""

    correlation_id: str
    first_seen: dt.datetime
    statuses: tuple[str, ...]  # lower-case, in the order the log returned them
    caller: str

    @property
    def accepted(self) -> bool:
        """Compute took the restart and it has not failed: a call that ended `Failed` (refused, or an operation
        that failed before touching the VM) restarted nothing."""
        return "failed" not in self.statuses and bool(set(self.statuses) & ACCEPTED_STATUSES)


def restarts_since(clients: AzureClients, vm: VmId, since: dt.datetime, until: dt.datetime) -> list[RestartRecord]:
    """The restart calls for `vm` the Activity Log holds between `since` and `until`, oldest first."""
    # The documented filter patterns: a time window is required; `resourceUri eq` narrows it to one resource.
    query = f"eventTimestamp ge '{_iso(since)}' and eventTimestamp le '{_iso(until)}' and resourceUri eq '{vm}'"
    select = "operationName,status,eventTimestamp,correlationId,caller,resourceId"
    grouped: dict[str, list[tuple[dt.datetime, str, str]]] = {}
    with azure_errors(f"reading the Activity Log of {vm.name}"):
        for event in clients.monitor(vm.subscription).activity_logs.list(filter=query, select=select):
            operation = (event.operation_name.value if event.operation_name else "") or ""
            if operation.lower() != RESTART_ACTION:
                continue
            if (event.resource_id or "").lower().rstrip("/") != vm.key:
                continue
            status = ((event.status.value if event.status else "") or "").lower()
            when = event.event_timestamp or since
            key = event.correlation_id or event.event_data_id or str(when)
            grouped.setdefault(key, []).append((when, status, event.caller or ""))
    records = [
        RestartRecord(key, min(e[0] for e in events), tuple(e[1] for e in events), events[0][2])
        for key, events in grouped.items()
    ]
    return sorted(records, key=lambda r: r.first_seen)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
