"""The crash-consistency rig: an emulator fleet, Azurite behind a switchable proxy, real worker processes.

Everything the invariants are checked against comes from outside the product: restarts from the emulator's
Activity Log (what Azure accepted), guest state from the emulator's fleet, locks, cooldowns and outcomes from
the tables, queue contents from Azurite.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remediate.azure.clients import AzureClients
from remediate.engine.workflow import Workflow
from remediate.intake.queue import RequestQueue, queue_client
from remediate.intake.service import AlertIntake, IntakeAnswer
from remediate.ledger import Ledger, table_service
from remediate.model import RemediationRequest, Trigger, VmId
from remediate.settings import Settings
from sim.azurite import DEV_ACCOUNT, DEV_KEY, Azurite
from sim.fleet import VirtualMachine
from sim.server import RESTART_ACTION, Emulator
from tests.crash.proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Rig:
    emulator: Emulator
    azurite: Azurite
    proxy: TcpProxy  # in front of Azurite's table endpoint: the workers' ledger goes through it
    workdir: Path
    overrides: dict[str, str] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: "c" + uuid.uuid4().hex[:12])
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def connection_string(self, table_port: int) -> str:
        base = "https://127.0.0.1"
        return (
            f"DefaultEndpointsProtocol=https;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
            f"QueueEndpoint={base}:{self.azurite.queue_port}/{DEV_ACCOUNT};"
            f"TableEndpoint={base}:{table_port}/{DEV_ACCOUNT};"
        )

    def env(self, *, through_proxy: bool = True) -> dict[str, str]:
        table_port = self.proxy.port if through_proxy else self.azurite.table_port
        return {
            **self.emulator.settings_env(),
            "RDPR_STORAGE_CONNECTION": self.connection_string(table_port),
            "RDPR_TABLE_PREFIX": self.prefix,
            "RDPR_QUEUE_NAME": self.prefix,
            "RDPR_RETRY_AFTER_CAP_SECONDS": "0.2",
            "RDPR_RETRY_TOTAL": "2",
            "RDPR_RETRY_BACKOFF_SECONDS": "0.1",
            "RDPR_BOOT_TIMEOUT_SECONDS": "4",
            "RDPR_PROBE_TIMEOUT_SECONDS": "1",
            "RDPR_LEASE_SECONDS": "2",
            "RDPR_WORKFLOW_DEADLINE_MINUTES": "2",
            "RDPR_LOCK_MINUTES": "3",
            # Every change is followed by a restart, so each crash point can fall on either side of one.
            "RDPR_REBOOT_POLICY": "always",
            **self.overrides,
        }

    @property
    def settings(self) -> Settings:
        """The test's own view (straight to Azurite: an outage of the proxy does not blind the checks)."""
        return Settings.from_env(self.env(through_proxy=False))

    def ledger(self) -> Ledger:
        settings = self.settings
        return Ledger(table_service(settings), settings.table_prefix)

    def queue(self, suffix: str = "") -> Any:
        return queue_client(self.settings, self.prefix + suffix)

    def request_queue(self, claim_stale_seconds: float = 60.0) -> RequestQueue:
        settings = self.settings
        return RequestQueue(
            queue_client(settings, self.prefix),
            self.ledger(),
            queue_client(settings, self.prefix + "-poison"),
            claim_stale_seconds=claim_stale_seconds,
        )

    def create(self) -> None:
        self.ledger().create_tables()
        for suffix in ("", "-poison"):
            self.queue(suffix).create_queue()

    def enqueue(self, vm: VirtualMachine, copies: int = 1) -> RemediationRequest:
        """One request; `copies` > 1 sends its message again, as a storage retry whose answer was lost does."""
        request = RemediationRequest(VmId.parse(vm.resource_id), Trigger.RUNBOOK, "crash-consistency test")
        queue = self.request_queue()
        queue.enqueue(request)
        for _ in range(copies - 1):
            queue.queue.send_message(json.dumps(request.to_message()))
        return request

    def spawn(self, plan: dict[str, str] | None = None, **extra: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            **self.env(),
            "PYTHONPATH": str(ROOT),
            "CRASH_PLAN": json.dumps(plan or {}),
            "CRASH_DIR": str(self.workdir),
            **extra,
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.crash.worker"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file(),
        )
        self.processes.append(process)
        return process

    def spawn_intake(self, vm_id: str, point: str) -> subprocess.Popen[bytes]:
        from tests.crash.intake import alert_id_for

        self.emulator.alerts.fire(alert_id_for(vm_id), vm_id)  # Azure Monitor raised the alert being posted
        env = {**os.environ, **self.env(), "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.crash.intake", vm_id, point],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file(),
        )
        self.processes.append(process)
        return process

    def post_alert(self, queue: RequestQueue, vm_id: str) -> IntakeAnswer:
        """The action group's retry of the alert the killed intake was handling."""
        from tests.crash.intake import alert_body

        return AlertIntake(queue, self.settings, None).handle(alert_body(vm_id))

    def control_steps(self, vm: VirtualMachine) -> list[str]:
        """The steps an undisturbed remediation of `vm` goes through (so crash points follow the workflow)."""
        settings = self.settings
        clients = AzureClients(settings)
        try:
            request = RemediationRequest(VmId.parse(vm.resource_id), Trigger.CLI, "control run")
            result = Workflow(request, settings=settings, ledger=self.ledger(), clients=clients).run()
        finally:
            clients.close()
        return [step.name for step in result.steps]

    def _log_file(self) -> Any:
        # A file, not a pipe: a worker that logs a lot must never block on a pipe nobody reads.
        return (self.workdir / f"process-{len(self.processes):03d}.log").open("wb")

    def log_tail(self, process: subprocess.Popen[bytes], chars: int = 4000) -> str:
        index = self.processes.index(process)
        path = self.workdir / f"process-{index:03d}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        self.proxy.close()


def accepted_restarts(emulator: Emulator) -> dict[str, int]:
    """Restarts Azure accepted, per lower-cased VM id, from the emulator's Activity Log. An accepted restart
    whose operation then failed or was canceled still counts: the VM may have restarted, and the product never
    sends it again (its `rebooted` says a restart was accepted, which is what it can know)."""
    calls: dict[str, tuple[str, set[str]]] = {}
    for event in emulator.activity.events_of(RESTART_ACTION):
        vm, statuses = calls.setdefault(event["correlationId"], (event["resourceId"].lower(), set()))
        statuses.add(event["status"]["value"])
    counts: dict[str, int] = {}
    for vm, statuses in calls.values():
        if "Accepted" in statuses:
            counts[vm] = counts.get(vm, 0) + 1
    return counts


def messages_left(rig: Rig, suffix: str) -> int:
    return int(rig.queue(suffix).get_queue_properties().approximate_message_count)


def crash_points(steps: list[str]) -> Iterator[str]:
    for step in steps:
        yield f"after-start:{step}"
        yield f"before-finish:{step}"
    yield "after-outcome"


def replace_settings(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)
