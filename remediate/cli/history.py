"""`rdp-remediate history --vm ID`: the recent remediations of one VM, newest first."""

from __future__ import annotations

import argparse

from remediate.cli.common import STORAGE_SETTINGS, add_json_flag, ledger_only, print_json, settings_epilog, vm_id
from remediate.settings import get_settings

EPILOG = settings_epilog(*STORAGE_SETTINGS, examples=("rdp-remediate history --vm ID --json",))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vm", required=True, type=vm_id, help="the VM's resource id")
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    ledger = ledger_only(get_settings())
    records = ledger.history(args.vm)
    state = ledger.vm_state(args.vm)
    if args.json:
        print_json(
            {
                "vm": str(args.vm),
                "lockedBy": state.owner,
                "lockExpires": state.lock_expires,
                "attempts": state.attempts,
                "remediations": [record.to_json() for record in records],
            }
        )
        return 0
    if state.owner:
        print(f"locked by request {state.owner} until {state.lock_expires:%Y-%m-%d %H:%M} UTC")
    if not records:
        print(f"no remediation recorded for {args.vm.name}")
        return 0
    for record in records:
        when = record.accepted_at.strftime("%Y-%m-%d %H:%M:%S")
        outcome = record.outcome or record.state
        print(f"{when}  {record.request_id}  {record.trigger:<7}  {outcome:<11}  {record.outcome_reason}")
    return 0
