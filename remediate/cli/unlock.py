"""`rdp-remediate unlock --vm ID --reason WHY`: release a VM's lock that a stopped run left behind.

Refused while the lock holder's restart is in flight (a restart was sent and its wait has not finished): a
second request could then act on a VM that is still rebooting. Who released it and why is written to the
holder's audit record, which is marked interrupted so that `run --resume` can still continue it.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import socket
import sys
from collections.abc import Sequence

from remediate.cli import EXIT_OK, EXIT_REFUSED
from remediate.cli.common import STORAGE_SETTINGS, add_json_flag, ledger_only, print_json, settings_epilog, vm_id
from remediate.model import StepResult
from remediate.settings import get_settings

log = logging.getLogger("remediate.cli.unlock")

EPILOG = settings_epilog(
    *STORAGE_SETTINGS,
    examples=('rdp-remediate unlock --vm ID --reason "run stopped by Ctrl-C; VM checked by hand (INC0012345)"',),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vm", required=True, type=vm_id, help="the VM's resource id")
    parser.add_argument("--reason", required=True, help="why the lock may go: recorded with your name")
    parser.add_argument("--by", default=None, help="who releases it (default: user@host)")
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    from remediate.ledger import DONE

    ledger = ledger_only(get_settings())
    state = ledger.vm_state(args.vm)
    who = args.by or f"{getpass.getuser()}@{socket.gethostname()}"
    if not state.owner:
        return _answer(args, "unlocked", f"{args.vm.name} is not locked", None)
    holder = ledger.get(state.owner)
    in_flight = restart_in_flight(holder.steps) if holder is not None else None
    if in_flight:
        print(
            f"rdp-remediate: refused: request {state.owner} sent a restart of {args.vm.name} ({in_flight}) and has "
            f"not seen the VM come back; wait for it (`rdp-remediate status {state.owner}`) or resume it",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    note = f"lock released by {who}: {args.reason}"
    if holder is not None and holder.state != DONE:
        ledger.mark_interrupted(state.owner, note)
    ledger.release(args.vm, state.owner)
    log.warning("lock released by an operator", extra={"vm": str(args.vm), "request_id": state.owner, "by": who})
    return _answer(args, "released", f"released the lock of {args.vm.name} held by request {state.owner}", state.owner)


def restart_in_flight(steps: Sequence[StepResult]) -> str | None:
    """The reboot step whose restart may still be under way: sent (or maybe sent) and no finished wait after."""
    last_reboot, waited = None, False
    for step in steps:
        name, status = step.name, step.status
        if name.startswith("reboot") and status in ("ok", "started"):
            last_reboot, waited = name, False
        elif name.startswith("wait") and status in ("ok", "failed") and last_reboot is not None:
            waited = True
    return last_reboot if last_reboot and not waited else None


def _answer(args: argparse.Namespace, result: str, text: str, request_id: str | None) -> int:
    if args.json:
        print_json({"vm": str(args.vm), "result": result, "heldBy": request_id, "reason": args.reason})
    else:
        print(text)
    return EXIT_OK
