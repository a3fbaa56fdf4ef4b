"""The scheduled sweep: find the Windows VMs in scope whose RDP is broken or about to break.

Evidence comes from three places, cheapest first: the Resource Graph inventory (one paged query), the
Log Analytics events 1057/1058/36870/36871, and the RDP probe of every running VM. In `report` mode the
sweep only tells; in `remediate` mode it enqueues, bounded by the blast radius and the circuit breaker.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from remediate.engine import plans, policy
from remediate.intake.claims import given_back_on_failure
from remediate.model import (
    ConfigurationError,
    Plan,
    RemediationError,
    RemediationOptions,
    RemediationRequest,
    Trigger,
    VmId,
)
from remediate.settings import Settings

if TYPE_CHECKING:
    from remediate.azure.clients import AzureClients
    from remediate.azure.inventory import VmRecord
    from remediate.azure.logs import EventEvidence
    from remediate.fleet import FleetStore
    from remediate.intake.service import IntakeSink
    from remediate.ledger import Ledger
    from remediate.probe import ProbeResult

log = logging.getLogger(__name__)

ProbeMany = Callable[[Sequence[tuple[str, int]]], "list[ProbeResult]"]
# Probing thousands of VMs is I/O-bound: many in flight at once, bounded so a sweep stays polite.
PROBE_CONCURRENCY = 200


@dataclass
class Finding:
    vm: VmId
    action: str  # "remediate" (broken) | "renew" (expiring soon: proactive renewal, no reboot)
    evidence: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"vm": str(self.vm), "action": self.action, "evidence": self.evidence}


@dataclass
class SweepReport:
    mode: str
    windows_vms: int = 0
    eligible: int = 0
    probed: int = 0
    findings: list[Finding] = field(default_factory=list)
    enqueued: list[str] = field(default_factory=list)  # request ids
    held_back: list[dict[str, str]] = field(default_factory=list)  # {"vm", "reason"}
    stopped: str | None = None  # why the sweep enqueued nothing at all

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "windowsVms": self.windows_vms,
            "eligible": self.eligible,
            "probed": self.probed,
            "findings": [f.to_json() for f in self.findings],
            "enqueued": self.enqueued,
            "heldBack": self.held_back,
            "stopped": self.stopped,
        }


def run_sweep(
    settings: Settings,
    clients: AzureClients,
    sink: IntakeSink,
    ledger: Ledger | None,
    *,
    mode: str | None = None,
    probe_many: ProbeMany | None = None,
    now: Callable[[], dt.datetime] | None = None,
    store: FleetStore | None = None,
) -> SweepReport:
    """`store`: where the fleet inventory is written (None: telemetry only, e.g. a report sweep without storage)."""
    from remediate.azure.inventory import list_windows_vms

    started = (now or (lambda: dt.datetime.now(dt.UTC)))()
    report = SweepReport(mode or settings.sweep_mode)
    if not settings.scopes:
        report.stopped = "nothing is in scope: RDPR_SCOPES is empty"
        return report
    inventory = list_windows_vms(clients, settings.scopes)
    report.windows_vms = len(inventory)
    eligible = [record for record in inventory if _eligible(settings, record)]
    report.eligible = len(eligible)
    events = _events(settings, clients)
    probes = _probe_all(settings, eligible, probe_many) if settings.sweep_probe else {}
    report.probed = len(probes)
    report.findings = [f for record in eligible if (f := _finding(record, events, probes)) is not None]
    log.info("sweep found", extra={"windows_vms": report.windows_vms, "findings": len(report.findings)})
    if report.mode == "remediate":
        if ledger is None:
            raise ConfigurationError("the sweep's remediate mode needs the ledger (circuit breaker, dedup)")
        _enqueue(settings, sink, ledger, report, started)
    from remediate.intake.sweep_record import record_sweep

    record_sweep(store, settings, report, inventory, events, probes, started)
    return report


def _eligible(settings: Settings, record: VmRecord) -> bool:
    """Running Windows VMs in scope that are not opted out; the engine re-checks all of it from the VM itself."""
    from remediate.azure.vm import VmView

    view = VmView(record.vm, record.os_type, record.power_state, True, record.computer_name, record.tags)
    return record.vm.in_scope(settings.scopes) and policy.vm_refusal(settings, view) is None


def _events(settings: Settings, clients: AzureClients) -> dict[str, list[EventEvidence]]:
    if not settings.log_workspace_id:
        return {}
    from remediate.azure.logs import query_rdp_events

    by_vm: dict[str, list[EventEvidence]] = {}
    for evidence in query_rdp_events(clients, settings.log_workspace_id, settings.evidence_hours):
        if evidence.vm is not None:
            by_vm.setdefault(evidence.vm.key, []).append(evidence)
    return by_vm


def _probe_all(settings: Settings, records: list[VmRecord], probe_many: ProbeMany | None) -> dict[str, ProbeResult]:
    targets = [record for record in records if record.private_ip]
    if probe_many is None:
        from remediate.probe import probe_many as real_probe_many

        def probe_many(endpoints: Sequence[tuple[str, int]]) -> list[ProbeResult]:
            return real_probe_many(
                endpoints,
                concurrency=PROBE_CONCURRENCY,
                timeout=settings.probe_timeout_seconds,
                expiry_warning_days=settings.expiry_warning_days,
            )

    results = probe_many([(str(record.private_ip), settings.rdp_port) for record in targets])
    return {record.vm.key: result for record, result in zip(targets, results, strict=True)}


def _finding(
    record: VmRecord, events: dict[str, list[EventEvidence]], probes: dict[str, ProbeResult]
) -> Finding | None:
    evidence = [
        f"event {e.event_id} x{e.count} (last {e.last_seen:%Y-%m-%d %H:%M} UTC)" for e in events.get(record.vm.key, [])
    ]
    result = probes.get(record.vm.key)
    status = result.status if result is not None else None
    if status is not None:
        evidence.insert(0, f"probe: {result.detail if result is not None else status}")
    if status == "expiring-soon":
        return Finding(record.vm, "renew", evidence)
    if status is not None and status not in plans.PROBE_OK | plans.PROBE_NO_PATH:
        return Finding(record.vm, "remediate", evidence)
    # RDP works from outside: old events are history, not a reason to touch the VM.
    if events.get(record.vm.key) and status not in plans.PROBE_OK:
        return Finding(record.vm, "remediate", evidence)
    return None


def _admit_and_enqueue(settings: Settings, sink: IntakeSink, request: RemediationRequest) -> str | None:
    """Queue `request`, or the reason it was held back; raises (after giving the pending slot back) if the
    ledger fails, so the caller gives the dedup key back too."""
    pending = sink.admit(request, dt.timedelta(minutes=settings.lock_minutes))
    if pending is not None:  # an alert's request will look at this VM anyway
        return f"request {pending} is already pending"
    try:
        sink.enqueue(request)
    except RemediationError as exc:  # one VM's failure must not stop the sweep for every other VM
        sink.release(request)
        sink.unclaim(request.dedup_key or "")
        return f"could not be queued: {exc.reason}"
    return None


def _enqueue(settings: Settings, sink: IntakeSink, ledger: Ledger, report: SweepReport, now: dt.datetime) -> None:
    since = now - dt.timedelta(hours=settings.circuit_window_hours)
    report.stopped = policy.circuit_refusal(settings, ledger.recent_decisions(since))
    if report.stopped:
        log.warning("sweep stopped by the circuit breaker", extra={"reason": report.stopped})
        return
    limit = policy.blast_radius(settings, report.eligible)
    # A rolling window across sweeps: what earlier sweeps enqueued within it counts against this one.
    window_start = now - dt.timedelta(hours=settings.sweep_window_hours)
    earlier = ledger.count_accepted(Trigger.SWEEP.value, window_start)  # dry runs do not count
    allowed = max(0, limit - earlier)
    # Broken VMs before merely expiring ones: the limit should spend itself on users who cannot connect.
    ordered = sorted(report.findings, key=lambda f: f.action != "remediate")
    hour = now.strftime("%Y-%m-%dT%H")
    for finding in ordered:
        if len(report.enqueued) >= allowed:
            report.held_back.append(
                {
                    "vm": str(finding.vm),
                    "reason": (
                        f"blast radius: sweeps may enqueue {limit} VMs per {settings.sweep_window_hours} h "
                        f"and {earlier} were enqueued since {window_start:%Y-%m-%d %H:%M} UTC "
                        f"(RDPR_SWEEP_MAX_VMS={settings.sweep_max_vms}, "
                        f"RDPR_SWEEP_MAX_PERCENT={settings.sweep_max_percent}, "
                        f"RDPR_SWEEP_WINDOW_HOURS={settings.sweep_window_hours})"
                    ),
                }
            )
            continue
        dedup_key = f"sweep:{hour}:{finding.vm.key}"
        if not sink.claim(dedup_key):
            report.held_back.append({"vm": str(finding.vm), "reason": "already enqueued by a sweep this hour"})
            continue
        plan = Plan.RENEW_ONLY if finding.action == "renew" else Plan.AUTO
        request = RemediationRequest(
            finding.vm,
            Trigger.SWEEP,
            "sweep: " + "; ".join(finding.evidence)[:900],
            RemediationOptions(plan=plan, dry_run=settings.dry_run),
            dedup_key,
        )
        with given_back_on_failure(sink.unclaim, dedup_key):  # the next sweep this hour may try the VM again
            held = _admit_and_enqueue(settings, sink, request)
        if held:
            report.held_back.append({"vm": str(finding.vm), "reason": held})
            continue
        report.enqueued.append(request.request_id)
