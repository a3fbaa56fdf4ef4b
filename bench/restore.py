"""Time to RDP restored: one VM whose listener certificate expired, from the alert to verified-healthy.

Runs the real workflow at realistic latencies (time scale 1.0) against the emulator in Azure's real answer
style (202 with Azure-AsyncOperation and Location, no Retry-After, a restart operation that ends long before the
guest is back), with the product's default settings as the Bicep deploys them (polling cadence included), and
Azurite for the ledger. Prints, side by side:

* the product's wall time;
* Azure's floor for the same repair: the simulated durations of the Run Commands (each as the emulator ran it),
  the restart and the guest's boot until its agent is back: what no client can beat;
* the ratio, the time above the floor, and the time the product spent sleeping between polls (long-running
  operations, the VM's instance view, the RDP probe; the SDK's poll waits run in threads, so this is a sum of
  waits, most of them overlapping Azure's own work).

Two floors are shown: the repair alone (renew-certificate, restart, boot) and the product's full safety sequence
(diagnose before the repair and again after the reboot, around the same repair); see docs/architecture.md.

    .venv/bin/python bench/restore.py [--scale 1.0] [--style async|location|sync] [--sdk-default]

`--sdk-default` also measures the cadence the product had before (no poll interval set: the SDK's 30 s).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from remediate.azure.clients import AzureClients
from remediate.engine.workflow import Workflow, WorkflowResult
from remediate.ledger import Ledger
from remediate.model import RemediationRequest, Trigger, VmId
from remediate.settings import Settings
from sim.azurite import Azurite, free_port
from sim.fleet import Fleet, make_vm
from sim.realism import Realism
from sim.server import Emulator

SCENARIO = "expired-certificate"
_NAME = re.compile(r"^\$ScriptName\s*=\s*'([^']*)'", re.MULTILINE)
REPAIR = "renew-certificate"


class SleepMeter:
    """Adds up every `time.sleep` of the process (the SDK's poll waits run in their own threads)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._lock = threading.Lock()
        self._real: Any = time.sleep

    def __enter__(self) -> SleepMeter:
        def sleep(seconds: Any) -> None:
            if not threading.current_thread().name.startswith("sim-"):  # the emulator's threads are not ours
                with self._lock:
                    self.total += max(seconds, 0.0)
            self._real(seconds)

        time.sleep = sleep
        return self

    def __exit__(self, *_: object) -> None:
        time.sleep = self._real


def run_once(scale: float, style: str, cadence: dict[str, str], azurite: Azurite, workdir: Path) -> dict[str, Any]:
    vm = make_vm(SCENARIO, 0, name="vm-bench")
    emulator = Emulator(
        Fleet([vm]), time_scale=scale, realism=Realism(answer_style=style), rdp_port=free_port("127.0.0.2")
    )
    emulator.start()
    try:
        bundle = workdir / "ca-bundle.pem"
        bundle.write_bytes(Path(emulator.ca_cert).read_bytes() + Path(azurite.ca_cert).read_bytes())
        env = {
            # Only what points the product at this emulator and Azurite; everything else is the deployed default.
            "RDPR_EMULATOR": "true",
            "RDPR_ARM_URL": emulator.arm_url,
            "RDPR_LOGS_URL": emulator.logs_url,
            "RDPR_EMULATOR_CA_CERT": str(bundle),
            "RDPR_RDP_PORT": str(emulator.rdp_port),
            "RDPR_SCOPES": f"/subscriptions/{vm.subscription_id}",
            "RDPR_STORAGE_CONNECTION": azurite.connection_string,
            "RDPR_TABLE_PREFIX": f"r{time.monotonic_ns() % 10**9}",
            **cadence,
        }
        settings = Settings.from_env(env)
        ledger = Ledger.from_settings(settings)
        ledger.create_tables()
        clients = AzureClients(settings)
        request = RemediationRequest(VmId.parse(vm.resource_id), Trigger.ALERT, "bench: expired certificate alert")
        with SleepMeter() as slept:
            started = time.monotonic()
            result = Workflow(request, settings=settings, ledger=ledger, clients=clients).run()
            wall = time.monotonic() - started
        clients.close()
        return {"wall": wall, "slept": slept.total, "result": result, **_floors(emulator, result)}
    finally:
        emulator.stop()


def _floors(emulator: Emulator, result: WorkflowResult) -> dict[str, float]:
    """Azure's floors from what the emulator actually ran: each Run Command's duration, restart and boot."""
    if result.outcome.value != "remediated":
        raise SystemExit(f"not remediated: {result.reason}")
    latencies = emulator.latencies
    done = [
        (_NAME.search(op.script), op.ends - op.started)
        for op in emulator.operations.records()
        if op.kind == "runCommand" and op.status == "Succeeded"
    ]
    all_commands = sum(duration for _, duration in done)
    repair = sum(duration for name, duration in done if name and name.group(1) == REPAIR)
    boot = latencies.restart + latencies.agent_ready  # restart accepted -> guest running -> agent Ready
    return {"floor_repair": repair + boot, "floor_sequence": all_commands + boot}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--style", default="async", choices=["async", "location", "sync"])
    parser.add_argument("--sdk-default", action="store_true", help="also run with the SDK's 30 s polling")
    args = parser.parse_args()
    cases: dict[str, dict[str, str]] = {"deployed (2 s, then up to 10 s)": {}}
    if args.sdk_default:
        cases["SDK default (30 s)"] = {
            "RDPR_POLL_INTERVAL_SECONDS": "30",
            "RDPR_POLL_FAST_SECONDS": "0",
            "RDPR_POLL_MAX_INTERVAL_SECONDS": "30",
        }
    rows = []
    with Azurite() as azurite, tempfile.TemporaryDirectory() as tmp:
        for name, cadence in cases.items():
            rows.append((name, run_once(args.scale, args.style, cadence, azurite, Path(tmp))))
    print(f"one expired-certificate VM, alert to verified-healthy; time scale {args.scale}, answer style {args.style}")
    print(
        f"{'polling':<32} {'Azure floor of':<34} {'wall s':>7} {'floor s':>8} {'ratio':>6} {'over s':>7} {'slept s':>8}"
    )
    for name, row in rows:
        for label, floor in (
            ("the product's sequence (3 RCs)", row["floor_sequence"]),
            ("the repair alone (1 RC)", row["floor_repair"]),
        ):
            print(
                f"{name:<32} {label:<34} {row['wall']:>7.1f} {floor:>8.1f} {row['wall'] / floor:>6.2f} "
                f"{row['wall'] - floor:>7.1f} {row['slept']:>8.1f}"
            )


if __name__ == "__main__":
    main()
