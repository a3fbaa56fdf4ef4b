"""Orchestration overhead beside Azure's own operation times.

Runs the real workflow (expired certificate: diagnose, renew, restart, wait, verify, in-guest verification)
against the emulator, in its own process so that the fake Azure does not share this process's cores and GIL, and
Azurite. Compares the wall time with the simulated Azure time on the critical path (three Run Commands, the
restart, the agent becoming ready).

* one VM at realistic latencies (time scale 1.0 by default): overhead = wall / simulated - 1;
* N VMs at concurrency C (time-scaled to keep the run short): parallel efficiency = ideal / wall, where ideal is
  ceil(N / C) times the single-VM wall time at the same scale (and, for reference, the simulated time).

    .venv/bin/python bench/overhead.py [--single-scale 1.0] [--fleet-scale 0.25] [--vms 200] [--concurrency 50]
                                       [--repeat 3] [--bound]

Targets: overhead <= 2 % for one VM; parallel efficiency >= 90 % for the fleet. Medians of --repeat runs.
With --bound the fleet also runs under the fleet-wide bound (RDPR_MAX_ACTIVE = --concurrency, every VM holding a
slot lease in the ledger while it runs): targets: the bound adds <= 1 % to the fleet run, efficiency stays >= 90 %.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from remediate.azure.clients import AzureClients
from remediate.engine.runner import remediate_many
from remediate.engine.slots import Slots
from remediate.ledger import Ledger
from remediate.model import RemediationRequest, Trigger, VmId
from remediate.settings import Settings
from sim.azurite import Azurite, free_port
from sim.operations import Latencies

RUN_COMMANDS_PER_VM = 3  # diagnose, renew-certificate, verify-guest (diagnose again)


def simulated_seconds(scale: float) -> float:
    latencies = Latencies().scaled(scale)
    return RUN_COMMANDS_PER_VM * latencies.run_command + latencies.restart + latencies.agent_ready


def start_emulator(count: int, scale: float, workdir: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    fleet = workdir / f"fleet-{count}.json"
    fleet.write_text(json.dumps([{"name": f"vm{i:04d}", "scenario": "expired-certificate"} for i in range(count)]))
    command = [
        sys.executable,
        "-m",
        "sim",
        "--fleet",
        str(fleet),
        "--time-scale",
        str(scale),
        "--rdp-port",
        str(free_port("127.0.0.2")),
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())


def run_once(
    count: int, concurrency: int, scale: float, azurite: Azurite, workdir: Path, *, bound: bool = False
) -> float:
    process, info = start_emulator(count, scale, workdir)
    try:
        poll = max(0.05, round(simulated_seconds(scale) / 400, 3))  # LRO poll when Azure sends no Retry-After
        # The emulator (its own process, its own certificate) and Azurite: one bundle trusts both.
        bundle = workdir / "ca-bundle.pem"
        bundle.write_bytes(Path(info["ca_cert"]).read_bytes() + Path(azurite.ca_cert).read_bytes())
        env = {
            "RDPR_EMULATOR": "true",
            "RDPR_ARM_URL": info["arm_url"],
            "RDPR_LOGS_URL": info["logs_url"],
            "RDPR_EMULATOR_CA_CERT": str(bundle),
            "RDPR_RDP_PORT": str(info["rdp_port"]),
            "RDPR_SCOPES": ",".join(f"/subscriptions/{s}" for s in info["subscription_ids"]),
            "RDPR_STORAGE_CONNECTION": azurite.connection_string,
            "RDPR_POLL_INTERVAL_SECONDS": f"{poll:g}",
            "RDPR_TABLE_PREFIX": f"b{time.monotonic_ns() % 10**9}",
            "RDPR_PROBE_TIMEOUT_SECONDS": "2",
            "RDPR_MAX_CONCURRENT": str(concurrency),
            "RDPR_MAX_ACTIVE": str(concurrency),
        }
        settings = Settings.from_env(env)
        ledger = Ledger.from_settings(settings)
        ledger.create_tables()
        slots = Slots.from_settings(settings) if bound else None
        if slots is not None:
            slots.create_table()
        clients = AzureClients(settings)
        vms = [
            VmId.parse(
                f"/subscriptions/{info['subscription_ids'][0]}/resourceGroups/rg-prod/providers/"
                f"Microsoft.Compute/virtualMachines/vm{i:04d}"
            )
            for i in range(count)
        ]
        requests = [RemediationRequest(vm, Trigger.CLI, "bench") for vm in vms]
        started = time.monotonic()
        results = remediate_many(requests, settings, ledger, clients, concurrency=concurrency, slots=slots)
        wall = time.monotonic() - started
        clients.close()
    finally:
        process.terminate()
        process.wait()
    bad = [r for r in results if r.outcome.value != "remediated"]
    if bad:
        raise SystemExit(f"{len(bad)} VMs not remediated, e.g. {bad[0].vm}: {bad[0].reason}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single-scale", type=float, default=1.0)
    parser.add_argument("--fleet-scale", type=float, default=0.25)
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bound", action="store_true", help="also run the fleet under the fleet-wide bound")
    args = parser.parse_args()
    waves = math.ceil(args.vms / args.concurrency)
    with Azurite() as azurite, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        single = [run_once(1, 1, args.single_scale, azurite, workdir) for _ in range(args.repeat)]
        single_at_fleet_scale = [run_once(1, 1, args.fleet_scale, azurite, workdir) for _ in range(args.repeat)]
        fleet, bounded = [], []
        for _ in range(args.repeat):  # interleaved, so a change in the machine's load hits both alike
            fleet.append(run_once(args.vms, args.concurrency, args.fleet_scale, azurite, workdir))
            if args.bound:
                bounded.append(run_once(args.vms, args.concurrency, args.fleet_scale, azurite, workdir, bound=True))
    one, one_scaled, many = (statistics.median(x) for x in (single, single_at_fleet_scale, fleet))
    sim_one, sim_scaled = simulated_seconds(args.single_scale), simulated_seconds(args.fleet_scale)
    print(f"median of {args.repeat} runs; emulator in its own process")
    print(f"{'case':<22} {'scale':>5} {'simulated s':>11} {'wall s':>8}  result")
    print(
        f"{'1 VM':<22} {args.single_scale:>5} {sim_one:>11.2f} {one:>8.2f}  "
        f"overhead {100 * (one / sim_one - 1):.2f} % ({one - sim_one:.2f} s)"
    )
    print(
        f"{'1 VM':<22} {args.fleet_scale:>5} {sim_scaled:>11.2f} {one_scaled:>8.2f}  "
        f"overhead {100 * (one_scaled / sim_scaled - 1):.2f} %"
    )
    print(
        f"{f'{args.vms} VMs, concurrency {args.concurrency}':<22} {args.fleet_scale:>5} "
        f"{waves * sim_scaled:>11.2f} {many:>8.2f}  parallel efficiency {100 * waves * one_scaled / many:.1f} % "
        f"(vs simulated: {100 * waves * sim_scaled / many:.1f} %)"
    )
    if bounded:
        with_bound = statistics.median(bounded)
        print(
            f"{f'{args.vms} VMs, bound {args.concurrency}':<22} {args.fleet_scale:>5} "
            f"{waves * sim_scaled:>11.2f} {with_bound:>8.2f}  parallel efficiency "
            f"{100 * waves * one_scaled / with_bound:.1f} %; the bound adds {100 * (with_bound / many - 1):.2f} %"
        )
        print(f"bounded runs (s): {[round(s, 2) for s in bounded]}")
    print(
        f"runs (s): 1 VM {[round(s, 2) for s in single]}, 1 VM scaled {[round(s, 2) for s in single_at_fleet_scale]}, "
        f"fleet {[round(s, 2) for s in fleet]}"
    )


if __name__ == "__main__":
    main()
