"""Azure Monitor alerts in the common alert schema: validate them, and work out which VMs they are about.

An action group posts `{"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials", "alertContext"}}`.
`essentials` is the same for every alert family; `alertContext` differs per family, and only some of it
matters here:

* metric, activity log and resource health alerts name the resource in `essentials.alertTargetIDs`;
* log search alerts scoped to a resource (Log Alerts V2, camelCase) do the same; scoped to a Log Analytics
  workspace, the target is the workspace and the VM comes from the `_ResourceId` (or `ResourceId`) dimension,
  or from the `Computer` dimension, which needs a name-to-VM lookup outside this module;
* older log alerts (monitoringService "Log Analytics", PascalCase) carry `Dimensions`, and may embed
  `SearchResults` and `AffectedConfigurationItems` that name the resources when there are no dimensions.

Parsing is strict where we read (a wrong type there is a 400 naming the field) and blind elsewhere, because
alert contexts carry many fields whose types vary between families (service health sends numbers where
activity log alerts send strings).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any

from remediate.intake.requests import BadRequest, clip, expect_object, json_type, read_json_body
from remediate.model import InvalidResourceId, VmId, azure_key

COMMON_SCHEMA_ID = "azureMonitorCommonAlertSchema"
# One alert may name many VMs (a log alert over a whole workspace); past this many we stop, as the runbook
# API does, so that one noisy rule cannot fill the queue.
MAX_VMS_PER_ALERT = 500
# Windows computer names (NetBIOS): letters, digits and hyphens, at most 15 characters.
_COMPUTER_NAME = re.compile(r"[A-Za-z0-9-]{1,15}")
_RESOURCE_ID_DIMENSIONS = ("_resourceid", "resourceid")
_COMPUTER_DIMENSION = "computer"

SCALE_SET_REASON = "virtual machine scale sets are not yet supported"


class Condition(enum.StrEnum):
    FIRED = "Fired"
    RESOLVED = "Resolved"


class Family(enum.StrEnum):
    """The alert families we tell apart; the value is what messages and logs show."""

    METRIC = "metric alert"
    LOG_V2 = "log search alert (Log Alerts V2)"
    LOG_V1 = "log search alert (older API)"
    ACTIVITY_LOG = "activity log alert"
    RESOURCE_HEALTH = "resource health alert"
    SERVICE_HEALTH = "service health alert"
    OTHER = "alert"


@dataclass(frozen=True)
class Dimension:
    name: str
    value: str


@dataclass(frozen=True)
class Alert:
    """What we keep of a validated alert. Context fields are read only for a fired alert."""

    alert_id: str
    rule: str
    condition: Condition
    family: Family
    targets: tuple[str, ...]
    # One tuple per place dimensions come from: each `allOf` condition, the older `Dimensions`, or each row
    # of embedded search results. A `_ResourceId` and a `Computer` in the same set describe the same machine.
    dimension_sets: tuple[tuple[Dimension, ...], ...] = ()
    # Older log alerts only: what the rule's results touched, used when nothing better is in the payload.
    configuration_items: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ignored:
    target: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"target": self.target, "reason": self.reason}


@dataclass
class Located:
    """The VMs an alert names (with where each came from), what it names that we skip, and bare names."""

    vms: dict[VmId, str] = field(default_factory=dict)  # VM -> source ("alert target", "_ResourceId ...")
    ignored: list[Ignored] = field(default_factory=list)
    computers: dict[str, str] = field(default_factory=dict)  # case-folded name -> name as the alert spelled it
    overflow: int = 0  # VMs past MAX_VMS_PER_ALERT, counted rather than listed

    def add_vm(self, vm: VmId, source: str) -> None:
        if vm in self.vms:
            return
        if len(self.vms) >= MAX_VMS_PER_ALERT:
            self.overflow += 1
            return
        self.vms[vm] = source


# --- Validation ----------------------------------------------------------------------------------------

ESSENTIALS = "data.essentials"


def parse_alert(body: bytes) -> Alert:
    """Validate a common-schema alert; the first problem found raises `BadRequest` naming its field."""
    doc = read_json_body(body)
    if not isinstance(doc, dict):
        raise BadRequest(
            "body", f"body must be a JSON object in the common alert schema, got {json_type(doc)}", code="WrongType"
        )
    _check_schema_id(doc.get("schemaId"))
    data = expect_object(_required(doc, "data", "data"), "data")
    essentials = expect_object(_required(data, "essentials", ESSENTIALS), ESSENTIALS)
    alert_id = _required_string(essentials, "alertId")
    condition = _monitor_condition(essentials)
    rule = _optional_string(essentials, "alertRule") or "(unnamed rule)"
    signal = _optional_string(essentials, "signalType") or ""
    service = _optional_string(essentials, "monitoringService") or ""
    targets = _targets(essentials)
    context = _optional_object(data, "alertContext", "data.alertContext")
    family = _family(signal, service, context)
    if condition is Condition.RESOLVED:
        return Alert(alert_id, rule, condition, family, targets)
    dimension_sets, items = _context_dimensions(family, context)
    return Alert(alert_id, rule, condition, family, targets, dimension_sets, items)


def _check_schema_id(value: object) -> None:
    if value is None:
        raise BadRequest(
            "schemaId",
            "schemaId is missing: this is not a common alert schema document; turn on "
            "useCommonAlertSchema for this receiver in the action group",
            code="NotCommonAlertSchema",
        )
    if value != COMMON_SCHEMA_ID:
        shown = clip(value) if isinstance(value, str) else json_type(value)
        raise BadRequest(
            "schemaId",
            f"schemaId is {shown!r}, not {COMMON_SCHEMA_ID!r}; turn on useCommonAlertSchema for this "
            "receiver in the action group",
            code="NotCommonAlertSchema",
        )


def _required(parent: dict[str, Any], key: str, path: str) -> Any:
    if parent.get(key) is None:
        raise BadRequest(path, f"{path} is missing: not a common alert schema document", code="MissingField")
    return parent[key]


def _required_string(essentials: dict[str, Any], key: str) -> str:
    path = f"{ESSENTIALS}.{key}"
    value = _required(essentials, key, path)
    if not isinstance(value, str):
        raise BadRequest(path, f"{path} must be a string, got {json_type(value)}", code="WrongType")
    if not value.strip():
        raise BadRequest(path, f"{path} is empty")
    if len(value) > 1024:
        raise BadRequest(path, f"{path} is {len(value)} characters long; an alert id is at most 1024")
    return value.strip()


def _optional_string(parent: dict[str, Any], key: str, base: str = ESSENTIALS) -> str | None:
    value = parent.get(key)
    if value is not None and not isinstance(value, str):
        path = f"{base}.{key}"
        raise BadRequest(path, f"{path} must be a string, got {json_type(value)}", code="WrongType")
    return value


def _optional_object(parent: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = parent.get(key)
    return {} if value is None else expect_object(value, path)


def _optional_list(parent: dict[str, Any], key: str, path: str) -> list[Any]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(path, f"{path} must be an array, got {json_type(value)}", code="WrongType")
    return value


def _monitor_condition(essentials: dict[str, Any]) -> Condition:
    path = f"{ESSENTIALS}.monitorCondition"
    value = _required_string(essentials, "monitorCondition")
    for condition in Condition:
        if value.lower() == condition.value.lower():
            return condition
    raise BadRequest(path, f"{path} is {clip(value)!r}; expected Fired or Resolved")


def _targets(essentials: dict[str, Any]) -> tuple[str, ...]:
    # Budget and some test alerts send null: that is "no target", not an error.
    path = f"{ESSENTIALS}.alertTargetIDs"
    items = _optional_list(essentials, "alertTargetIDs", path)
    for index, item in enumerate(items):
        if not isinstance(item, str):
            where = f"{path}[{index}]"
            raise BadRequest(where, f"{where} must be a resource id string, got {json_type(item)}", code="WrongType")
    return tuple(item.strip() for item in items if item.strip())


# monitoringService (spaces removed, lower case) -> family, for services that decide the family alone.
_SERVICE_FAMILIES = {
    "logalertsv2": Family.LOG_V2,
    "loganalytics": Family.LOG_V1,
    "applicationinsights": Family.LOG_V1,
    "resourcehealth": Family.RESOURCE_HEALTH,
    "servicehealth": Family.SERVICE_HEALTH,
}


def _family(signal: str, service: str, context: dict[str, Any]) -> Family:
    service_key = service.replace(" ", "").lower()
    if context.get("conditionType") == "LogQueryCriteria":
        return Family.LOG_V2
    if "SearchQuery" in context:
        return Family.LOG_V1
    if service_key in _SERVICE_FAMILIES:
        return _SERVICE_FAMILIES[service_key]
    if signal.lower() == "activity log" or service_key.startswith("activitylog"):
        return Family.ACTIVITY_LOG
    return Family.METRIC if signal.lower() == "metric" else Family.OTHER


def _context_dimensions(
    family: Family, context: dict[str, Any]
) -> tuple[tuple[tuple[Dimension, ...], ...], tuple[str, ...]]:
    base = "data.alertContext"
    if family is Family.LOG_V1:
        return _older_log_dimensions(context, base)
    condition = _optional_object(context, "condition", f"{base}.condition")
    sets = []
    for index, item in enumerate(_optional_list(condition, "allOf", f"{base}.condition.allOf")):
        path = f"{base}.condition.allOf[{index}]"
        criterion = expect_object(item, path)
        sets.append(_dimensions(_optional_list(criterion, "dimensions", f"{path}.dimensions"), f"{path}.dimensions"))
    return tuple(s for s in sets if s), ()


def _older_log_dimensions(
    context: dict[str, Any], base: str
) -> tuple[tuple[tuple[Dimension, ...], ...], tuple[str, ...]]:
    dims = _dimensions(_optional_list(context, "Dimensions", f"{base}.Dimensions"), f"{base}.Dimensions")
    # Rules without machine dimensions ("Number of results") may still embed the rows that matched.
    names_machine = any(azure_key(d.name) in (*_RESOURCE_ID_DIMENSIONS, _COMPUTER_DIMENSION) for d in dims)
    sets = [dims] if names_machine else _search_result_rows(context, base)
    items_path = f"{base}.AffectedConfigurationItems"
    items = _optional_list(context, "AffectedConfigurationItems", items_path)
    for index, item in enumerate(items):
        if not isinstance(item, str):
            where = f"{items_path}[{index}]"
            raise BadRequest(where, f"{where} must be a string, got {json_type(item)}", code="WrongType")
    return tuple(sets), tuple(item for item in items if item.strip())


def _dimensions(items: list[Any], path: str) -> tuple[Dimension, ...]:
    found = []
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        entry = expect_object(item, where)
        # The documented spelling is lower case; tolerate the PascalCase one some older payloads use.
        name = entry.get("name", entry.get("Name"))
        value = entry.get("value", entry.get("Value"))
        if not isinstance(name, str):
            raise BadRequest(f"{where}.name", f"{where}.name must be a string, got {json_type(name)}", code="WrongType")
        if value is None:
            continue
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise BadRequest(
                f"{where}.value", f"{where}.value must be a string, got {json_type(value)}", code="WrongType"
            )
        found.append(Dimension(name, str(value)))
    return tuple(found)


def _search_result_rows(context: dict[str, Any], base: str) -> list[tuple[Dimension, ...]]:
    """Rows of embedded search results, reduced to the columns that can name a machine."""
    results = _optional_object(context, "SearchResults", f"{base}.SearchResults")
    rows_found: list[tuple[Dimension, ...]] = []
    for t_index, raw_table in enumerate(_optional_list(results, "tables", f"{base}.SearchResults.tables")):
        path = f"{base}.SearchResults.tables[{t_index}]"
        table = expect_object(raw_table, path)
        wanted = _machine_columns(_optional_list(table, "columns", f"{path}.columns"), f"{path}.columns")
        if not wanted:
            continue
        for r_index, row in enumerate(_optional_list(table, "rows", f"{path}.rows")):
            if not isinstance(row, list):
                where = f"{path}.rows[{r_index}]"
                raise BadRequest(where, f"{where} must be an array, got {json_type(row)}", code="WrongType")
            dims = tuple(
                Dimension(name, row[pos]) for pos, name in wanted if pos < len(row) and isinstance(row[pos], str)
            )
            if dims:
                rows_found.append(dims)
    return rows_found


def _machine_columns(columns: list[Any], path: str) -> list[tuple[int, str]]:
    wanted = []
    for index, column in enumerate(columns):
        entry = expect_object(column, f"{path}[{index}]")
        name = entry.get("name")
        if not isinstance(name, str):
            where = f"{path}[{index}].name"
            raise BadRequest(where, f"{where} must be a string, got {json_type(name)}", code="WrongType")
        if azure_key(name) in (*_RESOURCE_ID_DIMENSIONS, _COMPUTER_DIMENSION):
            wanted.append((index, name))
    return wanted


# --- Which VMs -----------------------------------------------------------------------------------------


class _Kind(enum.Enum):
    VM = "vm"
    SCALE_SET = "scale set"
    WORKSPACE = "workspace"
    CONTAINER = "container"  # a subscription or resource group: its VMs can only come from dimensions
    OTHER = "other"


# Resource-type markers, checked in order; scale sets first so an instance id is never read as a VM.
_MARKERS = (
    ("/providers/microsoft.compute/virtualmachinescalesets/", _Kind.SCALE_SET, SCALE_SET_REASON),
    ("/providers/microsoft.compute/virtualmachines/", _Kind.VM, ""),
    (
        "/providers/microsoft.operationalinsights/workspaces/",
        _Kind.WORKSPACE,
        "a Log Analytics workspace is not a virtual machine",
    ),
)


def classify(resource_id: str) -> tuple[_Kind, VmId | None, str]:
    """What an ARM id points at: (kind, the VM when it is one, a reason when it is not)."""
    text = resource_id.strip().rstrip("/")
    lower = azure_key(text)
    for marker, kind, reason in _MARKERS:
        if marker in lower:
            return _vm_kind(text) if kind is _Kind.VM else (kind, None, reason)
    parts = lower.strip("/").split("/")
    if parts[0] == "subscriptions" and len(parts) == 2:
        return _Kind.CONTAINER, None, "a subscription is not a virtual machine"
    if parts[0] == "subscriptions" and len(parts) == 4 and parts[2] == "resourcegroups":
        return _Kind.CONTAINER, None, "a resource group is not a virtual machine"
    resource_type = _resource_type(parts)
    return (
        _Kind.OTHER,
        None,
        (f"not a virtual machine ({resource_type})" if resource_type else "not an Azure resource id"),
    )


def _vm_kind(text: str) -> tuple[_Kind, VmId | None, str]:
    try:
        return _Kind.VM, VmId.parse(text), ""
    except InvalidResourceId as exc:
        # A child of a VM (extension, run command) is not the VM; say which type it is.
        resource_type = _resource_type(azure_key(text).strip("/").split("/"))
        if resource_type and resource_type != "microsoft.compute/virtualmachines":
            return _Kind.OTHER, None, f"not a virtual machine ({resource_type})"
        return _Kind.OTHER, None, exc.reason


def _resource_type(parts: list[str]) -> str:
    if "providers" not in parts:
        return ""
    after = parts[len(parts) - 1 - parts[::-1].index("providers") + 1 :]
    if len(after) < 2:
        return ""
    return "/".join([after[0], *after[1::2]])


def locate(alert: Alert) -> Located:
    """The VMs a fired alert is about, plus `Computer` names still to be resolved and what we ignore."""
    found = Located()
    containers: list[tuple[str, str]] = []
    for target in alert.targets:
        kind, vm, reason = classify(target)
        if vm is not None:
            found.add_vm(vm, "alert target")
        elif kind in (_Kind.WORKSPACE, _Kind.CONTAINER):
            containers.append((target, reason))
        else:
            found.ignored.append(Ignored(clip(target, 300), reason))
    targeted_vm = bool(found.vms)
    named_something = False
    for dims in alert.dimension_sets:
        named_something |= _from_dimensions(dims, found, use_computer=not targeted_vm)
    if not alert.dimension_sets and not targeted_vm:
        named_something |= _from_configuration_items(alert.configuration_items, found)
    if not named_something:
        # The workspace/group was only a container; say why nothing came out of it.
        for target, reason in containers:
            found.ignored.append(Ignored(clip(target, 300), _container_reason(alert, target, reason)))
    return found


def _from_dimensions(dims: tuple[Dimension, ...], found: Located, *, use_computer: bool) -> bool:
    resource_ids = [d for d in dims if azure_key(d.name) in _RESOURCE_ID_DIMENSIONS and d.value.startswith("/")]
    for dim in resource_ids:
        _, vm, reason = classify(dim.value)
        if vm is not None:
            found.add_vm(vm, f"{dim.name} dimension")
        else:
            found.ignored.append(Ignored(clip(dim.value, 300), reason))
    if resource_ids:
        return True  # a Computer beside a _ResourceId names the same machine: nothing to look up
    if not use_computer:
        return False
    computers = [d for d in dims if azure_key(d.name) == _COMPUTER_DIMENSION and d.value.strip()]
    for dim in computers:
        found.computers.setdefault(azure_key(dim.value.strip()), dim.value.strip())
    return bool(computers)


def _from_configuration_items(items: tuple[str, ...], found: Located) -> bool:
    named = False
    for item in items:
        text = item.strip()
        if text.startswith("/"):
            named |= _from_dimensions((Dimension("_ResourceId", text),), found, use_computer=False)
        else:
            found.computers.setdefault(azure_key(text), text)
            named = True
    return named


def _container_reason(alert: Alert, target: str, reason: str) -> str:
    if alert.family is Family.SERVICE_HEALTH:
        return "a service health alert is about Azure services, not a particular VM"
    if classify(target)[0] is _Kind.WORKSPACE:
        return (
            "a log search alert on a Log Analytics workspace names no VM: split the rule by the "
            "_ResourceId or Computer dimension"
        )
    return reason


def computer_lookup_name(name: str) -> str | None:
    """The Windows computer name to look up for a `Computer` value, or None when it cannot be one.

    Domain-joined machines report an FQDN (`vm01.corp.contoso.com`); the VM's computer name is the first
    label. Anything else (spaces, quotes, long names) never reaches a query.
    """
    first = name.strip().split(".", 1)[0]
    return first if _COMPUTER_NAME.fullmatch(first) else None
