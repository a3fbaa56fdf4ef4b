"""Event evidence from Log Analytics: which machines logged the events that precede RDP error 0x904.

One query (`queries/rdp_events.kql`) summarises the certificate events of TermService / RemoteConnectionManager
(1051, 1052, 1055, 1057-1059, 1063-1065), the Schannel events (36870-36872, 36874, 36888) and failed logons of
types 10 and 3 (4625) per resource, computer and event id over the last N hours. The evidence says *why* a
VM deserves a look; it never decides a repair on its own (the guest's diagnosis does).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from remediate.azure.errors import azure_errors
from remediate.azure.inventory import load_query
from remediate.model import InvalidResourceId, PermanentError, VmId

if TYPE_CHECKING:
    from azure.monitor.query import LogsTable

    from remediate.azure.clients import AzureClients

log = logging.getLogger(__name__)

FAILED_LOGON = 4625  # Security log; the query keeps only logon types 10 and 3

RDP_EVENT_IDS = frozenset(
    {1051, 1052, 1055, 1057, 1058, 1059, 1063, 1064, 1065, 36870, 36871, 36872, 36874, 36888, FAILED_LOGON}
)
_WORKSPACE_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_COLUMNS = ("_ResourceId", "Computer", "EventID", "Count", "LastSeen")


@dataclass(frozen=True)
class EventEvidence:
    """How often one machine logged one event id in the window, and when last."""

    vm: VmId | None  # None: the machine is not an Azure VM (on-premises agent, Arc server, scale set)
    computer: str
    event_id: int
    count: int
    last_seen: dt.datetime


def query_rdp_events(clients: AzureClients, workspace_id: str, hours: int) -> list[EventEvidence]:
    """Evidence from the last `hours` hours in the workspace (its customer id GUID).

    A PARTIAL answer (the service stopped early, e.g. a resource limit) is still used, with a warning: some
    evidence beats none, and the sweep probes VMs either way. Throttling and server errors raise
    TransientError; a rejected query or an unknown workspace raise PermanentError.

    A workspace collects from whatever machines report to it, so the evidence is not limited to the
    product's scopes: callers intersect it with the inventory (`list_windows_vms`).
    """
    if not _WORKSPACE_ID.fullmatch(workspace_id or ""):
        raise PermanentError(f"Log Analytics workspace id {workspace_id!r} is not a GUID (the workspace's customer id)")
    if hours < 1:
        raise PermanentError(f"the evidence window must be at least one hour, got {hours}")
    from azure.monitor.query import LogsQueryStatus

    # The window travels as the request's timespan, which the service applies before the query runs.
    with azure_errors(f"querying Log Analytics workspace {workspace_id}"):
        result = clients.logs().query_workspace(
            workspace_id, load_query("rdp_events"), timespan=dt.timedelta(hours=hours)
        )
    if result.status == LogsQueryStatus.PARTIAL:
        tables = result.partial_data
        error = result.partial_error
        log.warning(
            "Log Analytics returned partial results; using what arrived",
            extra={
                "workspace_id": workspace_id,
                "error_code": getattr(error, "code", None),
                "error_message": getattr(error, "message", None),
            },
        )
    else:
        tables = result.tables
    evidence = [item for table in tables for item in _table_evidence(table)]
    log.info(
        "RDP event evidence",
        extra={
            "workspace_id": workspace_id,
            "hours": hours,
            "rows": len(evidence),
            "vms": len({item.vm for item in evidence if item.vm}),
        },
    )
    return sorted(evidence, key=lambda item: (item.computer.lower(), item.event_id))


def query_vm_events(clients: AzureClients, workspace_id: str, vm: VmId, hours: int) -> list[EventEvidence]:
    """The same evidence for one VM only (`queries/rdp_events_vm.kql`): what the engine reads before it names a
    cause. Errors as `query_rdp_events`; a PARTIAL answer is used as it is."""
    if not _WORKSPACE_ID.fullmatch(workspace_id or ""):
        raise PermanentError(f"Log Analytics workspace id {workspace_id!r} is not a GUID (the workspace's customer id)")
    from azure.monitor.query import LogsQueryPartialResult

    text = str(VmId.parse(str(vm)))  # only an id that parses (no quote, no backslash) reaches the query text
    query = load_query("rdp_events_vm").replace("{vm}", text)
    with azure_errors(f"querying Log Analytics workspace {workspace_id} for {vm.name}"):
        result = clients.logs().query_workspace(workspace_id, query, timespan=dt.timedelta(hours=hours))
    tables = result.partial_data if isinstance(result, LogsQueryPartialResult) else result.tables
    return [item for table in tables for item in _table_evidence(table) if item.vm == vm]


def _table_evidence(table: LogsTable) -> list[EventEvidence]:
    missing = [name for name in _COLUMNS if name not in table.columns]
    if missing:
        raise PermanentError(f"Log Analytics answer lacks the column(s) {', '.join(missing)}")
    evidence = []
    for row in table.rows:
        item = _evidence({name: row[name] for name in _COLUMNS})
        if item is not None:
            evidence.append(item)
    return evidence


def _evidence(row: dict[str, Any]) -> EventEvidence | None:
    try:
        event_id = int(row["EventID"])
        count = int(row["Count"])
    except (TypeError, ValueError):
        log.warning("Log Analytics row with a non-numeric EventID or Count ignored", extra={"row": str(row)})
        return None
    if event_id not in RDP_EVENT_IDS:
        return None
    last_seen = _timestamp(row["LastSeen"])
    if last_seen is None:
        log.warning("Log Analytics row without a usable LastSeen ignored", extra={"row": str(row)})
        return None
    return EventEvidence(
        vm=_vm_id(row["_ResourceId"]),
        computer=str(row["Computer"] or ""),
        event_id=event_id,
        count=count,
        last_seen=last_seen,
    )


def _vm_id(resource_id: object) -> VmId | None:
    """Log Analytics lower-cases `_ResourceId`; VmId compares case-insensitively, so that is harmless."""
    try:
        return VmId.parse(resource_id)
    except InvalidResourceId:
        return None


def _timestamp(value: object) -> dt.datetime | None:
    """The SDK turns `datetime` columns into datetimes, but leaves values it cannot parse as text."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, dt.datetime):
        return None
    return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
