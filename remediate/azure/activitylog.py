"""Was a restart accepted? The VM's Activity Log answers.

Azure records every `Microsoft.Compute/virtualMachines/restart/action` call in the subscription's Activity
Log with its caller, time, correlation id and status (`Started` when ARM received it, `Accepted` when Compute
took it (202), then `Succeeded` or `Failed`). A worker that died after sending a restart, or lost the
answer, asks the log instead of guessing: for the calls that carried its own correlation id, never for any
restart of the VM. Entries are "usually available within 3 to 20 minutes" (Microsoft Learn, "Azure Monitor
activity log", MicrosoftDocs/azure-monitor-docs articles/azure-monitor/platform/activity-log.md), so absence is
evidence only after that. Read with `azure-mgmt-monitor`'s `activity_logs.list` (REST:
`GET /subscriptions/{id}/providers/Microsoft.Insights/eventtypes/management/values` with a `$filter` on the
time window and the resource), authorised by `Microsoft.Insights/eventtypes/values/read`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from remediate.azure.errors import azure_errors
from remediate.model import VmId

if TYPE_CHECKING:
    from remediate.azure.clients import AzureClients

RESTART_ACTION = "microsoft.compute/virtualmachines/restart/action"
# Compute took the restart (202 Accepted), or the operation ended. `Started` alone only says ARM received the
# call: a refused call's `Failed` may still follow it, so it is neither acceptance nor refusal (unknown).
ACCEPTED_STATUSES = frozenset({"accepted", "succeeded"})


# The HTTP status an event's sub-status names: "Conflict (HTTP Status Code: 409)" (Microsoft Learn, "Azure
# Activity Log event schema", subStatus).
_HTTP_STATUS = re.compile(r"HTTP Status Code: (\d{3})")


@dataclass(frozen=True)
class RestartRecord:
    """One restart call as the Activity Log tells it (its events grouped by correlation id)."""

    correlation_id: str
    first_seen: dt.datetime
    statuses: tuple[str, ...]  # lower-case, in the order the log returned them
    caller: str
    http_statuses: tuple[int, ...] = ()  # the answers the sub-statuses name

    @property
    def accepted(self) -> bool:
        """Compute took the restart (its operation may have failed later: a failed restart may still have
        restarted the VM, so it counts as taken, never as refused)."""
        return bool(set(self.statuses) & ACCEPTED_STATUSES)

    @property
    def refused(self) -> bool:
        """The call was answered with a client error (4xx: throttled, in conflict, not allowed) and never
        accepted: nothing was done. A `Failed` with a 5xx (a gateway timeout after ARM forwarded the call) or
        `Started` alone says nothing about whether Compute acted."""
        return not self.accepted and "failed" in self.statuses and any(400 <= s < 500 for s in self.http_statuses)


def restarts_since(
    clients: AzureClients, vm: VmId, since: dt.datetime, until: dt.datetime, correlation_id: str
) -> list[RestartRecord]:
    """The restart calls for `vm` sent with our `correlation_id` that the Activity Log holds between `since`
    and `until`, oldest first. Another caller's restart (or an earlier one of ours) never counts."""
    # The documented filter patterns: a time window is required; `correlationId eq` narrows it to the calls
    # that carried our x-ms-correlation-request-id (activityLogs_API.json, the $filter description).
    query = (
        f"eventTimestamp ge '{_iso(since)}' and eventTimestamp le '{_iso(until)}' "
        f"and correlationId eq '{correlation_id}'"
    )
    select = "operationName,status,subStatus,eventTimestamp,correlationId,caller,resourceId"
    grouped: dict[str, list[tuple[dt.datetime, str, str, int | None]]] = {}
    with azure_errors(f"reading the Activity Log of {vm.name}"):
        for event in clients.monitor(vm.subscription).activity_logs.list(filter=query, select=select):
            operation = (event.operation_name.value if event.operation_name else "") or ""
            if operation.lower() != RESTART_ACTION:
                continue
            if (event.resource_id or "").lower().rstrip("/") != vm.key:
                continue
            status = ((event.status.value if event.status else "") or "").lower()
            when = event.event_timestamp or since
            if (event.correlation_id or "").lower() != correlation_id.lower():
                continue
            key = event.correlation_id or ""
            grouped.setdefault(key, []).append((when, status, event.caller or "", _http_status(event)))
    records = [
        RestartRecord(
            key,
            min(e[0] for e in events),
            tuple(e[1] for e in events),
            events[0][2],
            tuple(e[3] for e in events if e[3] is not None),
        )
        for key, events in grouped.items()
    ]
    return sorted(records, key=lambda r: r.first_seen)


def events_on(clients: AzureClients, vm: VmId, since: dt.datetime, until: dt.datetime) -> int:
    """How many events of any kind the Activity Log shows for `vm` between `since` and `until` (up to 50).

    An empty answer is not proof by itself: a caller without `Microsoft.Insights/eventtypes/values/read` at
    the subscription has been seen to get `200` with no events instead of `403` (Azure/azure-sdk-for-java
    issue 2097). The product's own Run Commands on the VM are write operations the log records, so a log that
    shows none of them is not one to believe about a restart either."""
    query = f"eventTimestamp ge '{_iso(since)}' and eventTimestamp le '{_iso(until)}' and resourceUri eq '{vm}'"
    seen = 0
    with azure_errors(f"reading the Activity Log of {vm.name}"):
        for _event in clients.monitor(vm.subscription).activity_logs.list(filter=query, select="operationName"):
            seen += 1
            if seen >= 50:
                break
    return seen


def _http_status(event: Any) -> int | None:
    sub = event.sub_status
    match = _HTTP_STATUS.search((sub.localized_value or sub.value or "") if sub is not None else "")
    return int(match.group(1)) if match else None


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
