"""The product's vocabulary: VM ids, remediation requests, step results, outcomes and error classes.

Nothing here talks to Azure; every other module may import it.
"""

from __future__ import annotations

import enum
import functools
import re
import unicodedata
import uuid
from dataclasses import dataclass, field
from typing import Any, TypeGuard

# --- Errors --------------------------------------------------------------------------------------------


class RemediationError(Exception):
    """Base of the product's errors. `reason` is a sentence an admin can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PermanentError(RemediationError):
    """Retrying will not help: bad input, out of scope, not Windows, a script that failed."""


class TransientError(RemediationError):
    """Worth retrying with backoff: throttling, 5xx, Run Command in progress, agent not ready."""


class NotFound(PermanentError):
    """The resource does not exist (or is not visible to the identity): a wrong or deleted VM."""


class ConfigurationError(PermanentError):
    """A setting is missing or malformed; the message names the environment variable."""


class UntrustedHost(PermanentError):
    """A request carrying our credential would have gone to a host other than the configured Azure endpoints."""


class InvalidResourceId(PermanentError):
    """A string that is not the ARM id of a virtual machine."""


# --- VM ids --------------------------------------------------------------------------------------------

# Azure compares resource ids (and tag names) with .NET's ordinal ignore-case rule: one character against
# one character through the simple upper-case mapping, no Unicode case folding. So U+212A KELVIN SIGN is not
# `k`, `ß` is not `ss`, and the dotted and dotless i are four different letters. Python's `lower()` and
# `casefold()` are wider (U+212A.lower() == "k"): every comparison of ids, scopes, tags and keys goes through
# `azure_key` instead.


@functools.cache
def _fold_char(char: str) -> str:
    """The lower-case twin of `char` when the two form a one-to-one case pair, else `char` itself.

    A mapping that is not a round trip (U+212A -> k -> K, U+0130 -> i + dot, U+0131 -> I -> i, U+017F -> S -> s,
    U+1E9E -> ß -> SS) keeps the character. Where .NET would still equate a pair that is not a round trip (a
    Greek final sigma and sigma), we keep them apart: stricter than Azure, never looser, so a look-alike can
    at worst fall out of scope, never into it.
    """
    lower = char.lower()
    if len(lower) != 1 or lower == char or lower.upper() != char:
        return char
    return lower


def azure_key(text: str) -> str:
    """`text` in the one spelling Azure's case-insensitive comparison cannot tell apart (lower case).

    For ASCII this is `text.lower()`, so keys made before this rule (ASCII ids) are unchanged.
    """
    if text.isascii():
        return text.lower()
    return "".join(map(_fold_char, text))


def azure_equal(left: str, right: str) -> bool:
    return azure_key(left) == azure_key(right)


# Fixed segments compare as ASCII only: `re.IGNORECASE` alone would let `provider\u017f` match `providers`.
_ID_SEGMENTS = (
    "subscriptions",
    None,
    "resourcegroups",
    None,
    "providers",
    "microsoft.compute",
    "virtualmachines",
    None,
)
# Used with fullmatch only: `$` would also match before a final newline (`vm1\n` passing as `vm1`).
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE | re.ASCII)
# Azure VM names: 1-64 characters (Windows computer names are shorter, but the resource name is not).
_VM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", re.ASCII)
# Resource group names: 1-90 of letters and digits as .NET's Char.IsLetterOrDigit sees them (Unicode letters
# are allowed), underscores, hyphens, periods and parentheses; not ending in a period.
_RG_PUNCTUATION = frozenset("-_.()")
_LETTER_OR_DIGIT = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Nd"})


def valid_request_id(text: object) -> TypeGuard[str]:
    """A request id becomes a Table partition key: ASCII letters and digits only (1-64), as intake makes them.

    `str.isalnum()` alone would take any Unicode letter or digit.
    """
    return isinstance(text, str) and 0 < len(text) <= 64 and text.isascii() and text.isalnum()


def find_tag(tags: dict[str, str], name: str) -> str | None:
    """The value of tag `name`, its name compared as Azure compares tag names; None when absent."""
    wanted = azure_key(name)
    return next((value for key, value in tags.items() if azure_key(key) == wanted), None)


def fixed_segment(segment: str, expected: str) -> bool:
    """True when `segment` is the ASCII word `expected` in any ASCII case (never a Unicode look-alike)."""
    return segment.isascii() and segment.lower() == expected


def valid_subscription_id(text: str) -> bool:
    return bool(_GUID.fullmatch(text))


def valid_resource_group_name(name: str) -> bool:
    if not 1 <= len(name) <= 90 or name.endswith("."):
        return False
    return all(ch in _RG_PUNCTUATION or unicodedata.category(ch) in _LETTER_OR_DIGIT for ch in name)


@dataclass(frozen=True, order=True)
class VmId:
    """A virtual machine's ARM id, normalised so that ids differing only in case compare equal.

    Azure treats resource ids case-insensitively and alerts often lower-case them; we keep the
    subscription as a lower-case GUID and compare group and name case-insensitively, while `str()`
    keeps the spelling we were first given (ARM accepts it either way).
    """

    subscription: str
    resource_group: str
    name: str

    @classmethod
    def parse(cls, text: object) -> VmId:
        if not isinstance(text, str):
            raise InvalidResourceId(f"expected a VM resource id string, got {type(text).__name__}")
        candidate = text.strip().rstrip("/")
        parts = candidate.split("/")
        if (
            parts[0] != ""
            or len(parts) != len(_ID_SEGMENTS) + 1
            or not all(
                expected is None or fixed_segment(part, expected)
                for part, expected in zip(parts[1:], _ID_SEGMENTS, strict=True)
            )
        ):
            raise InvalidResourceId(
                f"{_clip(text)!r} is not a virtual machine resource id "
                "(/subscriptions/GUID/resourceGroups/NAME/providers/Microsoft.Compute/virtualMachines/NAME)"
            )
        sub, rg, name = parts[2], parts[4], parts[8]
        if not valid_subscription_id(sub):
            raise InvalidResourceId(f"subscription {_clip(sub)!r} in {_clip(text)!r} is not a GUID")
        if not valid_resource_group_name(rg):
            raise InvalidResourceId(f"resource group {_clip(rg)!r} in {_clip(text)!r} is not a valid name")
        if not _VM_NAME.fullmatch(name):
            raise InvalidResourceId(f"VM name {_clip(name)!r} in {_clip(text)!r} is not a valid name")
        return cls(sub.lower(), rg, name)

    @property
    def key(self) -> str:
        """The id as Azure compares it (`azure_key`): use it for dedup, locks and comparisons."""
        return azure_key(str(self))

    @property
    def resource_group_id(self) -> str:
        return f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"

    def in_scope(self, scopes: tuple[str, ...]) -> bool:
        """True when a scope (a subscription or resource-group id) contains this VM, by Azure's comparison."""
        sub = f"/subscriptions/{self.subscription}"
        rg = azure_key(self.resource_group_id)
        return any(azure_key(scope.rstrip("/")) in (sub, rg) for scope in scopes)

    def __str__(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.Compute/virtualMachines/{self.name}"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VmId) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


def _clip(text: object, limit: int = 200) -> str:
    value = str(text)
    return value if len(value) <= limit else value[:limit] + "..."


# --- Requests and outcomes -----------------------------------------------------------------------------


class Plan(enum.StrEnum):
    AUTO = "auto"  # diagnose, least disruptive repairs for the findings, escalate if still broken
    FULL = "full"  # MachineKeys rename + certificate renewal regardless of findings
    RENEW_ONLY = "renew-only"  # proactive renewal from the sweep: certificate only, no reboot


class Outcome(enum.StrEnum):
    REMEDIATED = "remediated"  # repaired and verified from outside and inside
    HEALTHY = "healthy"  # nothing to do
    SKIPPED = "skipped"  # not touched, with a reason
    FAILED = "failed"  # a step failed, with the step and the reason
    UNVERIFIED = "unverified"  # repaired, in-guest check passed, no network path for the probe
    PLANNED = "planned"  # dry run: what would have happened

    @property
    def succeeded(self) -> bool:
        return self in (Outcome.REMEDIATED, Outcome.HEALTHY)


class Trigger(enum.StrEnum):
    ALERT = "alert"
    RUNBOOK = "runbook"
    SWEEP = "sweep"
    CLI = "cli"


@dataclass(frozen=True)
class RemediationOptions:
    plan: Plan = Plan.AUTO
    dry_run: bool = False
    diagnose_only: bool = False
    force: bool = False  # restart services and reboot despite remote sessions
    force_keystore: bool = False  # rename MachineKeys although other key files live in it (never a DC or CA)

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan.value,
            "dryRun": self.dry_run,
            "diagnoseOnly": self.diagnose_only,
            "force": self.force,
            "forceKeyStore": self.force_keystore,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RemediationOptions:
        return cls(
            Plan(data.get("plan", "auto")),
            bool(data.get("dryRun", False)),
            bool(data.get("diagnoseOnly", False)),
            bool(data.get("force", False)),
            bool(data.get("forceKeyStore", False)),
        )


@dataclass(frozen=True)
class RemediationRequest:
    """One VM to look at, why, and how: the unit the queue carries and the ledger records."""

    vm: VmId
    trigger: Trigger
    reason: str
    options: RemediationOptions = RemediationOptions()
    dedup_key: str | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    SCHEMA_VERSION = 1

    def to_message(self) -> dict[str, Any]:
        """The queue message body (versioned)."""
        return {
            "schema": self.SCHEMA_VERSION,
            "requestId": self.request_id,
            "vm": str(self.vm),
            "trigger": self.trigger.value,
            "reason": self.reason,
            "options": self.options.to_json(),
            "dedupKey": self.dedup_key,
        }

    @classmethod
    def from_message(cls, data: object) -> RemediationRequest:
        """Parse a queue message; anything unexpected is a PermanentError naming the field."""
        if not isinstance(data, dict):
            raise PermanentError("queue message is not a JSON object")
        if data.get("schema") != cls.SCHEMA_VERSION:
            raise PermanentError(f"queue message schema {data.get('schema')!r} is not {cls.SCHEMA_VERSION}")
        try:
            options = RemediationOptions.from_json(dict(data.get("options") or {}))
            trigger = Trigger(data["trigger"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentError(f"queue message has a bad trigger or options: {exc}") from None
        request_id = data.get("requestId")
        if not valid_request_id(request_id):
            raise PermanentError("queue message has no valid requestId (letters and digits, at most 64)")
        return cls(
            VmId.parse(data.get("vm")),
            trigger,
            str(data.get("reason", "")),
            options,
            data.get("dedupKey"),
            request_id,
        )


@dataclass
class StepResult:
    """One step of a workflow as the ledger records it."""

    name: str
    status: str  # "started" | "ok" | "skipped" | "failed"
    started_at: float
    finished_at: float | None = None
    detail: str = ""
    summary: dict[str, Any] | None = None  # a guest script's JSON summary, when the step ran one

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "detail": self.detail,
            "summary": self.summary,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepResult:
        return cls(
            data["name"],
            data["status"],
            data["startedAt"],
            data.get("finishedAt"),
            data.get("detail", ""),
            data.get("summary"),
        )
