"""Azure Resource Graph, as far as the product uses it: `POST /providers/Microsoft.ResourceGraph/resources`.

The emulator does not interpret KQL. It recognises exactly the query texts the product ships in
`remediate/azure/queries/*.kql` (read here as data files, after whitespace normalisation), pulls their
literal parameters out with a strict pattern, and answers each with rows computed from the fleet. Any
other text, including a shipped query with one clause changed, gets a 400 `InvalidQuery`: a query the
emulator cannot answer faithfully must fail loudly rather than return plausible rows.

Paging follows Azure: `$top` (1..1000, default 1000), `$skip`, and an opaque `$skipToken` that carries the
next offset and a hash of the query and subscriptions, so a token cannot be replayed against another query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from sim.fleet import Fleet, VirtualMachine

QUERY_DIR = Path(__file__).resolve().parent.parent / "remediate" / "azure" / "queries"
MAX_TOP = 1000
DEFAULT_TOP = 1000
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# Placeholders a template may contain, and the only text each may be replaced by.
_COMPUTER_NAME = r"'[A-Za-z0-9-]{1,15}'"
PARAMETERS: dict[str, str] = {
    "names": rf"{_COMPUTER_NAME}(?:, ?{_COMPUTER_NAME})*",
    "vm": r"/(?i:subscriptions)/[^'\\]+",  # one resource id inside single quotes (rdp_events_vm.kql)
}

Response = tuple[int, dict[str, Any]]


# --- Query templates (shared with sim.logs) ------------------------------------------------------------


def normalise_kql(text: str) -> str:
    """Whole-line `//` comments dropped, whitespace runs collapsed: layout never changes a query's meaning."""
    lines = (line for line in text.splitlines() if not line.strip().startswith("//"))
    return " ".join(" ".join(lines).split())


@cache
def template_pattern(name: str) -> re.Pattern[str] | None:
    """The compiled matcher of `NAME.kql`, or None when the product ships no such query."""
    path = QUERY_DIR / f"{name}.kql"
    if not path.is_file():
        return None
    text = normalise_kql(path.read_text(encoding="utf-8"))
    pieces = re.split(r"\{(\w+)\}", text)
    pattern = []
    for index, piece in enumerate(pieces):
        if index % 2 == 0:
            pattern.append(re.escape(piece))
        elif piece in PARAMETERS:
            pattern.append(f"(?P<{piece}>{PARAMETERS[piece]})")
        else:
            raise ValueError(f"{path.name}: placeholder {{{piece}}} has no pattern in sim.graph.PARAMETERS")
    return re.compile("".join(pattern))


def match_template(name: str, query: str) -> dict[str, str] | None:
    """The parameters of `query` when it is the shipped template `name`, else None."""
    pattern = template_pattern(name)
    if pattern is None:
        return None
    match = pattern.fullmatch(normalise_kql(query))
    return None if match is None else match.groupdict()


def error(status: int, code: str, message: str) -> Response:
    return status, {"error": {"code": code, "message": message}}


class Rejected(Exception):
    """A request the service refuses; `response` is the error answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.response = error(status, code, message)


# --- Row builders: one per shipped Resource Graph query -------------------------------------------------


@dataclass(frozen=True)
class _Query:
    """One recognised request: which VMs it selects (sorted by id) and how each becomes a row."""

    vms: list[VirtualMachine]
    row: Callable[[VirtualMachine], dict[str, Any]]


def _windows_vms(fleet: Fleet, subscriptions: set[str], _params: dict[str, str]) -> _Query:
    vms = [vm for vm in fleet if vm.subscription_id in subscriptions and vm.os_type.lower() == "windows"]
    return _Query(sorted(vms, key=lambda vm: vm.resource_id), _inventory_row)


def _inventory_row(vm: VirtualMachine) -> dict[str, Any]:
    # Column names and shapes as the KQL projects them. Resource Graph keeps the resource group's case as created
    # (azure-rest-api-specs specification/resourcegraph/resource-manager/Microsoft.ResourceGraph/stable/2021-03-01/
    # examples/ResourcesBasicQuery.json: ids with "RG1", `resultTruncated` "false"), so ids and groups must be
    # compared case-insensitively. `privateIp` is the primary IP configuration of the primary NIC.
    return {
        "id": vm.resource_id,
        "name": vm.name,
        "resourceGroup": vm.resource_group,
        "subscriptionId": vm.subscription_id,
        "location": vm.location,
        "tags": dict(vm.tags),
        "osType": vm.os_type,
        "powerState": f"PowerState/{vm.power_state}",
        "computerName": vm.guest.computer_name,
        "privateIp": vm.private_ip,
    }


def _vms_by_computer_name(fleet: Fleet, subscriptions: set[str], params: dict[str, str]) -> _Query:
    names = {name.lower() for name in re.findall(r"'([A-Za-z0-9-]+)'", params["names"])}
    vms = [vm for vm in fleet if vm.subscription_id in subscriptions and vm.guest.computer_name.lower() in names]
    return _Query(sorted(vms, key=lambda vm: vm.resource_id), _computer_row)


def _computer_row(vm: VirtualMachine) -> dict[str, Any]:
    return {"id": vm.resource_id, "computerName": vm.guest.computer_name}


QUERIES: dict[str, Callable[[Fleet, set[str], dict[str, str]], _Query]] = {
    "windows_vms": _windows_vms,
    "vms_by_computer_name": _vms_by_computer_name,
}


# --- The endpoint --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    query: str
    subscriptions: list[str] | None  # None: every subscription the caller can see (tenant scope)
    top: int | None
    skip: int | None
    skip_token: str | None
    result_format: str


def handle_resource_graph(fleet: Fleet, body: dict[str, Any]) -> Response:
    """Answer a `QueryRequest` body as Resource Graph does (objectArray results, paged)."""
    try:
        request = _parse_request(body)
        name, params = _recognise(request.query)
        with fleet.lock:
            subscriptions = set(request.subscriptions or fleet.subscription_ids)
            selected = QUERIES[name](fleet, subscriptions, params)
            digest = _digest(request.query, sorted(subscriptions))
            offset, top = _page_window(request, digest)
            page = [selected.row(vm) for vm in selected.vms[offset : offset + top]]
    except Rejected as rejected:
        return rejected.response
    return 200, _response(page, len(selected.vms), offset, top, digest)


def _recognise(query: str) -> tuple[str, dict[str, str]]:
    for name in QUERIES:
        params = match_template(name, query)
        if params is not None:
            return name, params
    raise Rejected(
        400,
        "InvalidQuery",
        "Query is invalid or not supported by the emulator: only the queries shipped in "
        "remediate/azure/queries are answered.",
    )


def _parse_request(body: object) -> _Request:
    if not isinstance(body, dict):
        raise Rejected(400, "InvalidRequestContent", "The request body must be a JSON object.")
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise Rejected(400, "InvalidRequestContent", "The 'query' property is required.")
    if body.get("managementGroups"):
        raise Rejected(400, "BadRequest", "Management-group scopes are not emulated; name subscriptions.")
    subscriptions = body.get("subscriptions")
    if subscriptions is not None and (
        not isinstance(subscriptions, list)
        or not all(isinstance(s, str) and _GUID.match(s.lower()) for s in subscriptions)
    ):
        raise Rejected(400, "InvalidRequestContent", "'subscriptions' must be a list of subscription GUIDs.")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise Rejected(400, "InvalidRequestContent", "'options' must be an object.")
    result_format = options.get("resultFormat") or "objectArray"
    if result_format != "objectArray":
        raise Rejected(400, "BadRequest", f"resultFormat {result_format!r} is not emulated; use objectArray.")
    lowered = [s.lower() for s in subscriptions] if subscriptions else None
    return _Request(
        query,
        lowered,
        _integer(options, "$top", 1, MAX_TOP),
        _integer(options, "$skip", 0, None),
        _skip_token(options),
        result_format,
    )


def _integer(options: dict[str, Any], key: str, low: int, high: int | None) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high and value > high):
        bounds = f"between {low} and {high}" if high else f"at least {low}"
        raise Rejected(400, "BadRequest", f"'{key}' must be an integer {bounds}.")
    return value


def _skip_token(options: dict[str, Any]) -> str | None:
    token = options.get("$skipToken")
    if token is not None and not isinstance(token, str):
        raise Rejected(400, "BadRequest", "'$skipToken' must be a string.")
    return token or None


def _page_window(request: _Request, digest: str) -> tuple[int, int]:
    """(offset, page size). As documented, `$top` and `$skip` override what a `$skipToken` carries."""
    offset, top = 0, DEFAULT_TOP
    if request.skip_token is not None:
        decoded = _decode_token(request.skip_token, digest)
        if decoded is None:
            raise Rejected(400, "BadRequest", "The $skipToken is invalid or belongs to another query.")
        offset, top = decoded
    if request.top is not None:
        top = request.top
    if request.skip is not None:
        offset = request.skip
    return offset, top


def _response(page: list[dict[str, Any]], total: int, offset: int, top: int, digest: str) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "totalRecords": total,
        "count": len(page),
        "resultTruncated": "false",
        "data": page,
        "facets": [],
    }
    following = offset + len(page)
    if page and following < total:
        answer["$skipToken"] = _encode_token(following, top, digest)
    return answer


def _digest(query: str, subscriptions: list[str]) -> str:
    material = normalise_kql(query) + "\n" + ",".join(subscriptions)
    return hashlib.sha256(material.encode()).hexdigest()[:16]


_TOKEN_PREFIX = b"\xfb\xff"  # encodes as "+/": real skip tokens are standard base64 with `+`, `/` and `=`


def _encode_token(offset: int, top: int, digest: str) -> str:
    raw = _TOKEN_PREFIX + json.dumps({"o": offset, "t": top, "q": digest}, separators=(",", ":")).encode()
    raw += b" " * ((1 - len(raw)) % 3)  # a length of 1 mod 3 ends the token with "=="
    return base64.b64encode(raw).decode()


def _decode_token(token: str, digest: str) -> tuple[int, int] | None:
    try:
        raw = base64.b64decode(token.encode(), validate=True)
        if not raw.startswith(_TOKEN_PREFIX):
            return None
        data = json.loads(raw[len(_TOKEN_PREFIX) :])
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("q") != digest:
        return None
    offset, top = data.get("o"), data.get("t")
    if not isinstance(offset, int) or not isinstance(top, int) or offset < 0 or not 1 <= top <= MAX_TOP:
        return None
    return offset, top
