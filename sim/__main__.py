"""`python -m sim`: run the local Azure emulator in the foreground.

Prints ONE JSON line on stdout (the emulator's `describe()`: URLs, CA certificate, subscriptions, workspace,
fleet summary), then serves until SIGTERM or SIGINT and exits 0. Logs go to stderr.

`--with-azurite` also starts Azurite (Table and Queue storage); `--print-env` prints, instead of the JSON line,
the exact `export` lines that point `rdp-remediate` at both, ending with the line `# ready`:

    eval "$(.venv/bin/python -m sim --with-azurite --print-env &)"   # or copy the lines into another shell
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from sim.azurite import Azurite
from sim.fleet import MIXES, Fleet, demo_fleet, generated_fleet, load_fleet
from sim.realism import ANSWER_STYLES, Realism
from sim.server import Emulator

log = logging.getLogger("sim")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sim", description=__doc__.splitlines()[0] if __doc__ else None)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--vms", type=int, metavar="N", help="generate a fleet of N VMs (default: the demo fleet)")
    source.add_argument("--fleet", type=Path, metavar="FILE", help="load the fleet from a JSON file")
    parser.add_argument("--mix", default="realistic", choices=sorted(MIXES), help="scenario mix for --vms")
    parser.add_argument("--port", type=int, default=0, help="HTTPS port (default: an ephemeral port)")
    parser.add_argument("--rdp-port", type=int, default=3389, help="port of the simulated RDP listeners")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiplier of every simulated latency")
    parser.add_argument("--page-size", type=int, default=100, help="VMs per page of a VM list")
    parser.add_argument("--no-listeners", action="store_true", help="do not start the RDP listeners")
    parser.add_argument(
        "--answer-style",
        default="async",
        choices=ANSWER_STYLES,
        help="how Run Command and restart answer (docs/emulator.md, 'How unkind')",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    parser.add_argument("--with-azurite", action="store_true", help="also start Azurite (the ledger's storage)")
    parser.add_argument("--print-env", action="store_true", help="print `export` lines instead of the JSON line")
    return parser


def export_lines(emulator: Emulator, azurite: Azurite | None) -> list[str]:
    """Shell lines that set every variable the CLI needs to use this emulator (and Azurite), quoted for sh."""
    env = emulator.settings_env([f"/subscriptions/{sub}" for sub in emulator.fleet.subscription_ids])
    if azurite is not None:
        env["RDPR_STORAGE_CONNECTION"] = azurite.connection_string
    return [f"export {name}={shlex.quote(value)}" for name, value in env.items()]


def make_fleet(args: argparse.Namespace) -> Fleet:
    if args.fleet is not None:
        return load_fleet(args.fleet)
    if args.vms is not None:
        return generated_fleet(args.vms, mix=args.mix)
    return demo_fleet()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    azurite: Azurite | None = None
    try:
        fleet = make_fleet(args)
        emulator = Emulator(
            fleet,
            time_scale=args.time_scale,
            page_size=args.page_size,
            port=args.port,
            rdp_port=args.rdp_port,
            listeners=not args.no_listeners,
            realism=Realism(answer_style=args.answer_style),
        )
        if args.with_azurite:
            azurite = Azurite().start()
        emulator.start()
    except (OSError, ValueError, RuntimeError) as exc:
        if azurite is not None:
            azurite.stop()
        print(f"python -m sim: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if args.print_env:
            print("\n".join([*export_lines(emulator, azurite), "# ready"]), flush=True)
        else:
            print(json.dumps(emulator.describe()), flush=True)
        while not stop.wait(1.0):  # wake now and then so signals are handled promptly on every platform
            pass
    finally:
        emulator.stop()
        if azurite is not None:
            with contextlib.suppress(Exception):
                azurite.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
