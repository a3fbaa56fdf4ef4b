"""`rdp-remediate report [--request ID | --since DAYS] --html FILE`: one HTML file a person attaches to a ticket.

The fleet's expiry forecast and status (when a sweep has been recorded), the outcomes, and each request's
evidence: probe before and after, the in-guest findings, every step with its summary, and how to undo each
change. Self-contained (inline CSS and SVG, no script, no network): it opens anywhere, offline.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from remediate.cli import EXIT_OK, EXIT_USAGE
from remediate.cli.common import STORAGE_SETTINGS, fleet_store, ledger_only, settings_epilog
from remediate.settings import get_settings

EPILOG = settings_epilog(
    *STORAGE_SETTINGS,
    examples=(
        "rdp-remediate report --since 7 --html rdp-week.html",
        "rdp-remediate report --request 3f1c0b9e7a2d4c58b6e1f0a9d8c7b6a5 --html INC0012345.html",
    ),
)
MAX_REQUESTS = 500  # newest first; a report is read by a person


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if not 1 <= value <= 365:
        raise argparse.ArgumentTypeError(f"days must be between 1 and 365, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--request", metavar="ID", help="one request's evidence")
    which.add_argument("--since", type=_days, default=7, metavar="DAYS", help="requests of the last DAYS (7)")
    parser.add_argument("--html", required=True, type=Path, metavar="FILE", help="where to write the report")


def run(args: argparse.Namespace) -> int:
    from remediate.cli.report_html import render

    data = gather(args.request, args.since)
    if data is None:
        print(f"rdp-remediate: no request {args.request!r} in the ledger", file=sys.stderr)
        return EXIT_USAGE
    path: Path = args.html
    try:
        path.write_text(render(data), encoding="utf-8")
    except OSError as exc:
        print(f"rdp-remediate: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {path} ({len(data['requests'])} requests)")
    return EXIT_OK


def gather(request_id: str | None, since_days: int, now: dt.datetime | None = None) -> dict[str, Any] | None:
    from remediate.fleet import forecast, summary_by_status

    now = now or dt.datetime.now(dt.UTC)
    settings = get_settings()
    ledger = ledger_only(settings)
    if request_id is not None:
        record = ledger.get(request_id)
        if record is None:
            return None
        records, scope = [record], f"request {request_id}"
    else:
        since = now - dt.timedelta(days=since_days)
        rows = ledger.audit.query_entities(
            "RowKey eq @row and AcceptedAt ge @since",
            parameters={"row": "request", "since": since},
            select=["PartitionKey", "AcceptedAt"],
        )
        newest = sorted(rows, key=lambda row: row["AcceptedAt"], reverse=True)[:MAX_REQUESTS]
        records = [r for row in newest if (r := ledger.get(row["PartitionKey"])) is not None]
        scope = f"requests accepted in the last {since_days} days"
    store = fleet_store(settings)
    observations = store.latest_observations(now.date())
    expired, weeks = forecast(observations, now.date())
    return {
        "generatedAt": now.strftime("%Y-%m-%d %H:%M"),
        "scope": scope,
        "forecast": {"expired": expired, "weeks": [w.to_json() for w in weeks]} if observations else None,
        "byStatus": summary_by_status(observations),
        "requests": [r.to_json() for r in records],
    }
