"""The guest scripts shipped with the package and the JSON summary each prints as its last line of output.

Run Command returns only the last 4096 bytes of a script's output, so each script ends with one compact JSON
object (`contract.schema.json`). This module finds that line in what Run Command returned, validates it and
turns anything else into a `GuestOutputError` that quotes the end of the output, so an admin sees what the
guest said.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from remediate.model import PermanentError

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

SCRIPTS: tuple[str, ...] = (
    "diagnose",
    "renew-certificate",
    "repair-machinekeys",
    "reset-machinekeys",
    "enable-firewall-rule",
    "enable-tls12",
)

# The parameters each script declares in its param() block. Run Command passes every value as a string;
# booleans are the strings "true" / "false" (see docs/guest-scripts.md for why not [switch]). Targets (a
# thumbprint, a key file name, a rule name) are validated by pattern in the script and never interpolated.
PARAMETERS: Mapping[str, frozenset[str]] = {
    "diagnose": frozenset({"DetectOnly"}),
    "renew-certificate": frozenset({"DetectOnly", "Force", "Thumbprint", "Successor", "KeyFile"}),
    "repair-machinekeys": frozenset({"DetectOnly", "Mode", "Thumbprint", "KeyFile"}),
    "reset-machinekeys": frozenset({"DetectOnly", "Force", "AllowSessions"}),
    "enable-firewall-rule": frozenset({"DetectOnly", "RuleName", "Port"}),
    "enable-tls12": frozenset({"DetectOnly"}),
}

_QUOTE_CHARS = 600  # how much of each stream an error message quotes
# The "Undo:" paragraph of a script's comment-based help (.NOTES): up to a blank line or the end of the help.
_UNDO_NOTE = re.compile(r"^\s*Undo:\s*(?P<text>.+?)\n(?=\s*\n|#>)", re.MULTILINE | re.DOTALL)
_VERSION_LINE = re.compile(r"^\$ScriptVersion\s*=\s*'(?P<version>[0-9]+\.[0-9]+\.[0-9]+)'\s*$", re.MULTILINE)


class GuestOutputError(PermanentError):
    """A guest script's output holds no valid summary: it failed before printing one, or broke the contract."""


def _check_name(name: str) -> None:
    if name not in SCRIPTS:
        raise ValueError(f"unknown guest script {name!r}; known: {', '.join(SCRIPTS)}")


@cache
def script_text(name: str) -> str:
    """The PowerShell source of a guest script, as shipped in the package."""
    _check_name(name)
    return resources.files("remediate.guest").joinpath(f"{name}.ps1").read_text(encoding="utf-8")


@cache
def script_version(name: str) -> str:
    """The `$ScriptVersion` a script declares (and reports in its summary)."""
    match = _VERSION_LINE.search(script_text(name))
    if match is None:
        raise ValueError(f"guest script {name!r} declares no $ScriptVersion = 'x.y.z'")
    return match.group("version")


@cache
def undo_note(name: str) -> str | None:
    """How to undo what a script changes, from its own help (`.NOTES`, "Undo:"): the one text an admin reads
    with Get-Help and the report quotes."""
    match = _UNDO_NOTE.search(script_text(name))
    return " ".join(match.group("text").split()) if match else None


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema (Draft 2020-12) of a summary."""
    text = resources.files("remediate.guest").joinpath("contract.schema.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator() -> Draft202012Validator:
    from jsonschema import Draft202012Validator  # about 80 ms: paid on the first validation, not at import

    Draft202012Validator.check_schema(schema())
    return Draft202012Validator(schema())


def validate_summary(obj: object, expected_script: str) -> dict[str, Any]:
    """`obj` when it is a valid summary of `expected_script` (and of the version we ship); else GuestOutputError."""
    _check_name(expected_script)
    errors = sorted(_validator().iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        details = "; ".join(f"{_path(e.absolute_path)}: {e.message[:200]}" for e in errors[:3])
        raise GuestOutputError(f"{expected_script} summary violates the contract: {details}")
    assert isinstance(obj, dict)  # the schema requires an object
    if obj["script"] != expected_script:
        raise GuestOutputError(f"expected the summary of {expected_script}, got one of {obj['script']}")
    if obj["version"] != script_version(expected_script):
        raise GuestOutputError(
            f"{expected_script} reported version {obj['version']}, "
            f"but this build ships {script_version(expected_script)}"
        )
    return obj


def parse_output(stdout: str, stderr: str, expected_script: str) -> dict[str, Any]:
    """The validated summary: the last line of `stdout` that parses as a JSON object.

    Run Command may have cut the output at the front (only the last 4096 bytes survive), so earlier lines,
    including a partial first one, are ignored.
    """
    for line in reversed(stdout.splitlines()):
        candidate = line.strip()
        if not candidate.startswith("{"):
            continue
        try:
            obj = json.loads(candidate)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        try:
            return validate_summary(obj, expected_script)
        except GuestOutputError as exc:
            raise GuestOutputError(f"{exc.reason}{_quote(stdout, stderr)}") from None
    raise GuestOutputError(f"{expected_script} printed no JSON summary{_quote(stdout, stderr)}")


def _path(parts: Any) -> str:
    return "/".join(str(p) for p in parts) or "(summary)"


def _quote(stdout: str, stderr: str) -> str:
    """The end of both streams, for an admin reading the error."""
    parts = []
    for name, text in (("StdOut", stdout), ("StdErr", stderr)):
        tail = text.strip()
        if tail:
            clipped = tail[-_QUOTE_CHARS:]
            parts.append(f"{name} ends: {'...' if len(tail) > len(clipped) else ''}{clipped}")
    return "; " + " | ".join(parts) if parts else "; StdOut and StdErr are empty"
