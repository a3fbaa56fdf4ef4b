"""How fast the HTTP intake answers: p50/p99 of the alert and runbook handlers, and their cold import time.

Run from the repository root: `python -m bench.intake [--runs N]`. Prints a table; asserts nothing.
Targets: p99 <= 20 ms for a typical alert, <= 100 ms for a 256 KB alert (an action group waits 10 s).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from remediate.intake.requests import MAX_BODY_BYTES
from remediate.intake.service import AlertIntake, RecordingSink, RunbookIntake
from remediate.model import VmId
from remediate.settings import Settings
from tests.intake.support import PAYLOADS, SUBSCRIPTION, sized_alert, vm

ROOT = Path(__file__).resolve().parent.parent


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(call: Callable[[], object], runs: int) -> list[float]:
    for _ in range(min(50, runs)):  # warm caches (regexes, enum lookups) as a warm Function would have them
        call()
    gc.collect()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def cold_import_ms(module: str, repeats: int = 5) -> float:
    script = f"import time; t = time.perf_counter(); import {module}; print((time.perf_counter() - t) * 1000)"
    times = [
        float(
            subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT).stdout
        )
        for _ in range(repeats)
    ]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3000, help="timed calls per typical case (large cases: a tenth)")
    args = parser.parse_args()
    # Log records are still created (their cost is part of the answer time) but go nowhere.
    logging.basicConfig(level=logging.INFO, handlers=[logging.NullHandler()])
    settings = Settings.from_env({"RDPR_SCOPES": f"/subscriptions/{SUBSCRIPTION}"})
    sink = RecordingSink()  # every key is new: each call does the full work, including the enqueue

    def resolver(names: list[str], _scopes: tuple[str, ...]) -> dict[str, list[VmId]]:
        return {name: [vm(name.lower())] for name in names}

    alerts = AlertIntake(sink, settings, resolver)
    runbook = RunbookIntake(sink, settings, None)
    many_vms = json.dumps({"vms": [str(vm(f"vm-{i:03d}")) for i in range(500)], "reason": "bench"}).encode()
    cases: list[tuple[str, bytes, Callable[[bytes], object], int, str]] = [
        ("metric alert (typical)", (PAYLOADS / "metric-vm.json").read_bytes(), alerts.handle, args.runs, "20"),
        (
            "log alert, workspace + _ResourceId",
            (PAYLOADS / "log-v2-workspace-resourceid.json").read_bytes(),
            alerts.handle,
            args.runs,
            "20",
        ),
        (
            "log alert, Computer (fake lookup)",
            (PAYLOADS / "log-v2-workspace-computer.json").read_bytes(),
            alerts.handle,
            args.runs,
            "20",
        ),
        ("older log alert, 256 KB results", sized_alert(MAX_BODY_BYTES), alerts.handle, args.runs // 10, "100"),
        ("alert over 256 KB (413)", sized_alert(MAX_BODY_BYTES + 1), alerts.handle, args.runs, "-"),
        (
            "runbook, 2 VMs",
            (PAYLOADS / "runbook-vms.json").read_bytes(),
            lambda body: runbook.handle(body, "bench"),
            args.runs,
            "-",
        ),
        ("runbook, 500 VMs", many_vms, lambda body: runbook.handle(body, "bench"), args.runs // 10, "-"),
    ]
    print(f"{'case':<36} {'bytes':>8} {'runs':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'target p99':>10}")
    for name, body, handler, runs, target in cases:
        samples = measure(lambda body=body, handler=handler: handler(body), runs)  # type: ignore[misc]
        sink.requests.clear()
        print(
            f"{name:<36} {len(body):>8} {runs:>6} {percentile(samples, 0.5):>8.3f} "
            f"{percentile(samples, 0.99):>8.3f} {max(samples):>8.3f} {target:>10}"
        )
    print()
    for module in ("remediate.intake.service", "remediate.cli.alert"):
        print(f"cold import {module:<28} {cold_import_ms(module):>8.1f} ms (median of 5, fresh interpreter)")


if __name__ == "__main__":
    main()
