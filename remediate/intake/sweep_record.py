"""What the sweep saw and did, per VM: written to the fleet inventory (Table storage) and to telemetry.

The sweep decides; this module only records. Every Windows VM in scope gets an observation, also those the
sweep did not probe (deallocated, opted out, agent not ready), with the reason, so the fleet view is complete.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from remediate import telemetry
from remediate.engine import policy
from remediate.fleet import FleetStore, Observation, SweepSummary, forecast, summary_by_status, sweep_key
from remediate.settings import Settings

if TYPE_CHECKING:
    from remediate.azure.inventory import VmRecord
    from remediate.azure.logs import EventEvidence
    from remediate.intake.sweep import Finding, SweepReport
    from remediate.probe import ProbeResult

log = logging.getLogger(__name__)

# Per-VM telemetry is kept for what an operator charts or acts on: a finding, a broken probe, or a certificate
# expiring within this many days. Healthy VMs far from expiry are counted in the sweep's summary only.
TELEMETRY_HORIZON_DAYS = 56


def record_sweep(
    store: FleetStore | None,
    settings: Settings,
    report: SweepReport,
    inventory: Sequence[VmRecord],
    events: dict[str, list[EventEvidence]],
    probes: dict[str, ProbeResult],
    started: dt.datetime,
) -> list[Observation]:
    sweep_id = sweep_key(started)
    findings = {f.vm.key: f for f in report.findings}
    held = {h["vm"].lower(): h["reason"] for h in report.held_back}
    observations = [
        _observe(settings, report, record, events, probes.get(record.vm.key), findings, held, sweep_id, started)
        for record in inventory
    ]
    summary = SweepSummary(
        sweepId=sweep_id,
        startedAt=started.isoformat(),
        mode=report.mode,
        windowsVms=report.windows_vms,
        eligible=report.eligible,
        probed=report.probed,
        findings=len(report.findings),
        queued=len(report.enqueued),
        heldBack=sum(1 for o in observations if o.disposition == "held-back"),
        stopped=report.stopped or "",
        byStatus=summary_by_status(observations),
    )
    if store is not None:
        store.record(summary, observations)
    _telemetry(summary, observations, started.date())
    return observations


def _observe(
    settings: Settings,
    report: SweepReport,
    record: VmRecord,
    events: dict[str, list[EventEvidence]],
    result: ProbeResult | None,
    findings: dict[str, Finding],
    held: dict[str, str],
    sweep_id: str,
    started: dt.datetime,
) -> Observation:
    vm = record.vm
    observation = Observation(
        vm=str(vm),
        vmName=vm.name,
        subscriptionId=vm.subscription,
        resourceGroup=vm.resource_group,
        sweepId=sweep_id,
        observedAt=started.isoformat(),
        powerState=record.power_state or "unknown",
        probeStatus=str(result.status) if result is not None else "not-probed",
        probeDetail=result.detail if result is not None else _not_probed(settings, record),
        evidence=[
            f"event {e.event_id} x{e.count} (last {e.last_seen:%Y-%m-%d %H:%M} UTC)" for e in events.get(vm.key, [])
        ],
    )
    if result is not None:
        observation.tlsVersion = result.tls_version or ""
        cert = result.certificate
        if cert is not None:
            observation.thumbprint = cert.thumbprint_sha1
            observation.issuer = cert.issuer
            observation.issuerKind = "self-signed" if cert.self_signed else "ca-issued"
            observation.notAfter = cert.not_after.astimezone(dt.UTC).isoformat()
            observation.daysLeft = cert.days_remaining
    finding = findings.get(vm.key)
    if finding is not None:
        observation.finding = finding.action
        observation.disposition, observation.dispositionReason = _disposition(report, str(vm), held)
    elif result is None:
        observation.disposition, observation.dispositionReason = "skipped", observation.probeDetail
    return observation


def _disposition(report: SweepReport, vm: str, held: dict[str, str]) -> tuple[str, str]:
    if report.mode != "remediate":
        return "reported", "report mode (RDPR_SWEEP_MODE=report): not queued"
    if vm.lower() in held:
        return "held-back", held[vm.lower()]
    if report.stopped:
        return "held-back", report.stopped
    return "queued", "queued for remediation by this sweep"


def _not_probed(settings: Settings, record: VmRecord) -> str:
    from remediate.azure.vm import VmView

    view = VmView(record.vm, record.os_type, record.power_state, True, record.computer_name, record.tags)
    refusal = policy.scope_refusal(settings, record.vm) or policy.vm_refusal(settings, view)
    if refusal:
        return f"not probed: {refusal}"
    if not settings.sweep_probe:
        return "not probed: the sweep's probe is off (RDPR_SWEEP_PROBE=false)"
    return "not probed: no private IP address"


def _telemetry(summary: SweepSummary, observations: list[Observation], today: dt.date) -> None:
    for o in observations:
        if o.needs_attention or (o.daysLeft is not None and o.daysLeft <= TELEMETRY_HORIZON_DAYS):
            dims = {k: v for k, v in o.to_json().items() if k != "evidence"}
            telemetry.sweep_event(
                "sweep observation",
                {"event": telemetry.EVENT_SWEEP_VM, **dims, "evidence": "; ".join(o.evidence)[:2000]},
            )
    expired, weeks = forecast(observations, today)
    dims = {k: v for k, v in summary.to_json().items() if k != "byStatus"}
    dims["byStatus"] = json.dumps(summary.byStatus)  # KQL: parse_json(tostring(customDimensions.byStatus))
    dims["expiredCertificates"] = expired
    for index, week in enumerate(weeks, start=1):
        dims[f"expiringWeek{index}"] = week.expiring
    telemetry.sweep_event("sweep summary", {"event": telemetry.EVENT_SWEEP, **dims})
