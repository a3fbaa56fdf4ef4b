"""RDP probe throughput: N loopback endpoints, each a full X.224 + TLS + certificate probe, at several
concurrency levels.

The endpoints are the emulator's RDP listeners for a generated fleet of healthy VMs (127.0.x.y, one port),
served from a separate process so that server and probe each get their own interpreter (and core).

    .venv/bin/python bench/probe.py [--endpoints 1000] [--concurrency 50,100,200,500] [--runs 3]

Prints, per concurrency level, the median over the runs of: total time, probes per second, and the p50 / p99
of the per-probe latency. Target: 1,000 probes in <= 5 s.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import socket
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from remediate.probe import ProbeResult, ProbeStatus, probe_many
from sim.fleet import generated_fleet, loopback_address
from sim.rdp import RdpListeners


def serve(count: int, channel: Connection) -> None:
    """Child process: listeners for `count` healthy VMs until the parent says stop."""
    fleet = generated_fleet(count, mix="healthy")
    for vm in fleet:  # sign every certificate now, not while the probes are being timed
        assert vm.guest.certificate is not None
        _ = vm.guest.certificate.cert_pem
    for _attempt in range(5):
        listeners = RdpListeners(fleet, _free_port())
        try:
            listeners.start()
            break
        except OSError:
            continue
    else:
        raise SystemExit("no port free on every loopback address")
    channel.send(listeners.port)
    channel.recv()
    listeners.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        port: int = sock.getsockname()[1]
    return port


def _raise_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def measure(endpoints: list[tuple[str, int]], concurrency: int, timeout: float) -> tuple[float, list[ProbeResult]]:
    started = time.perf_counter()
    results = probe_many(endpoints, concurrency=concurrency, timeout=timeout)
    return time.perf_counter() - started, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--concurrency", default="50,100,200,500", help="comma-separated levels")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]
    _raise_file_limit(args.endpoints + max(levels) + 256)

    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    server = context.Process(target=serve, args=(args.endpoints, child_end), daemon=True)
    server.start()
    try:
        port = parent_end.recv()
        endpoints = [(loopback_address(i), port) for i in range(args.endpoints)]
        measure(endpoints, 100, args.timeout)  # warm-up: TLS contexts loaded, code paths hot
        print(
            f"RDP probe: {args.endpoints} loopback endpoints (X.224 + TLS + certificate), "
            f"server in its own process, median of {args.runs} runs"
        )
        print(
            f"{'concurrency':>11}  {'total s':>8}  {'probes/s':>9}  {'p50 ms':>7}  {'p99 ms':>7}  {'not healthy':>11}"
        )
        for level in levels:
            report(endpoints, level, args.runs, args.timeout)
    finally:
        parent_end.send("stop")
        server.join(timeout=30)
    return 0


def report(endpoints: list[tuple[str, int]], level: int, runs: int, timeout: float) -> None:
    totals, rates, p50s, p99s, failures = [], [], [], [], []
    for _ in range(runs):
        total, results = measure(endpoints, level, timeout)
        latencies = [r.elapsed_ms for r in results]
        cuts = statistics.quantiles(latencies, n=100)
        totals.append(total)
        rates.append(len(results) / total)
        p50s.append(statistics.median(latencies))
        p99s.append(cuts[98])
        failures.append(sum(r.status != ProbeStatus.HEALTHY for r in results))
    median = statistics.median
    print(
        f"{level:>11}  {median(totals):>8.2f}  {median(rates):>9.0f}  {median(p50s):>7.1f}  "
        f"{median(p99s):>7.1f}  {max(failures):>11}"
    )


if __name__ == "__main__":
    sys.exit(main())
