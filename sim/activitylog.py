"""The subscription's Activity Log, as far as the product reads it: restart and Run Command calls on VMs.

Sources:
* REST: `GET /subscriptions/{id}/providers/Microsoft.Insights/eventtypes/management/values?api-version=
  2015-04-01&$filter=...&$select=...` (azure-rest-api-specs, specification/monitor/resource-manager/
  Microsoft.Insights/stable/2015-04-01/activityLogs_API.json; Microsoft Learn, "Retrieve activity log data
  using Azure monitor REST API").
* The answer's shape: `{"value": [EventData...], "nextLink"}` with `authorization`, `caller`, `correlationId`,
  `eventDataId`, `eventName`, `id`, `level`, `operationId`, `operationName`, `resourceGroupName`,
  `resourceProviderName`, `status`, `subStatus`, `eventTimestamp`, `submissionTimestamp`, `subscriptionId`
  (the same specification's examples/GetActivityLogsFiltered.json and GetActivityLogsFilteredAndSelected.json).
* The `$filter` is required and must start with `eventTimestamp ge '...'`; the documented patterns narrow by
  `resourceGroupName eq`, `resourceUri eq`, `resourceProvider eq` or `correlationId eq` (activityLogs_API.json,
  the `$filter` parameter's description). Anything else is refused with 400, as Azure does.
* An asynchronous action (202) is logged as a `BeginRequest` with status `Started`, then an `EndRequest` with
  `Accepted` (subStatus "Accepted (HTTP Status Code: 202)"); a refused one ends `Failed` with its HTTP status
  (Microsoft Learn, "Azure Activity Log event schema": status values Started, In Progress, Succeeded, Failed,
  Active, Resolved; subStatus carries the HTTP status). When the operation itself ends, one more event with the
  same correlation id says `Succeeded` or `Failed` (same article).
* The correlation id is the caller's `x-ms-correlation-request-id` when it sent one (a caller-specified value
  ARM keeps for the whole operation: Azure/azure-resource-manager-rpc, v1.0/common-api-details.md, "Client
  Request Headers"); otherwise a new GUID.
* Entries lag: "usually available ... within 3 to 20 minutes" (Microsoft Learn, "Azure Monitor activity log",
  MicrosoftDocs/azure-monitor-docs articles/azure-monitor/platform/activity-log.md). Each event here becomes
  visible `lag_seconds` after it happened, and its `submissionTimestamp` (when the log received it) is that much
  later than its `eventTimestamp`; a query made before then does not show it.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
import uuid
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

# A managed identity's object id stands in the `caller` field (the example shows a user principal name).
CALLER = "6b8c6f7e-0000-4000-8000-00000000ca11"
_CLAUSE = re.compile(r"^\s*(\w+)\s+(eq|ge|le)\s+'([^']*)'\s*$", re.IGNORECASE)
_NARROWING = {"resourcegroupname", "resourceuri", "resourceprovider", "correlationid"}


class FilterError(ValueError):
    """A `$filter` outside the documented patterns: answered 400 BadRequest."""


# The lag in real seconds before the emulator's time scale: inside the documented 3 to 20 minutes.
DEFAULT_LAG_SECONDS = 180.0


class ActivityLog:
    def __init__(self, lag_seconds: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        self.lag_seconds = lag_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._running: list[tuple[ActionRecord, Any]] = []  # accepted actions whose operation has not ended

    def action(
        self, resource_id: str, subscription: str, group: str, operation: str, correlation_id: str | None = None
    ) -> ActionRecord:
        """Log the start of an action call; the returned record logs how it ended."""
        record = ActionRecord(self, resource_id, subscription, group, operation, correlation_id)
        record.log("BeginRequest", "Started", "")
        return record

    def add(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._events.append(event)

    def follow(self, record: ActionRecord, operation: Any) -> None:
        """Log `operation`'s end (its `status` once `done`) under `record`'s correlation id when it comes."""
        with self._lock:
            self._running.append((record, operation))

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            running, self._running = self._running, []
        for record, operation in running:
            if not operation.done:
                with self._lock:
                    self._running.append((record, operation))
                continue
            ended = dt.datetime.fromtimestamp(operation.ends, dt.UTC)
            if operation.status == "Succeeded":
                record.log("EndRequest", "Succeeded", "OK (HTTP Status Code: 200)", at=ended)
            else:
                record.log("EndRequest", "Failed", "", at=ended)
        with self._lock:
            return list(self._events)

    def events_of(self, operation: str) -> list[dict[str, Any]]:
        """The events of one operation (e.g. `Microsoft.Compute/virtualMachines/restart/action`)."""
        return [e for e in self.events() if e["operationName"]["value"].lower() == operation.lower()]

    def query(self, subscription: str, filter_text: str | None, select: str | None) -> dict[str, Any]:
        start, end, narrowing = _parse(filter_text)
        chosen = []
        visible = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        for event in self.events():
            if _stamp(event["submissionTimestamp"]) > visible:
                continue  # not in the log yet
            if event["subscriptionId"].lower() != subscription.lower():
                continue
            when = _stamp(event["eventTimestamp"])
            if when < start or (end is not None and when > end):
                continue
            if narrowing is not None and not _narrowed(event, *narrowing):
                continue
            chosen.append(event)
        chosen.sort(key=lambda e: e["eventTimestamp"], reverse=True)  # the service answers newest first
        if select:
            names = {name.strip() for name in select.split(",") if name.strip()}
            chosen = [{k: v for k, v in event.items() if k in names} for event in chosen]
        return {"value": chosen}


class ActionRecord:
    def __init__(
        self,
        log: ActivityLog,
        resource_id: str,
        subscription: str,
        group: str,
        operation: str,
        correlation_id: str | None = None,
    ) -> None:
        self._log = log
        self.resource_id, self.subscription, self.group, self.operation = resource_id, subscription, group, operation
        self.correlation_id = correlation_id or str(uuid.uuid4())

    def accepted(self) -> None:
        self.log("EndRequest", "Accepted", "Accepted (HTTP Status Code: 202)")

    def failed(self, http_status: int) -> None:
        # The sub-status names the answer as "<reason phrase> (HTTP Status Code: <status>)", as for "Accepted
        # (HTTP Status Code: 202)" (Microsoft Learn, "Azure Activity Log event schema", subStatus).
        phrase = HTTPStatus(http_status).phrase.replace(" ", "")
        self.log("EndRequest", "Failed", f"{phrase} (HTTP Status Code: {http_status})")

    def log(self, event_name: str, status: str, sub_status: str, at: dt.datetime | None = None) -> None:
        now = at or dt.datetime.now(dt.UTC)
        event_id = str(uuid.uuid4())
        stamp = _iso(now)
        submitted = _iso(now + dt.timedelta(seconds=self._log.lag_seconds))
        self._log.add(
            {
                "authorization": {"action": self.operation, "scope": self.resource_id},
                "caller": CALLER,
                "category": {"value": "Administrative", "localizedValue": "Administrative"},
                "correlationId": self.correlation_id,
                "description": "",
                "eventDataId": event_id,
                "eventName": {"value": event_name, "localizedValue": event_name},
                "id": f"{self.resource_id}/events/{event_id}/ticks/{int(now.timestamp() * 10**7)}",
                "level": "Informational" if status != "Failed" else "Error",
                "operationId": self.correlation_id,
                "operationName": {"value": self.operation, "localizedValue": self.operation},
                "resourceGroupName": self.group,
                "resourceProviderName": {"value": "Microsoft.Compute", "localizedValue": "Microsoft.Compute"},
                "resourceId": self.resource_id,
                "status": {"value": status, "localizedValue": status},
                "subStatus": {"value": sub_status.split(" ", maxsplit=1)[0], "localizedValue": sub_status},
                "eventTimestamp": stamp,
                "submissionTimestamp": submitted,
                "subscriptionId": self.subscription,
            }
        )


def _iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def _stamp(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")[:26] + "+00:00")


def _parse(filter_text: str | None) -> tuple[dt.datetime, dt.datetime | None, tuple[str, str] | None]:
    if not filter_text:
        raise FilterError("The $filter query parameter is required and must include eventTimestamp ge.")
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    narrowing: tuple[str, str] | None = None
    for clause in re.split(r"\s+and\s+", filter_text.strip(), flags=re.IGNORECASE):
        match = _CLAUSE.match(clause)
        if match is None:
            raise FilterError(f"The $filter clause '{clause}' is not supported.")
        name, op, value = match.group(1).lower(), match.group(2).lower(), match.group(3)
        if name == "eventtimestamp" and op in ("ge", "le"):
            try:
                moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise FilterError(f"The time '{value}' in $filter is not a valid date.") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
            start, end = (moment, end) if op == "ge" else (start, moment)
        elif name in _NARROWING and op == "eq" and narrowing is None:
            narrowing = (name, value)
        else:
            raise FilterError(f"The $filter clause '{clause}' is not supported.")
    if start is None:
        raise FilterError("The $filter must include eventTimestamp ge '<start time>'.")
    return start, end, narrowing


def _narrowed(event: dict[str, Any], name: str, value: str) -> bool:
    wanted = value.lower().rstrip("/")
    if name == "resourceuri":
        return bool(event["resourceId"].lower().rstrip("/") == wanted)
    if name == "resourcegroupname":
        return bool(event["resourceGroupName"].lower() == wanted)
    if name == "resourceprovider":
        return bool(event["resourceProviderName"]["value"].lower() == wanted)
    return bool(event["correlationId"].lower() == wanted)
