"""`rdp-remediate status REQUEST_ID`: one request's state, steps and outcome from the ledger.

Exit 0 when it finished well (remediated, healthy, or a plan), 1 when it finished badly, 3 while it is still
queued, running or interrupted (resume an interrupted one with `run --resume`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from remediate.cli import EXIT_OK, EXIT_PENDING, EXIT_PROBLEM, EXIT_USAGE
from remediate.cli.common import STORAGE_SETTINGS, add_json_flag, ledger_only, print_json, settings_epilog
from remediate.settings import get_settings

EPILOG = settings_epilog(*STORAGE_SETTINGS, examples=("rdp-remediate status 3f1c0b9e7a2d4c58b6e1f0a9d8c7b6a5 --json",))
FINISHED_WELL = ("remediated", "healthy", "planned")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("request_id", help="the request id printed by run, the alert or the runbook API")
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    from remediate.ledger import DONE

    record = ledger_only(get_settings()).get(args.request_id)
    if record is None:
        print(f"rdp-remediate: no request {args.request_id!r} in the ledger", file=sys.stderr)
        return EXIT_USAGE
    code = EXIT_PENDING if record.state != DONE else EXIT_OK if record.outcome in FINISHED_WELL else EXIT_PROBLEM
    if args.json:
        print_json(record.to_json())
        return code
    print(f"request {record.request_id}: {record.outcome or record.state}  {record.outcome_reason}")
    print(f"vm: {record.vm}\ntrigger: {record.trigger} ({record.reason})")
    for step in record.steps:
        started = dt.datetime.fromtimestamp(step.started_at, dt.UTC).strftime("%H:%M:%S")
        print(f"  {started}  {step.name:<20} {step.status:<8} {step.detail}")
    return code
