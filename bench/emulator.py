"""How fast the emulator serves a large fleet to the real Azure SDK.

For each fleet size: the time to generate the fleet, then the median over the runs of listing every VM of the
subscription through `ComputeManagementClient.virtual_machines.list_all()` (all pages, over HTTPS), the number of
requests one listing made, and the page size.

    .venv/bin/python bench/emulator.py [--sizes 1000,10000] [--page-sizes 100,1000] [--runs 3]

Target: 10,000 VMs listed in a few seconds. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from remediate.azure.clients import AzureClients
from remediate.settings import Settings
from sim.fleet import SUBSCRIPTION, Fleet, generated_fleet
from sim.server import Emulator


def build_fleet(size: int) -> tuple[Fleet, float]:
    start = time.perf_counter()
    fleet = generated_fleet(size)
    return fleet, time.perf_counter() - start


def list_all(fleet: Fleet, page_size: int, runs: int) -> tuple[float, int]:
    """Median seconds to list the whole fleet through the SDK, and the requests one listing made."""
    with Emulator(fleet, time_scale=1.0, page_size=page_size, listeners=False) as emulator:
        clients = AzureClients(Settings.from_env(emulator.settings_env()))
        try:
            compute = clients.compute(SUBSCRIPTION)
            next(iter(compute.virtual_machines.list_all()))  # connect and warm up outside the measurement
            timings: list[float] = []
            for _ in range(runs):
                emulator.log.clear()
                start = time.perf_counter()
                count = sum(1 for _ in compute.virtual_machines.list_all())
                timings.append(time.perf_counter() - start)
                if count != len(fleet):
                    raise SystemExit(f"listed {count} VMs, expected {len(fleet)}")
            requests = len(emulator.log.entries())
        finally:
            clients.close()
    return statistics.median(timings), requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1000,10000", help="fleet sizes, comma-separated")
    parser.add_argument("--page-sizes", default="100,1000", help="VMs per page, comma-separated")
    parser.add_argument("--runs", type=int, default=3, help="listings per case (the median is shown)")
    args = parser.parse_args()
    sizes = [int(part) for part in args.sizes.split(",")]
    page_sizes = [int(part) for part in args.page_sizes.split(",")]

    print(f"{'VMs':>7} {'build s':>8} {'page size':>9} {'list s (median)':>15} {'VMs/s':>8} {'requests':>8}")
    for size in sizes:
        fleet, build = build_fleet(size)
        for page_size in page_sizes:
            seconds, requests = list_all(fleet, page_size, args.runs)
            print(
                f"{size:>7,} {build:>8.2f} {page_size:>9} {seconds:>15.2f} {size / seconds:>8,.0f} {requests:>8}",
                flush=True,
            )


if __name__ == "__main__":
    main()
