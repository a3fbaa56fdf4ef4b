"""`rdp-remediate sweep`: run the scheduled sweep once, now, and print what it found and queued.

A report-mode sweep needs no ledger: it reads Azure and probes, and records its findings in the fleet inventory
when storage is configured (skipped, and said, when it is not).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from remediate.cli.common import (
    AZURE_SETTINGS,
    STORAGE_SETTINGS,
    Progress,
    add_json_flag,
    check_signed_in,
    fleet_store,
    print_json,
    services,
    settings_epilog,
    storage_configured,
)
from remediate.settings import Settings, get_settings

if TYPE_CHECKING:
    from remediate.intake.sweep import ProbeMany
    from remediate.probe import ProbeResult

EPILOG = settings_epilog(
    *AZURE_SETTINGS,
    "RDPR_SWEEP_MODE",
    "RDPR_SWEEP_PROBE",
    "RDPR_LOG_WORKSPACE_ID",
    "RDPR_EXPIRY_WARNING_DAYS",
    "RDPR_SWEEP_MAX_VMS",
    "RDPR_SWEEP_MAX_PERCENT",
    *STORAGE_SETTINGS,
    examples=("rdp-remediate sweep --mode report", "rdp-remediate sweep --mode report --json > findings.json"),
)


def counted_probes(settings: Settings, reporter: Progress) -> ProbeMany:
    """The sweep's probes, as `remediate.probe.probe_many` runs them, with `probed N/total` on the progress line
    (on a terminal at every probe; when piped, a line at every tenth)."""

    def probe_many(endpoints: Sequence[tuple[str, int]]) -> list[ProbeResult]:
        return asyncio.run(_probe_all(list(endpoints)))

    async def _probe_all(endpoints: list[tuple[str, int]]) -> list[ProbeResult]:
        from remediate.intake.sweep import PROBE_CONCURRENCY
        from remediate.probe import probe_async

        results: dict[int, ProbeResult] = {}
        pending = iter(range(len(endpoints)))
        step = max(1, len(endpoints) // 10)

        async def worker() -> None:
            for index in pending:  # one event loop: `next` is never interleaved
                host, port = endpoints[index]
                results[index] = await probe_async(
                    host,
                    port,
                    timeout=settings.probe_timeout_seconds,
                    expiry_warning_days=settings.expiry_warning_days,
                )
                if reporter.live or len(results) % step == 0 or len(results) == len(endpoints):
                    reporter.note(f"probed {len(results)}/{len(endpoints)} RDP listeners")

        await asyncio.gather(*(worker() for _ in range(min(PROBE_CONCURRENCY, len(endpoints)))))
        return [results[index] for index in range(len(endpoints))]

    return probe_many


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        choices=["report", "remediate"],
        default=None,
        help="report: findings only; remediate: queue remediations (default: RDPR_SWEEP_MODE)",
    )
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    from remediate.azure.clients import get_clients
    from remediate.intake.queue import RequestQueue
    from remediate.intake.service import RecordingSink
    from remediate.intake.sweep import run_sweep

    settings = get_settings()
    mode = args.mode or settings.sweep_mode
    with Progress(f"sweep ({mode})") as reporter:
        probe_many = counted_probes(settings, reporter)
        if mode == "remediate":
            settings, ledger, clients = services(settings)
            queue = RequestQueue.from_settings(settings, ledger)
            if settings.emulator:
                queue.create()
            report = run_sweep(
                settings, clients, queue, ledger, mode=mode, store=fleet_store(settings), probe_many=probe_many
            )
        else:
            clients = get_clients(settings)
            check_signed_in(clients)
            store = fleet_store(settings) if storage_configured(settings) else None
            if store is None:
                reporter.note("no storage configured: the findings are not kept in the fleet inventory")
            report = run_sweep(settings, clients, RecordingSink(), None, mode=mode, store=store, probe_many=probe_many)
    if args.json:
        print_json(report.to_json())
        return 0
    print(
        f"sweep ({report.mode}): {report.windows_vms} Windows VMs in scope, {report.eligible} eligible, "
        f"{report.probed} probed, {len(report.findings)} need attention"
    )
    for finding in report.findings:
        print(f"  {finding.action:<9} {finding.vm.name:<24} {'; '.join(finding.evidence)}")
    if report.stopped:
        print(f"stopped: {report.stopped}")
    if report.enqueued:
        print(f"queued {len(report.enqueued)} remediation(s): {', '.join(report.enqueued)}")
    for held in report.held_back:
        print(f"  held back {held['vm'].rsplit('/', 1)[-1]}: {held['reason']}")
    return 0
