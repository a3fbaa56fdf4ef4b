"""Discovery of virtual machines through Azure Resource Graph.

Resource Graph answers one KQL query over many subscriptions in pages of up to 1,000 rows, so a sweep of
10,000 VMs costs about ten requests instead of one ARM call per VM and per NIC. It lags the real state of a
resource by about a minute: use it to decide which VMs to look at, never to confirm what a VM is doing now
(the engine asks Compute for the instance view before it acts, and after a reboot).

The KQL lives in `queries/*.kql` beside this module. Queries are sent with their comments removed and their
whitespace collapsed; the only parameters are values that passed a strict check here, never raw input.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from remediate.azure.errors import azure_errors
from remediate.model import (
    InvalidResourceId,
    PermanentError,
    TransientError,
    VmId,
    azure_key,
    fixed_segment,
    valid_subscription_id,
)

if TYPE_CHECKING:
    from remediate.azure.clients import AzureClients

log = logging.getLogger(__name__)

PAGE_SIZE = 1000  # Resource Graph's largest page ($top may not exceed 1,000)
SUBSCRIPTION_BATCH = 1000  # subscriptions per request; larger sets are split, as the Azure CLI does
NAME_BATCH = 100  # computer names per lookup query: keeps the query text far below Resource Graph's limit
MAX_PAGES = 10_000  # a safety net against a service that keeps handing out tokens

# A Windows (NetBIOS) computer name: letters, digits and hyphens, 1 to 15 characters. Log Analytics reports
# domain-joined machines by their FQDN, so a DNS suffix is accepted and dropped; only the host label is used.
_COMPUTER_NAME = re.compile(r"[A-Za-z0-9-]{1,15}")
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True)
class VmRecord:
    """One Windows VM as Resource Graph saw it (up to about a minute ago)."""

    vm: VmId
    location: str
    os_type: str
    power_state: str | None  # "running", "deallocated", "stopped", ... (None: not reported yet)
    computer_name: str | None
    tags: dict[str, str]
    private_ip: str | None  # of the primary IP configuration of the primary NIC


# --- Queries -------------------------------------------------------------------------------------------


def normalise_kql(text: str) -> str:
    """The query as sent: whole-line `//` comments dropped, runs of whitespace collapsed to one space."""
    lines = (line for line in text.splitlines() if not line.strip().startswith("//"))
    return " ".join(" ".join(lines).split())


@cache
def load_query(name: str) -> str:
    """A query shipped in `queries/NAME.kql`, normalised."""
    text = resources.files("remediate.azure").joinpath("queries", f"{name}.kql").read_text(encoding="utf-8")
    return normalise_kql(text)


# --- Scopes --------------------------------------------------------------------------------------------


def scope_subscriptions(scopes: tuple[str, ...]) -> list[str]:
    """The distinct subscriptions of subscription and resource-group scopes, in order of first mention."""
    subscriptions: list[str] = []
    for scope in scopes:
        parts = scope.strip("/").split("/")
        if len(parts) < 2 or not fixed_segment(parts[0], "subscriptions") or not valid_subscription_id(parts[1]):
            raise PermanentError(f"scope {scope!r} does not start with /subscriptions/GUID")
        if parts[1].lower() not in subscriptions:
            subscriptions.append(parts[1].lower())
    return subscriptions


def _normalised_scopes(scopes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(azure_key("/" + scope.strip("/")) for scope in scopes)


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- Paged Resource Graph query ------------------------------------------------------------------------


def run_graph_query(clients: AzureClients, query: str, subscriptions: list[str] | None) -> Iterator[dict[str, Any]]:
    """Every row of `query` over `subscriptions` (None: all the identity can see), page after page."""
    from azure.mgmt.resourcegraph.models import QueryRequest, QueryRequestOptions

    client = clients.resource_graph()
    token: str | None = None
    for page in range(MAX_PAGES):
        request = QueryRequest(
            subscriptions=subscriptions,
            query=query,
            options=QueryRequestOptions(top=PAGE_SIZE, skip_token=token, result_format="objectArray"),
        )
        with azure_errors("querying Resource Graph"):
            response = client.resources(request)
        rows: list[Any] = response.data if isinstance(response.data, list) else []
        log.debug(
            "Resource Graph page",
            extra={"page": page, "rows": len(rows), "total_records": response.total_records},
        )
        yield from (row for row in rows if isinstance(row, dict))
        next_token = response.skip_token
        if not next_token:
            return
        if next_token == token:
            raise TransientError("Resource Graph returned the same page token twice; giving up on this scan")
        token = next_token
    raise TransientError(f"Resource Graph kept paging beyond {MAX_PAGES} pages; giving up on this scan")


# --- Inventory -----------------------------------------------------------------------------------------


def list_windows_vms(clients: AzureClients, scopes: tuple[str, ...]) -> list[VmRecord]:
    """The Windows VMs in `scopes` (subscription and resource-group ids), sorted by id.

    One paged query per batch of subscriptions. Resource-group scopes are applied to the rows afterwards,
    not in the KQL: the request can only name subscriptions, and filtering here keeps the query one fixed
    text with no names spliced into it, costs the same number of pages for any number of groups, and uses
    the same case-insensitive scope test (`VmId.in_scope`) as the engine.
    """
    wanted = _normalised_scopes(scopes)
    subscriptions = scope_subscriptions(wanted)
    records: list[VmRecord] = []
    skipped_rows = 0
    for batch in _batches(subscriptions, SUBSCRIPTION_BATCH):
        for row in run_graph_query(clients, load_query("windows_vms"), batch):
            record = _vm_record(row)
            if record is None:
                skipped_rows += 1
            elif record.vm.in_scope(wanted):
                records.append(record)
    if skipped_rows:
        log.warning("Resource Graph rows without a usable VM id were ignored", extra={"rows": skipped_rows})
    log.info(
        "Windows VM inventory",
        extra={"vms": len(records), "subscriptions": len(subscriptions), "scopes": len(wanted)},
    )
    return sorted(records, key=lambda record: record.vm.key)


def _vm_record(row: dict[str, Any]) -> VmRecord | None:
    try:
        vm = VmId.parse(row.get("id"))
    except InvalidResourceId:
        return None
    power = _text(row.get("powerState"))
    tags = row.get("tags")
    return VmRecord(
        vm=vm,
        location=_text(row.get("location")) or "",
        os_type=_text(row.get("osType")) or "",
        # Resource Graph reports `PowerState/running`; an empty value means the instance view is not known.
        power_state=power.split("/", 1)[1] if power and "/" in power else power,
        computer_name=_text(row.get("computerName")),
        tags={str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {},
        private_ip=_text(row.get("privateIp")),
    )


def _text(value: object) -> str | None:
    """Resource Graph's `tostring()` turns a missing value into "": both mean absent here."""
    return value if isinstance(value, str) and value else None


# --- Computer names ------------------------------------------------------------------------------------


def computer_host_label(name: object) -> str | None:
    """The Windows computer name in `name` (a bare name or an FQDN), or None when it is not one."""
    if not isinstance(name, str):
        return None
    host, _, suffix = name.partition(".")
    if not _COMPUTER_NAME.fullmatch(host):
        return None
    if suffix and not all(_DNS_LABEL.fullmatch(label) for label in suffix.rstrip(".").split(".")):
        return None
    return host


def find_vms_by_computer_name(
    clients: AzureClients, names: list[str], scopes: tuple[str, ...]
) -> dict[str, list[VmId]]:
    """For each name (as given), the VMs in `scopes` (empty: all visible) whose computer name matches.

    Used to map the `Computer` dimension of a workspace-scoped log alert to VMs. A name may match several VMs
    (the same image in two groups): the caller decides what an ambiguous name means. Every name is checked
    before any request: one that is not a Windows computer name raises PermanentError and nothing is sent.
    """
    labels = {name: computer_host_label(name) for name in names}
    invalid = [name for name, label in labels.items() if label is None]
    if invalid:
        shown = ", ".join(repr(name)[:40] for name in invalid[:5])
        raise PermanentError(f"not a Windows computer name (letters, digits and hyphens, 1-15 characters): {shown}")
    result: dict[str, list[VmId]] = {name: [] for name in names}
    wanted = _normalised_scopes(scopes)
    # No scopes: every VM the identity can see (Resource Graph at tenant scope), so that the caller can tell
    # a name that is unique from one that an out-of-scope machine shares.
    subscriptions = scope_subscriptions(wanted) if wanted else None
    distinct = sorted({azure_key(label) for label in labels.values() if label})
    if not distinct or subscriptions == []:
        return result
    found = _lookup(clients, distinct, subscriptions, wanted)
    for name, label in labels.items():
        result[name] = sorted(found.get(azure_key(str(label)), set()), key=lambda vm: vm.key)
    log.info(
        "Computer names resolved",
        extra={"names": len(names), "resolved": sum(1 for vms in result.values() if vms)},
    )
    return result


def _lookup(
    clients: AzureClients, labels: list[str], subscriptions: list[str] | None, scopes: tuple[str, ...]
) -> dict[str, set[VmId]]:
    found: dict[str, set[VmId]] = {}
    template = load_query("vms_by_computer_name")
    batches = list(_batches(subscriptions, SUBSCRIPTION_BATCH)) if subscriptions is not None else [None]
    for names in _batches(labels, NAME_BATCH):
        query = template.replace("{names}", _kql_string_list(names))
        for batch in batches:
            for row in run_graph_query(clients, query, batch):
                _add_match(found, row, scopes)
    return found


def _add_match(found: dict[str, set[VmId]], row: dict[str, Any], scopes: tuple[str, ...]) -> None:
    computer = _text(row.get("computerName"))
    if not computer:
        return
    try:
        vm = VmId.parse(row.get("id"))
    except InvalidResourceId:
        # A VM Azure shows but this product cannot name (a name outside what it parses): it still has the
        # computer name, so the name is not unique. Counted as a match that is never in scope.
        vm = UnparsedVm.of(row.get("id"))
    if not scopes or vm.in_scope(scopes):
        found.setdefault(azure_key(computer), set()).add(vm)


@dataclass(frozen=True, eq=False)
class UnparsedVm(VmId):
    """A visible VM whose id `VmId.parse` refuses: it makes a computer name ambiguous, and is in no scope."""

    raw: str = ""

    @classmethod
    def of(cls, raw: object) -> UnparsedVm:
        text = str(raw)[:300]
        return cls("", "", "", text)

    def in_scope(self, scopes: tuple[str, ...]) -> bool:
        del scopes
        return False

    def __str__(self) -> str:
        return self.raw


def _kql_string_list(names: Iterable[str]) -> str:
    """`'a', 'b'`: the names were checked against `_COMPUTER_NAME`, so none can contain a quote."""
    quoted = []
    for name in names:
        if not _COMPUTER_NAME.fullmatch(name):  # a second guard: this text goes into KQL
            raise PermanentError(f"refusing to put {name!r} into a query")
        quoted.append(f"'{name}'")
    return ", ".join(quoted)
