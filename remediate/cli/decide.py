"""`rdp-remediate approve|reject REQUEST_ID --reason WHY`: decide on a request waiting for approval.

The decision is recorded in the name of whoever runs the command, as their own Azure credential says: the
`oid`, `tid` and user (`upn`) or application (`appid`) claims of its token for Resource Manager
(remediate.azure.identity). Nobody types the approver's name. `--on-behalf-of` (also `--by`) adds a separate note,
recorded and shown as a claim of the caller's (`OnBehalfOf`), never as the approver. The authority to decide from
the command line is access to the ledger's storage (as for `unlock` and `release`); over HTTP, the approver app
role and the principal App Service authentication vouches for are required instead (docs/operations.md).
"""

from __future__ import annotations

import argparse
import sys

from remediate.cli import EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from remediate.cli.common import (
    STORAGE_SETTINGS,
    add_json_flag,
    check_signed_in,
    ledger_only,
    print_json,
    settings_epilog,
)
from remediate.settings import get_settings

EPILOG = settings_epilog(
    *STORAGE_SETTINGS,
    "RDPR_QUEUE_NAME",
    examples=(
        'rdp-remediate approve 3f1c0b9e7a2d4c58b6e1f0a9d8c7b6a5 --reason "plan checked (CHG0042)"',
        'rdp-remediate reject 3f1c0b9e7a2d4c58b6e1f0a9d8c7b6a5 --reason "the owner renews it"',
    ),
)
MAX_NOTE = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("request_id", help="the id of a request in state awaiting-approval")
    parser.add_argument("--reason", required=True, help="why: recorded with your identity")
    parser.add_argument(
        "--on-behalf-of",
        "--by",
        dest="on_behalf_of",
        default=None,
        help="a note naming whom you decide for; recorded as such (OnBehalfOf), never as the approver, who is "
        "always the identity of your Azure sign-in",
    )
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    from remediate.azure.identity import UnknownCaller, current_caller
    from remediate.intake.app import App
    from remediate.intake.approval import NotAwaiting, decide
    from remediate.model import NotFound

    settings = get_settings()
    ledger_only(settings)  # checks storage first, with the usual one-line error
    note = (args.on_behalf_of or "").strip()
    if len(note) > MAX_NOTE:
        print(f"rdp-remediate: --on-behalf-of: at most {MAX_NOTE} characters", file=sys.stderr)
        return EXIT_USAGE
    app = App(settings)
    check_signed_in(app.clients)  # not signed in: the usual one-line answer, nothing decided
    try:
        caller = current_caller(app.clients.credential)
    except UnknownCaller as exc:
        print(f"rdp-remediate: refused: {exc.reason}; nothing was decided", file=sys.stderr)
        return EXIT_REFUSED
    approve = args.command == "approve"
    try:
        decided = decide(
            app.ledger, app.queue.queue, args.request_id, str(caller), args.reason, approve=approve, on_behalf_of=note
        )
    except NotFound as exc:
        print(f"rdp-remediate: {exc.reason}", file=sys.stderr)
        return EXIT_USAGE
    except NotAwaiting as exc:
        print(f"rdp-remediate: refused: {exc.reason}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print_json(decided)
    else:
        print(f"{decided['decision']} request {args.request_id} as {caller}")
    return EXIT_OK
