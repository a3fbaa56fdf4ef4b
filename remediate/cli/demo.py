"""`rdp-remediate demo`: the whole product on the local Azure emulator and Azurite.

The demo lives beside the product in the source checkout (`sim/`), never inside the deployed package, so this
command runs it as a separate module instead of importing it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--time-scale", type=float, default=0.02, help="simulated Azure operation times as a fraction of real ones"
    )
    parser.add_argument("--report", default="demo-report.json", help="where to write the JSON report")


def run(args: argparse.Namespace) -> int:
    if not (CHECKOUT / "sim" / "demo.py").is_file():
        print("rdp-remediate: the demo needs the source checkout (its sim/ folder)", file=sys.stderr)
        return 2
    report = str(Path(args.report).resolve())  # the demo runs from the checkout; keep the path the user meant
    command = [sys.executable, "-m", "sim.demo", "--time-scale", str(args.time_scale), "--report", report]
    return subprocess.call(command, cwd=CHECKOUT)  # noqa: S603 - our own interpreter and module
