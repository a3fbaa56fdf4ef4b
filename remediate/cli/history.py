"""`rdp-remediate history --vm ID`: the recent remediations of one VM, newest first."""

from __future__ import annotations

import argparse

from remediate.cli.common import add_json_flag, print_json, services, vm_id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vm", required=True, type=vm_id, help="the VM's resource id")
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    _, ledger, _ = services()
    records = ledger.history(args.vm)
    state = ledger.vm_state(args.vm)
    if args.json:
        print_json(
            {
                "vm": str(args.vm),
                "lockedBy": state.owner,
                "attempts": state.attempts,
                "remediations": [record.to_json() for record in records],
            }
        )
        return 0
    if not records:
        print(f"no remediation recorded for {args.vm.name}")
        return 0
    for record in records:
        when = record.accepted_at.strftime("%Y-%m-%d %H:%M:%S")
        outcome = record.outcome or record.state
        print(f"{when}  {record.request_id}  {record.trigger:<7}  {outcome:<11}  {record.outcome_reason}")
    return 0
