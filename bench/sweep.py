"""Sweep cost at fleet scale, and the Function's cold import.

Runs the emulator in its own process (`python -m sim --vms N`), then, in this process, the product's sweep in
report mode: Resource Graph inventory, Log Analytics evidence, and (optionally) the RDP probe of every running
Windows VM. Prints inventory requests, wall time, the sweeping process's own CPU time (the emulator's, which
serves every simulated VM's TLS handshake from one thread on the same cores, is not in it) and peak RSS; then the
cold `import function_app` time (fresh interpreters, minus the bare interpreter's start-up). Medians of --repeat.

    .venv/bin/python bench/sweep.py [--vms 10000] [--repeat 3] [--no-inventory]

The third case also writes the fleet inventory to Azurite, as the Function's sweep does: its first sweep finds
every VM new (a row per VM in `latest` and in the history); the next ones find a known fleet and write only what
changed. Their difference to the second case is the inventory's cost.

Targets at 10,000 VMs: <= 12 inventory requests, <= 5 s, <= 300 MB peak RSS; cold import <= 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def start_emulator(vms: int, listeners: bool) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    from sim.azurite import free_port

    command = [
        sys.executable,
        "-m",
        "sim",
        "--vms",
        str(vms),
        "--time-scale",
        "0",
        "--rdp-port",
        str(free_port("127.0.0.2")),
    ]
    if not listeners:
        command.append("--no-listeners")
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())


def graph_requests(info: dict[str, Any]) -> int:
    import ssl

    context = ssl.create_default_context(cafile=info["ca_cert"])
    with urllib.request.urlopen(info["arm_url"] + "/_sim/requests", context=context) as answer:
        entries = json.loads(answer.read())
    return sum(1 for entry in entries if entry["operation"] == "resourceGraph")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fleet_store(azurite: Any) -> Any:
    """The fleet inventory in Azurite (trusted through Azurite's own certificate: the emulator runs elsewhere)."""
    import uuid

    from azure.data.tables import TableServiceClient

    from remediate.fleet import FleetStore

    service = TableServiceClient.from_connection_string(azurite.connection_string, connection_verify=azurite.ca_cert)
    store = FleetStore(service, "b" + uuid.uuid4().hex[:10])
    store.create_tables()
    return store


def sweep_once(info: dict[str, Any], probe: bool, store: Any = None) -> tuple[float, float, int, int]:
    from remediate.azure.clients import AzureClients
    from remediate.intake.service import RecordingSink
    from remediate.intake.sweep import run_sweep
    from remediate.settings import Settings

    env = {
        "RDPR_EMULATOR": "true",
        "RDPR_ARM_URL": info["arm_url"],
        "RDPR_LOGS_URL": info["logs_url"],
        "RDPR_EMULATOR_CA_CERT": info["ca_cert"],
        "RDPR_RDP_PORT": str(info["rdp_port"]),
        "RDPR_LOG_WORKSPACE_ID": info["workspace_id"],
        "RDPR_SWEEP_PROBE": str(probe).lower(),
        "RDPR_SCOPES": ",".join(f"/subscriptions/{s}" for s in info["subscription_ids"]),
    }
    settings = Settings.from_env(env)
    clients = AzureClients(settings)
    sink = RecordingSink()
    started, cpu_started = time.monotonic(), cpu_seconds()
    report = run_sweep(settings, clients, sink, None, mode="report", store=store)
    wall, cpu = time.monotonic() - started, cpu_seconds() - cpu_started
    clients.close()
    return wall, cpu, report.windows_vms, len(report.findings)


def cold_import_seconds(runs: int = 5) -> float:
    def timed(code: str) -> float:
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
        return time.monotonic() - started

    bare = statistics.median(timed("pass") for _ in range(runs))
    full = statistics.median(timed("import function_app") for _ in range(runs))
    return full - bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--no-inventory", dest="inventory", action="store_false", help="skip the case that writes the fleet inventory"
    )
    args = parser.parse_args()
    os.environ.setdefault("TMPDIR", tempfile.gettempdir())
    from sim.azurite import Azurite

    print(f"{'case':<44} {'VMs':>6} {'windows':>8} {'findings':>8} {'graph req':>9} {'wall s':>7} {'cpu s':>6}")
    cases = [(False, False), (True, False), (True, True)] if args.inventory else [(False, False), (True, False)]
    with Azurite() as azurite:
        for probe, inventory in cases:
            process, info = start_emulator(args.vms, listeners=probe)
            try:
                store = fleet_store(azurite) if inventory else None  # one store: later sweeps find a known fleet
                runs = [sweep_once(info, probe, store) for _ in range(args.repeat)]
                requests = graph_requests(info) // args.repeat
            finally:
                process.terminate()
                process.wait()
            name = "inventory + evidence + probe" if probe else "inventory + evidence"
            rows = [(name, runs)]
            if inventory:
                rows = [(name + " + fleet, 1st", runs[:1]), (name + " + fleet, next", runs[1:] or runs[:1])]
            for label, chosen in rows:
                wall, cpu = statistics.median(r[0] for r in chosen), statistics.median(r[1] for r in chosen)
                print(
                    f"{label:<44} {args.vms:>6} {runs[0][2]:>8} {runs[0][3]:>8} {requests:>9} {wall:>7.2f} {cpu:>6.2f}"
                )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the sweeping process: {peak_mb:.0f} MB")
    print(f"cold `import function_app` (median of 5, minus bare interpreter): {cold_import_seconds():.3f} s")


if __name__ == "__main__":
    main()
