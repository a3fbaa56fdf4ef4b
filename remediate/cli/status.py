"""`rdp-remediate status REQUEST_ID`: one request's state, steps and outcome from the ledger."""

from __future__ import annotations

import argparse
import datetime as dt

from remediate.cli.common import add_json_flag, print_json, services


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("request_id", help="the request id printed by run, the alert or the runbook API")
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    _, ledger, _ = services()
    record = ledger.get(args.request_id)
    if record is None:
        print(f"rdp-remediate: no request {args.request_id!r} in the ledger")
        return 1
    if args.json:
        print_json(record.to_json())
        return 0 if record.outcome in ("remediated", "healthy") else 1
    print(f"request {record.request_id}: {record.outcome or record.state}  {record.outcome_reason}")
    print(f"vm: {record.vm}\ntrigger: {record.trigger} ({record.reason})")
    for step in record.steps:
        started = dt.datetime.fromtimestamp(step.started_at, dt.UTC).strftime("%H:%M:%S")
        print(f"  {started}  {step.name:<20} {step.status:<8} {step.detail}")
    return 0 if record.outcome in ("remediated", "healthy") else 1
