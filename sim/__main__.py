"""`python -m sim`: run the local Azure emulator in the foreground.

Prints ONE JSON line on stdout (the emulator's `describe()`: URLs, CA certificate, subscriptions, workspace,
fleet summary), then serves until SIGTERM or SIGINT and exits 0. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

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
    return parser


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
        emulator.start()
    except (OSError, ValueError) as exc:
        print(f"python -m sim: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        print(json.dumps(emulator.describe()), flush=True)
        while not stop.wait(1.0):  # wake now and then so signals are handled promptly on every platform
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
