"""Orchestration overhead beside Azure's own operation times.

For one VM with an expired certificate, and for N such VMs at concurrency C, runs the real workflow against the
emulator (time-scaled Azure latencies) and Azurite, and compares the wall time with the sum of the simulated
operation latencies on the critical path (diagnose + renew + restart + agent ready + in-guest verification).

    .venv/bin/python bench/overhead.py [--time-scale 0.1] [--vms 200] [--concurrency 50] [--repeat 3]

Targets: overhead <= 2 % for one VM; parallel efficiency >= 90 % for the fleet.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from remediate.azure.clients import AzureClients
from remediate.engine.runner import remediate_many
from remediate.ledger import Ledger
from remediate.model import RemediationRequest, Trigger, VmId
from remediate.settings import Settings
from sim.azurite import Azurite, free_port
from sim.fleet import Fleet, make_vm
from sim.operations import Latencies
from sim.server import Emulator

RUN_COMMANDS_PER_VM = 3  # diagnose, renew-certificate, verify-guest (diagnose again)


def simulated_seconds(scale: float) -> float:
    latencies = Latencies().scaled(scale)
    return RUN_COMMANDS_PER_VM * latencies.run_command + latencies.restart + latencies.agent_ready


def run_once(count: int, concurrency: int, scale: float, poll: float, azurite: Azurite) -> float:
    fleet = Fleet([make_vm("expired-certificate", i, name=f"vm{i:04d}") for i in range(count)])
    with Emulator(fleet, time_scale=scale, rdp_port=free_port("127.0.0.2")) as emulator:
        env = {
            **emulator.settings_env(),
            "RDPR_STORAGE_CONNECTION": azurite.connection_string,
            "RDPR_TABLE_PREFIX": f"b{time.monotonic_ns() % 10**9}",
            "RDPR_POLL_INTERVAL_SECONDS": f"{poll:g}",
            "RDPR_PROBE_TIMEOUT_SECONDS": "2",
        }
        settings = Settings.from_env(env)
        ledger = Ledger.from_settings(settings)
        ledger.create_tables()
        clients = AzureClients(settings)
        requests = [RemediationRequest(VmId.parse(vm.resource_id), Trigger.CLI, "bench") for vm in fleet]
        started = time.monotonic()
        results = remediate_many(requests, settings, ledger, clients, concurrency=concurrency)
        wall = time.monotonic() - started
        clients.close()
    bad = [r for r in results if r.outcome.value != "remediated"]
    if bad:
        raise SystemExit(f"{len(bad)} VMs not remediated, e.g. {bad[0].vm}: {bad[0].reason}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-scale", type=float, default=0.1)
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    simulated = simulated_seconds(args.time_scale)
    poll = round(simulated / 200, 3)  # LRO poll interval: 0.5 % of the path, as Azure's Retry-After would be
    with Azurite() as azurite:
        single = [run_once(1, 1, args.time_scale, poll, azurite) for _ in range(args.repeat)]
        fleet = [run_once(args.vms, args.concurrency, args.time_scale, poll, azurite) for _ in range(args.repeat)]
    waves = math.ceil(args.vms / args.concurrency)
    one, many = statistics.median(single), statistics.median(fleet)
    rows = [
        ("1 VM", 1, simulated, one, f"overhead {100 * (one - simulated) / simulated:.2f} %"),
        (
            f"{args.vms} VMs",
            args.concurrency,
            waves * simulated,
            many,
            f"parallel efficiency {100 * waves * simulated / many:.1f} %",
        ),
    ]
    print(
        f"time scale {args.time_scale}, LRO poll {poll} s, median of {args.repeat} runs, "
        f"simulated Azure time per VM {simulated:.2f} s"
    )
    print(f"{'case':<10} {'concurrency':>11} {'simulated s':>12} {'wall s':>9}  result")
    for name, conc, sim_s, wall_s, verdict in rows:
        print(f"{name:<10} {conc:>11} {sim_s:>12.2f} {wall_s:>9.2f}  {verdict}")
    print(f"all runs (s): one VM {[round(s, 2) for s in single]}, fleet {[round(s, 2) for s in fleet]}")


if __name__ == "__main__":
    main()
