"""The PowerShell repair scripts rdp-remediate runs inside Windows guests, and their output contract."""

from remediate.guest.contract import (
    PARAMETERS,
    SCRIPTS,
    GuestOutputError,
    parse_output,
    script_text,
    script_version,
    validate_summary,
)

__all__ = [
    "PARAMETERS",
    "SCRIPTS",
    "GuestOutputError",
    "parse_output",
    "script_text",
    "script_version",
    "validate_summary",
]
