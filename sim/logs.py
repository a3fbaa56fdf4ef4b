"""Log Analytics, as far as the product uses it: `POST /v1/workspaces/{id}/query`.

The workspace holds the System-log events of every simulated guest (`Guest.events`: event id and time).
Like `sim.graph`, it answers only the query texts the product ships (`remediate/azure/queries/rdp_events.kql`,
and `rdp_events_vm.kql`, the same rows for one `_ResourceId`, compared without case as KQL's =~ does) and rejects
anything else with 400 `BadArgumentError`. The request's `timespan` (ISO 8601 interval or
duration, as `azure-monitor-query` sends it) bounds the events; rows are summarised per resource, computer
and event id, with `_ResourceId` lower-cased as Log Analytics stores it.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sim.fleet import Fleet, utcnow
from sim.graph import Rejected, Response, error, match_template

WORKSPACE_ID = "11111111-2222-4333-8444-555555555555"  # the emulator's only workspace (its customer id)
QUERY = "rdp_events"
QUERY_VM = "rdp_events_vm"  # the same query scoped to one VM: `| where _ResourceId =~ '{vm}'`
# The sources the shipped query filters on, per event id (what a real Windows guest logs them under).
EVENT_SOURCES = {
    **dict.fromkeys((1051, 1052, 1055, 1057, 1058, 1059, 1063, 1064, 1065), "TermService"),
    **dict.fromkeys((36870, 36871, 36872, 36874, 36888), "Schannel"),
}
FAILED_LOGON = 4625  # Security log; the guest keeps the last hour's count by logon type (10 and 3 are queried)

COLUMNS = [
    {"name": "_ResourceId", "type": "string"},
    {"name": "Computer", "type": "string"},
    {"name": "EventID", "type": "int"},
    {"name": "Count", "type": "long"},
    {"name": "LastSeen", "type": "datetime"},
]

_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def handle_logs_query(
    fleet: Fleet,
    workspace_id: str,
    body: dict[str, Any],
    *,
    expected_workspace_id: str = WORKSPACE_ID,
    now: dt.datetime | None = None,
    partial_error: bool = False,
    foreign_rows: bool = False,
) -> Response:
    """Answer a workspace query. `workspace_id` is the id in the request path.

    `foreign_rows`: the workspace also holds machines that are not Azure VMs (a blank `_ResourceId` for an
    on-premises agent, an Arc machine's id), as a workspace collecting from anything does. `partial_error`: the
    answer carries `error` (code PartialError) beside its tables, as the query API does when a query ran into a
    limit (azure-rest-api-specs OperationalInsights data-plane; azure-monitor-query reports it as PARTIAL).
    """
    if workspace_id.lower() != expected_workspace_id.lower():
        return error(404, "WorkspaceNotFoundError", f"Workspace {workspace_id} not found.")
    try:
        window = _check_request(workspace_id, body, now or utcnow())
    except Rejected as rejected:
        return rejected.response
    rows = _rows(fleet, *window) + (_foreign_rows(*window) if foreign_rows else [])
    scoped = match_template(QUERY_VM, str(body.get("query")))
    if scoped is not None:
        rows = [row for row in rows if str(row[0]).lower() == scoped["vm"].lower()]
    answer: dict[str, Any] = {"tables": [{"name": "PrimaryResult", "columns": COLUMNS, "rows": rows}]}
    if partial_error:
        answer["error"] = {
            "code": "PartialError",
            "message": "There were some errors when processing your query.",
            "details": [
                {
                    "code": "EngineError",
                    "message": "Something went wrong processing your query on the server.",
                    "innererror": {"code": "-2133196797", "message": "Query result set has exceeded the limit."},
                }
            ],
        }
    return 200, answer


def _foreign_rows(start: dt.datetime | None, end: dt.datetime | None) -> list[list[Any]]:
    """Machines reporting to the workspace that are not Azure VMs, each with an event the query selects."""
    seen = (end or utcnow()) - dt.timedelta(minutes=30)
    if start is not None and seen < start:
        return []
    arc = (
        "/subscriptions/00000000-0000-4000-8000-000000000001/resourcegroups/rg-onprem"
        "/providers/microsoft.hybridcompute/machines/arc-srv01"
    )
    return [["", "ONPREM-DC01.contoso.local", 1058, 3, _iso(seen)], [arc, "ARC-SRV01", 36870, 1, _iso(seen)]]


def _check_request(workspace_id: str, body: object, now: dt.datetime) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The time window of a well-formed request for the shipped query; Rejected otherwise."""
    if not isinstance(body, dict):
        raise Rejected(400, "BadArgumentError", "The request body must be a JSON object.")
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise Rejected(400, "BadArgumentError", "The request had some invalid properties: 'query' is required.")
    others = body.get("workspaces") or []
    if not isinstance(others, list) or any(str(w).lower() != workspace_id.lower() for w in others):
        raise Rejected(400, "BadArgumentError", "Cross-workspace queries are not emulated.")
    if match_template(QUERY, query) is None and match_template(QUERY_VM, query) is None:
        raise Rejected(
            400,
            "BadArgumentError",
            "The query is not supported by the emulator: only the shipped rdp_events(_vm).kql are answered.",
        )
    window = parse_timespan(body.get("timespan"), now)
    if window is None:
        raise Rejected(400, "BadArgumentError", f"Invalid timespan {body.get('timespan')!r}.")
    return window


def _rows(fleet: Fleet, start: dt.datetime | None, end: dt.datetime | None) -> list[list[Any]]:
    summary: dict[tuple[str, str, int], tuple[int, dt.datetime]] = {}
    with fleet.lock:
        for vm in fleet:
            for event_id, time in vm.guest.events:
                if event_id not in EVENT_SOURCES or (start and time < start) or (end and time > end):
                    continue
                key = (vm.resource_id.lower(), vm.guest.computer_name, event_id)
                count, last = summary.get(key, (0, time))
                summary[key] = (count + 1, max(last, time))
            failed = sum(n for logon_type, n in vm.guest.failed_logons.items() if logon_type in (10, 3))
            # The guest counts the last hour: a window that overlaps it sees them all, last at its end.
            now = utcnow()
            if failed and (end is None or end > now - dt.timedelta(hours=1)) and (start is None or start < now):
                last_seen = min(end, now) if end is not None else now
                summary[(vm.resource_id.lower(), vm.guest.computer_name, FAILED_LOGON)] = (failed, last_seen)
    return [
        [resource_id, computer, event_id, count, _iso(last)]
        for (resource_id, computer, event_id), (count, last) in sorted(summary.items())
    ]


def _iso(time: dt.datetime) -> str:
    """Seven fractional digits, as Log Analytics writes datetimes (.NET ticks): `...:05.1234567Z`."""
    utc = time.astimezone(dt.UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S.%f}{utc.microsecond % 7 + 1}Z"


def parse_timespan(value: object, now: dt.datetime) -> tuple[dt.datetime | None, dt.datetime | None] | None:
    """(start, end) of an ISO 8601 timespan (`PT3600.0S`, `START/END`, `START/PT1H`, `PT1H/END`).

    No timespan gives (None, None): no bound, the query's own filters decide. A malformed one gives None.
    """
    if value is None:
        return None, None
    parts = value.strip().split("/") if isinstance(value, str) else []
    if len(parts) == 1:
        duration = _duration(parts[0])
        return (now - duration, now) if duration is not None else None
    if len(parts) != 2:
        return None
    return _interval(_instant(parts[0]) or _duration(parts[0]), _instant(parts[1]) or _duration(parts[1]))


def _interval(
    first: dt.datetime | dt.timedelta | None, second: dt.datetime | dt.timedelta | None
) -> tuple[dt.datetime, dt.datetime] | None:
    """START/END, START/DURATION or DURATION/END."""
    if isinstance(first, dt.datetime) and isinstance(second, dt.datetime):
        return (first, second) if first <= second else None
    if isinstance(first, dt.datetime) and isinstance(second, dt.timedelta):
        return first, first + second
    if isinstance(first, dt.timedelta) and isinstance(second, dt.datetime):
        return second - first, second
    return None


def _duration(text: str) -> dt.timedelta | None:
    match = _DURATION.match(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        return None
    parts = {key: float(val) if val else 0.0 for key, val in match.groupdict().items()}
    return dt.timedelta(days=parts["d"], hours=parts["h"], minutes=parts["m"], seconds=parts["s"])


def _instant(text: str) -> dt.datetime | None:
    if not text[:1].isdigit():
        return None
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
