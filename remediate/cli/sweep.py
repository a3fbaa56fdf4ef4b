"""`rdp-remediate sweep`: run the scheduled sweep once, now, and print what it found and queued."""

from __future__ import annotations

import argparse

from remediate.cli.common import add_json_flag, print_json, services


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        choices=["report", "remediate"],
        default=None,
        help="report: findings only; remediate: queue remediations (default: RDPR_SWEEP_MODE)",
    )
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    from remediate.intake.queue import RequestQueue
    from remediate.intake.sweep import run_sweep

    settings, ledger, clients = services()
    queue = RequestQueue.from_settings(settings, ledger)
    if settings.emulator:
        queue.create()
    report = run_sweep(settings, clients, queue, ledger, mode=args.mode)
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
