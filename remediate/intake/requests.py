"""HTTP request bodies: the checks every endpoint shares, and the runbook body (`POST /api/remediations`).

Everything here is pure: bytes in, a validated value or a `BadRequest` naming the offending field out.
No Azure SDK, no I/O, so the HTTP trigger can answer within milliseconds.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from remediate.model import (
    InvalidResourceId,
    PermanentError,
    Plan,
    RemediationOptions,
    VmId,
    azure_key,
    fixed_segment,
    valid_resource_group_name,
    valid_subscription_id,
)

# Azure Monitor caps a common-schema alert at 256 KB; the runbook API takes the same ceiling.
MAX_BODY_BYTES = 256 * 1024
MAX_VMS_PER_REQUEST = 500
MAX_REASON_CHARS = 500

# A DNS host name or a bare computer name: letters, digits, hyphens, dots; no slashes.
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*\.?")
_SCALE_SET_MARK = "/providers/microsoft.compute/virtualmachinescalesets/"

VM_ID_SHAPE = "/subscriptions/GUID/resourceGroups/NAME/providers/Microsoft.Compute/virtualMachines/NAME"


class BadRequest(PermanentError):
    """Input the endpoint refuses: becomes `{"error": {"code", "message", "field"}}` with a 4xx status.

    The message always names the field, so an operator reading only the message knows what to fix.
    """

    def __init__(self, field: str, message: str, *, code: str = "InvalidField", status: int = 400) -> None:
        if field not in message:
            message = f"{field}: {message}"
        super().__init__(message)
        self.field = field
        self.code = code
        self.status = status

    def to_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.reason, "field": self.field}}


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for messages ("got array")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def clip(text: str, limit: int = 120) -> str:
    """Shorten user-supplied text before it goes into a message or a log line."""
    return text if len(text) <= limit else text[:limit] + "..."


def read_json_body(body: bytes, *, limit: int = MAX_BODY_BYTES) -> Any:
    """Decode a request body, refusing oversized ones before spending any time parsing them."""
    if len(body) > limit:
        raise BadRequest(
            "body",
            f"body is {len(body)} bytes; the limit is {limit} bytes (256 KB)",
            code="PayloadTooLarge",
            status=413,
        )
    if not body.strip():
        raise BadRequest("body", "body is empty: expected a JSON object", code="MalformedJson")
    try:
        doc = json.loads(body, object_pairs_hook=_refuse_duplicate_keys)
    except _DuplicateKey as exc:
        raise BadRequest(
            exc.key or "body",
            f"{exc.key!r} appears twice in one object of the body: refusing to guess which value was meant",
            code="DuplicateKey",
        ) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadRequest("body", f"body is not valid JSON: {clip(str(exc))}", code="MalformedJson") from None
    refuse_unstorable_text(doc)
    return doc


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = printable(clip(key, 60))


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json.loads` keeps the last of two equal keys: `"dryRun": true, "dryRun": false` would be a live run."""
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise _DuplicateKey(key)
        doc[key] = value
    return doc


# Text that Table storage cannot hold, or that cannot be encoded to be hashed: lone UTF-16 surrogates (JSON's
# `\ud800` escapes decode to them), NUL and the other C0 controls except tab, line feed and carriage return,
# and the two non-characters U+FFFE/U+FFFF. They are the caller's error (400), never a reason to retry (503).
_UNSTORABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def unstorable(text: str) -> str | None:
    """A description of the first character of `text` that cannot be stored, or None when all can."""
    found = _UNSTORABLE.search(text)
    return None if found is None else f"U+{ord(found.group()):04X} at position {found.start()}"


def printable(text: str) -> str:
    """`text` with unstorable characters replaced, safe to put into a message, a log line or the ledger."""
    return _UNSTORABLE.sub("\ufffd", text)


def refuse_unstorable_text(doc: object) -> None:
    """Walk a decoded document (iteratively: it may be nested to the parser's limit) and refuse the first
    string, key or value, that cannot be stored, naming its path (`data.essentials.alertId`, `vms[2]`)."""
    stack: list[tuple[str, object]] = [("", doc)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            problem = unstorable(value)
            if problem is not None:
                field = path or "body"
                raise BadRequest(
                    field, f"{field} contains a character that cannot be stored ({problem})", code="InvalidText"
                )
        elif isinstance(value, dict):
            for key, item in value.items():
                child = f"{path}.{printable(clip(key, 60))}" if path else printable(clip(key, 60))
                problem = unstorable(key)
                if problem is not None:
                    raise BadRequest(
                        child,
                        f"the key {child} contains a character that cannot be stored ({problem})",
                        code="InvalidText",
                    )
                stack.append((child, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{index}]", item) for index, item in enumerate(value))


def expect_object(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(field, f"{field} must be a JSON object, got {json_type(value)}", code="WrongType")
    return value


# --- The runbook body ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selector:
    """VMs chosen by place and tag instead of by id: a subscription, optionally one group and one tag.

    `tag_value` None means "any value" (the body said `name` without `=value`).
    """

    subscription: str
    resource_group: str | None = None
    tag_name: str | None = None
    tag_value: str | None = None

    @property
    def scope_id(self) -> str:
        """The ARM id of the narrowest place this selector names, in Azure's comparison form (`azure_key`)."""
        sub = f"/subscriptions/{self.subscription}"
        return f"{sub}/resourcegroups/{azure_key(self.resource_group)}" if self.resource_group else sub

    def overlaps(self, scopes: tuple[str, ...]) -> bool:
        """True when some configured scope contains this selector's place or lies inside it."""
        mine = self.scope_id
        return any(mine == s or mine.startswith(s + "/") or s.startswith(mine + "/") for s in map(azure_key, scopes))

    def describe(self) -> str:
        text = f"subscription {self.subscription}"
        if self.resource_group:
            text += f", resource group {self.resource_group}"
        if self.tag_name:
            text += f", tag {self.tag_name}" + (f"={self.tag_value}" if self.tag_value is not None else "")
        return text


@dataclass(frozen=True)
class RunbookBody:
    """A validated runbook request: either explicit VMs or a selector, plus options and a reason."""

    vms: tuple[VmId, ...]
    selector: Selector | None
    options: RemediationOptions
    reason: str


_FIELDS = (
    "vms",
    "subscription",
    "resourceGroup",
    "tag",
    "plan",
    "dryRun",
    "diagnoseOnly",
    "force",
    "forceKeyStore",
    "reason",
)
_RUNBOOK_PLANS = (Plan.AUTO.value, Plan.FULL.value)


def parse_runbook(body: bytes, *, dry_run_default: bool = False) -> RunbookBody:
    """Validate a runbook body; the first problem found raises `BadRequest` naming its field."""
    doc = expect_object(read_json_body(body), "body")
    unknown = [key for key in doc if key not in _FIELDS]
    if unknown:
        names = ", ".join(repr(clip(key, 60)) for key in unknown[:10])
        raise BadRequest(
            clip(unknown[0], 60) or "body",
            f"unknown field(s) {names} in the body; allowed: {', '.join(_FIELDS)}",
            code="UnknownField",
        )
    has_vms, has_subscription = "vms" in doc, "subscription" in doc
    if has_vms and has_subscription:
        raise BadRequest("vms", "give either vms or subscription (with resourceGroup/tag), not both")
    if not has_vms and not has_subscription:
        raise BadRequest(
            "vms", "vms is missing: give vms (a list of VM resource ids) or subscription", code="MissingField"
        )
    if has_vms:
        for key in ("resourceGroup", "tag"):
            if key in doc:
                raise BadRequest(key, f"{key} narrows a subscription selector; it cannot be used with vms")
    vms = _parse_vm_list(doc["vms"]) if has_vms else ()
    selector = None if has_vms else _parse_selector(doc)
    return RunbookBody(vms, selector, _parse_options(doc, dry_run_default), _parse_reason(doc))


def _parse_vm_list(value: object) -> tuple[VmId, ...]:
    if not isinstance(value, list):
        raise BadRequest("vms", f"vms must be an array of VM resource ids, got {json_type(value)}", code="WrongType")
    if not value:
        raise BadRequest("vms", "vms is empty: give at least one VM resource id")
    if len(value) > MAX_VMS_PER_REQUEST:
        raise BadRequest(
            "vms",
            f"vms has {len(value)} entries; at most {MAX_VMS_PER_REQUEST} per call",
            code="TooManyVms",
        )
    unique: dict[VmId, None] = {}  # an ordered set: the same VM twice (any case) is one request
    for index, item in enumerate(value):
        unique.setdefault(parse_vm_entry(item, f"vms[{index}]"))
    return tuple(unique)


def parse_vm_entry(item: object, field: str) -> VmId:
    """One entry of `vms`: a VM resource id and nothing else (never a host name or an address)."""
    if not isinstance(item, str):
        raise BadRequest(field, f"{field} must be a VM resource id string, got {json_type(item)}", code="WrongType")
    text = item.strip()
    if _is_ip_address(text):
        raise BadRequest(
            field,
            f"{field} is an IP address ({clip(text)!r}); this API accepts VM resource ids only ({VM_ID_SHAPE})",
        )
    if "/" not in text and _HOST_NAME.fullmatch(text):
        raise BadRequest(
            field,
            f"{field} is a host name ({clip(text)!r}); this API accepts VM resource ids only ({VM_ID_SHAPE})",
        )
    if _SCALE_SET_MARK in azure_key(text):
        raise BadRequest(
            field, f"{field} is a scale set or scale set instance; virtual machine scale sets are not yet supported"
        )
    try:
        return VmId.parse(text)
    except InvalidResourceId as exc:
        raise BadRequest(field, f"{field}: {exc.reason}") from None


def _is_ip_address(text: str) -> bool:
    candidate = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ipaddress.ip_address(candidate.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _parse_selector(doc: dict[str, Any]) -> Selector:
    subscription = _expect_string(doc["subscription"], "subscription").strip()
    if fixed_segment(subscription[: len("/subscriptions/")], "/subscriptions/"):
        subscription = subscription[len("/subscriptions/") :].strip("/")
    if not valid_subscription_id(subscription):
        raise BadRequest("subscription", f"subscription {clip(subscription)!r} is not a subscription id (a GUID)")
    group = None
    if doc.get("resourceGroup") is not None:
        group = _expect_string(doc["resourceGroup"], "resourceGroup").strip()
        if not valid_resource_group_name(group):
            raise BadRequest("resourceGroup", f"resourceGroup {clip(group)!r} is not a valid resource group name")
    tag_name, tag_value = None, None
    if doc.get("tag") is not None:
        tag_name, tag_value = _parse_tag(_expect_string(doc["tag"], "tag"))
    return Selector(subscription.lower(), group, tag_name, tag_value)


def _parse_tag(text: str) -> tuple[str, str | None]:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not name or len(name) > 512 or any(ch in name for ch in "<>%&\\?/"):
        raise BadRequest("tag", f"tag {clip(text)!r} is not NAME=VALUE (or NAME for any value)")
    if len(value) > 256:
        raise BadRequest("tag", "tag value is longer than 256 characters")
    return name, (value.strip() if sep else None)


def _parse_options(doc: dict[str, Any], dry_run_default: bool) -> RemediationOptions:
    plan = doc.get("plan", Plan.AUTO.value)
    if not isinstance(plan, str) or plan.strip().lower() not in _RUNBOOK_PLANS:
        shown = clip(plan) if isinstance(plan, str) else json_type(plan)
        raise BadRequest("plan", f"plan must be one of {', '.join(_RUNBOOK_PLANS)}, got {shown!r}")
    flags = {
        key: _expect_bool(doc.get(key, False), key) for key in ("dryRun", "diagnoseOnly", "force", "forceKeyStore")
    }
    return RemediationOptions(
        Plan(plan.strip().lower()),
        # The global dry-run setting cannot be switched off by a caller, only on.
        dry_run=flags["dryRun"] or dry_run_default,
        diagnose_only=flags["diagnoseOnly"],
        force=flags["force"],
        force_keystore=flags["forceKeyStore"],
    )


def _parse_reason(doc: dict[str, Any]) -> str:
    value = doc.get("reason")
    if value is None:
        return ""
    text = _expect_string(value, "reason").strip()
    if len(text) > MAX_REASON_CHARS:
        raise BadRequest("reason", f"reason is {len(text)} characters; at most {MAX_REASON_CHARS}")
    return text


def _expect_string(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(field, f"{field} must be a string, got {json_type(value)}", code="WrongType")
    return value


def _expect_bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(field, f"{field} must be true or false, got {json_type(value)}", code="WrongType")
    return value
