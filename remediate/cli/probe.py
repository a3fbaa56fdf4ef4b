"""`rdp-remediate probe HOST`: does RDP work on this host, and if not, what to do about it.

An admin's tool: any host name or IP address is accepted here (the HTTP API, by contrast, only ever takes VM
resource ids). The first line printed is the verdict; details follow. Exit 0 when RDP works (`healthy`,
`expiring-soon`), 1 for every other status, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
from typing import Any

from remediate.cli.common import print_json
from remediate.model import ConfigurationError
from remediate.probe import ProbeResult, probe
from remediate.settings import SPECS, SettingSpec

EXIT_OK, EXIT_PROBLEM = 0, 1
EPILOG = """examples:
  rdp-remediate probe 10.0.1.4
  rdp-remediate probe vm01.contoso.com --port 3390 --json

settings read (environment; README "Configuration"):
  RDPR_RDP_PORT, RDPR_PROBE_TIMEOUT_SECONDS, RDPR_EXPIRY_WARNING_DAYS (options override them)"""

# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens, 253 characters at most.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", type=_host, help="host name, IPv4 or IPv6 address (brackets allowed: [::1])")
    parser.add_argument(
        "--port", type=_port, default=None, help=f"TCP port (default: {_default_text('RDPR_RDP_PORT')})"
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help=f"overall deadline of the probe (default: {_default_text('RDPR_PROBE_TIMEOUT_SECONDS')})",
    )
    parser.add_argument(
        "--expiry-warning-days",
        type=_days,
        default=None,
        metavar="N",
        help="a certificate with fewer days left is expiring-soon "
        f"(default: {_default_text('RDPR_EXPIRY_WARNING_DAYS')})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    port = args.port if args.port is not None else _setting("RDPR_RDP_PORT")
    if not 1 <= port <= 65535:
        raise ConfigurationError(f"RDPR_RDP_PORT: expected a port between 1 and 65535, got {port}")
    result = probe(
        args.host,
        port,
        timeout=args.timeout if args.timeout is not None else _setting("RDPR_PROBE_TIMEOUT_SECONDS"),
        expiry_warning_days=(
            args.expiry_warning_days if args.expiry_warning_days is not None else _setting("RDPR_EXPIRY_WARNING_DAYS")
        ),
    )
    if args.json:
        print_json(result.to_json())
    else:
        print(render(result))
    return EXIT_OK if result.rdp_works else EXIT_PROBLEM


def render(result: ProbeResult) -> str:
    """The verdict sentence, then the facts behind it, aligned for a terminal."""
    endpoint = f"[{result.host}]:{result.port}" if ":" in result.host else f"{result.host}:{result.port}"
    rows: list[tuple[str, str]] = [("endpoint", endpoint), ("status", str(result.status))]
    if result.selected_protocol:
        rows.append(("selected protocol", result.selected_protocol))
    if result.negotiation_failure:
        rows.append(("negotiation failure", result.negotiation_failure))
    if result.tls_version:
        rows.append(("tls", f"{result.tls_version}, {result.tls_cipher or 'unknown cipher'}"))
    cert = result.certificate
    if cert is not None:
        rows += [
            ("subject", cert.subject),
            ("issuer", cert.issuer + (" (self-signed)" if cert.self_signed else "")),
            ("valid from", _when(cert.not_before)),
            ("valid until", f"{_when(cert.not_after)} ({_days_text(cert.days_remaining)})"),
            ("thumbprint", cert.thumbprint_sha1),
        ]
    rows.append(("elapsed", f"{result.elapsed_ms:.0f} ms"))
    width = max(len(name) for name, _ in rows)
    return "\n".join([result.detail, *(f"  {name:<{width}}  {value}" for name, value in rows)])


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _days_text(days: int) -> str:
    if days < 0:
        return f"expired {-days} day{'s' if days != -1 else ''} ago"
    return f"{days} day{'s' if days != 1 else ''} left"


# --- Argument and setting parsing ------------------------------------------------------------------------


def _host(text: str) -> str:
    candidate = text.strip()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
        _ip(candidate, text)
        return candidate
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        pass
    else:
        return candidate
    name = candidate.removesuffix(".")
    if ":" in candidate or "/" in candidate:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a host name or IP address (give the port with --port, and no URL scheme)"
        )
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid host name or IP address")
    return candidate


def _ip(candidate: str, text: str) -> None:
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid bracketed IPv6 address") from None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {text!r} is not a number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 1-65535")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"timeout {text!r} is not a number of seconds") from None
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"timeout {text} must be more than 0 and at most 600 seconds")
    return value


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expiry warning days must be at least 1, got {value}")
    return value


def _spec(env: str) -> SettingSpec:
    return next(spec for spec in SPECS if spec.env == env)


def _default_text(env: str) -> str:
    return f"${env} or {_spec(env).default}"


def _setting(env: str) -> Any:
    """One setting from the environment, parsed like `Settings.from_env` does, without requiring the
    unrelated settings of the Function to be valid on an admin's laptop."""
    spec = _spec(env)
    text = os.environ.get(env, spec.default)
    try:
        return spec.parse(text)
    except ValueError as exc:
        raise ConfigurationError(f"{env}: {exc}") from None
