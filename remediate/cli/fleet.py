"""`rdp-remediate fleet`: every VM's RDP listener certificate as the last sweep saw it.

First a summary by probe status, then the expiry forecast (certificates expiring in each coming week), then the
VMs needing attention, most urgent first. Reads only the fleet inventory in Table storage: no Azure call.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from remediate.cli.common import STORAGE_SETTINGS, add_json_flag, fleet_store, print_json, settings_epilog
from remediate.settings import Settings, get_settings

EPILOG = settings_epilog(
    *STORAGE_SETTINGS,
    examples=(
        "rdp-remediate fleet",
        "rdp-remediate fleet --expiring-within 30",
        "rdp-remediate fleet --json | jq '.attention[] | .vm'",
    ),
)


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if not 0 <= value <= 3650:
        raise argparse.ArgumentTypeError(f"days must be between 0 and 3650, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--expiring-within",
        type=_days,
        metavar="DAYS",
        default=None,
        help="list only the VMs whose certificate expires within DAYS (expired ones included)",
    )
    parser.add_argument("--weeks", type=int, default=8, choices=range(1, 53), metavar="N", help="forecast weeks (8)")
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    from remediate.fleet import forecast, needing_attention, summary_by_status

    settings = get_settings()
    store = fleet_store(settings)
    held = held_requests(settings)
    observations = store.latest_observations()
    today = dt.datetime.now(dt.UTC).date()
    expired, weeks = forecast(observations, today, args.weeks)
    attention = needing_attention(observations, args.expiring_within)
    last = next(store.recent_sweeps(limit=1), None)
    data: dict[str, Any] = {
        "vms": len(observations),
        "lastSweep": last.to_json() if last else None,
        "byStatus": summary_by_status(observations),
        "forecast": {"expired": expired, "weeks": [w.to_json() for w in weeks]},
        "expiringWithinDays": args.expiring_within,
        "attention": [o.to_json() for o in attention],
        "held": held,
    }
    if args.json:
        print_json(data)
        return 0
    _print_held(held)
    if not observations:
        print("no sweep has been recorded yet: run `rdp-remediate sweep` (report mode changes nothing)")
        return 0
    _print_text(data, attention)
    return 0


def held_requests(settings: Settings) -> list[dict[str, str]]:
    """Requests the storm guard holds: what waits for the budget, and why (release with `rdp-remediate release`)."""
    from remediate.cli.common import ledger_only
    from remediate.ledger import HELD

    records = ledger_only(settings).requests_in_state(HELD)
    return [{"requestId": r.request_id, "vm": r.vm, "trigger": r.trigger, "reason": r.outcome_reason} for r in records]


def _print_held(held: list[dict[str, str]]) -> None:
    if not held:
        return
    print(f"{len(held)} requests held by the storm guard (`rdp-remediate release ID --reason ...` runs one now):")
    for item in held:
        print(f"  {item['requestId']}  {item['vm'].rsplit('/', 1)[-1]}  {item['reason']}")


def _print_text(data: dict[str, Any], attention: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120, highlight=False, soft_wrap=False, force_terminal=sys.stdout.isatty())
    last = data["lastSweep"]
    when = f", last sweep {last['startedAt'][:16].replace('T', ' ')} UTC ({last['mode']} mode)" if last else ""
    console.print(f"{data['vms']} Windows VMs in the inventory{when}")
    summary = Table(title="by probe status", title_justify="left", box=None, pad_edge=False)
    summary.add_column("status")
    summary.add_column("VMs", justify="right")
    for status, count in data["byStatus"].items():
        summary.add_row(status, str(count))
    console.print(summary)
    forecast = data["forecast"]
    chart = Table(title="listener certificates expiring, by week starting", title_justify="left", box=None)
    chart.add_column("expired", justify="right")
    for week in forecast["weeks"]:
        chart.add_column(week["weekStart"][5:], justify="right")
    chart.add_row(str(forecast["expired"]), *(str(w["expiring"]) for w in forecast["weeks"]))
    console.print(chart)
    within = data["expiringWithinDays"]
    heading = f"expiring within {within} days" if within is not None else "needing attention"
    if not attention:
        console.print(f"no VM {heading}")
        return
    table = Table(title=f"{len(attention)} VMs {heading}", title_justify="left")
    for column in ("VM", "resource group", "status", "days", "issuer", "finding", "disposition"):
        table.add_column(column, overflow="fold", justify="right" if column == "days" else "left")
    for o in attention:
        table.add_row(
            o.vmName,
            o.resourceGroup,
            o.probeStatus,
            "" if o.daysLeft is None else str(o.daysLeft),
            o.issuerKind,
            o.finding,
            f"{o.disposition}: {o.dispositionReason}" if o.disposition else "",
        )
    console.print(table)
