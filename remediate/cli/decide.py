"""`rdp-remediate approve|reject REQUEST_ID --reason WHY`: decide on a request waiting for approval.

From the command line the authority is access to the ledger's storage (the same as `unlock` and `release`); the
decision is recorded with `--by` (default user@host) and the reason. Over HTTP, the approver app role and the
principal App Service authentication vouches for are required instead (docs/operations.md).
"""

from __future__ import annotations

import argparse
import getpass
import socket
import sys

from remediate.cli import EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from remediate.cli.common import STORAGE_SETTINGS, add_json_flag, ledger_only, print_json, settings_epilog
from remediate.settings import get_settings

EPILOG = settings_epilog(
    *STORAGE_SETTINGS,
    "RDPR_QUEUE_NAME",
    examples=(
        'rdp-remediate approve 3f1c0b9e7a2d4c58b6e1f0a9d8c7b6a5 --reason "plan checked (CHG0042)"',
        'rdp-remediate reject 3f1c0b9e7a2d4c58b6e1f0a9d8c7b6a5 --reason "the owner renews it"',
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("request_id", help="the id of a request in state awaiting-approval")
    parser.add_argument("--reason", required=True, help="why: recorded with your name")
    parser.add_argument("--by", default=None, help="who decides (default: user@host)")
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    from remediate.intake.app import App
    from remediate.intake.approval import NotAwaiting, decide
    from remediate.model import NotFound

    settings = get_settings()
    ledger_only(settings)  # checks storage first, with the usual one-line error
    app = App(settings)
    who = args.by or f"{getpass.getuser()}@{socket.gethostname()}"
    approve = args.command == "approve"
    try:
        decided = decide(app.ledger, app.queue.queue, args.request_id, who, args.reason, approve=approve)
    except NotFound as exc:
        print(f"rdp-remediate: {exc.reason}", file=sys.stderr)
        return EXIT_USAGE
    except NotAwaiting as exc:
        print(f"rdp-remediate: refused: {exc.reason}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print_json(decided)
    else:
        print(f"{decided['decision']} request {args.request_id} ({who})")
    return EXIT_OK
