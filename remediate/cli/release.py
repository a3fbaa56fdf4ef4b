"""`rdp-remediate release REQUEST_ID --reason WHY`: run a request the storm guard holds, now.

The release is counted against the storm guard's budget but never refused by it: an operator decided. Who
released it and why is written to the request's record; its queue message is made visible at once.
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
    examples=('rdp-remediate release 3f1c0b9e7a2d4c58b6e1f0a9d8c7b6a5 --reason "one bad patch (CHG0042)"',),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("request_id", help="the id of the held request (`rdp-remediate status ID` says held)")
    parser.add_argument("--reason", required=True, help="why it may run now: recorded with your name")
    parser.add_argument("--by", default=None, help="who releases it (default: user@host)")
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    from remediate.intake.app import App
    from remediate.intake.gate import NotHeld, release
    from remediate.model import NotFound

    settings = get_settings()
    ledger_only(settings)  # checks storage first, with the usual one-line error
    app = App(settings)
    who = args.by or f"{getpass.getuser()}@{socket.gethostname()}"
    try:
        when = release(app.ledger, app.queue.queue, app.storm, args.request_id, who, args.reason)
    except NotFound as exc:
        print(f"rdp-remediate: {exc.reason}", file=sys.stderr)
        return EXIT_USAGE
    except NotHeld as exc:
        print(f"rdp-remediate: refused: {exc.reason}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print_json({"requestId": args.request_id, "state": "queued", "releasedBy": who, "releasedAt": when})
    else:
        print(f"released request {args.request_id} ({who}): it runs at its next delivery")
    return EXIT_OK
