"""`rdp-remediate run --vm ID`: remediate one VM now, showing each step, and print the verdict.

Ctrl-C stops it cleanly: the request is recorded as interrupted (its journal kept), the VM's lock is released,
and `run --resume REQUEST_ID` continues it later from its last finished step. A Run Command or restart that
was already sent keeps running in Azure: neither can be cancelled.
"""

from __future__ import annotations

import argparse
import signal
import sys

from remediate.cli import EXIT_INTERRUPTED, EXIT_OK, EXIT_PROBLEM, EXIT_REFUSED, EXIT_USAGE
from remediate.cli.common import (
    AZURE_SETTINGS,
    STORAGE_SETTINGS,
    Progress,
    add_json_flag,
    print_json,
    services,
    settings_epilog,
    vm_id,
)
from remediate.model import Outcome, Plan, RemediationOptions, RemediationRequest, Trigger, VmId

EPILOG = settings_epilog(
    *AZURE_SETTINGS,
    *STORAGE_SETTINGS,
    "RDPR_DRY_RUN",
    "RDPR_REBOOT_POLICY",
    "RDPR_COOLDOWN_MINUTES",
    "RDPR_MAX_ATTEMPTS",
    "RDPR_LOCK_MINUTES",
    "RDPR_WORKFLOW_DEADLINE_MINUTES",
    examples=(
        "rdp-remediate run --vm /subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/VM",
        "rdp-remediate run --vm ID --dry-run",
        "rdp-remediate run --vm ID --diagnose-only --json",
        "rdp-remediate run --resume 3f1c0b9e7a2d4c58b6e1f0a9d8c7b6a5",
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--vm", type=vm_id, help="the VM's resource id")
    target.add_argument("--resume", metavar="REQUEST_ID", help="continue an interrupted request from its journal")
    parser.add_argument(
        "--plan",
        choices=[Plan.AUTO.value, Plan.FULL.value],
        default=Plan.AUTO.value,
        help="auto: repairs for the findings, escalating if needed; full: MachineKeys reset + renewal",
    )
    parser.add_argument("--dry-run", action="store_true", help="plan only: no Run Command, no restart")
    parser.add_argument("--diagnose-only", action="store_true", help="run only the read-only diagnose script")
    parser.add_argument(
        "--force",
        action="store_true",
        help="restart RDP services and reboot despite connected users",
    )
    parser.add_argument(
        "--force-keystore",
        action="store_true",
        help="rename MachineKeys although other key files live in it (never on a domain controller or CA)",
    )
    parser.add_argument("--reason", default="requested from the command line", help="recorded in the audit trail")
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    from remediate.engine.runner import remediate

    settings, ledger, clients = services()
    if args.resume:
        request = _resumable(ledger, args.resume)
        if isinstance(request, int):
            return request
    else:
        options = RemediationOptions(Plan(args.plan), args.dry_run, args.diagnose_only, args.force, args.force_keystore)
        request = RemediationRequest(args.vm, Trigger.CLI, args.reason, options)
    if not args.json:
        verb = "resuming" if args.resume else "remediating"
        print(f"{verb} {request.vm.name} (request {request.request_id})", flush=True)
    with Progress(f"{request.vm.name}") as reporter:
        current: list[str] = []

        def report(step: str, detail: str) -> None:
            if detail == "started":
                current[:] = [step]
            reporter.step(step, detail)

        try:
            result = remediate(request, settings, ledger, clients, progress=report)
        except KeyboardInterrupt:
            _interrupted(ledger, request, current[0] if current else None)
            return EXIT_INTERRUPTED
    if args.json:
        print_json(result.to_json())
    else:
        print(f"{result.outcome.value}: {result.reason}")
        if result.actions:
            print(f"actions: {'; '.join(result.actions)}")
        print(f"rebooted: {'yes' if result.rebooted else 'no'}   duration: {result.duration_seconds:.1f} s")
    return exit_code(result.outcome)


def exit_code(outcome: Outcome) -> int:
    """0 for what was asked and worked (a plan counts: a dry run or diagnose-only run asked for a plan)."""
    return EXIT_OK if outcome.succeeded or outcome is Outcome.PLANNED else EXIT_PROBLEM


def _resumable(ledger: object, request_id: str) -> RemediationRequest | int:
    from remediate.ledger import DONE, Ledger

    assert isinstance(ledger, Ledger)
    record = ledger.get(request_id)
    if record is None:
        print(
            f"rdp-remediate: no request {request_id!r} in the ledger (see `rdp-remediate history --vm ID`)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if record.state == DONE:
        print(
            f"rdp-remediate: request {request_id} already finished ({record.outcome}: {record.outcome_reason}); "
            "start a new one with `run --vm`",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    return RemediationRequest(
        VmId.parse(record.vm),
        Trigger(record.trigger),
        record.reason,
        RemediationOptions.from_json(dict(record.options)),
        None,
        record.request_id,
    )


def _interrupted(ledger: object, request: RemediationRequest, step: str | None) -> None:
    """Record the stop and free the lock, deaf to a second Ctrl-C while doing it."""
    from remediate.ledger import Ledger

    assert isinstance(ledger, Ledger)
    where = f"during step {step}" if step else "before the first step"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ledger.mark_interrupted(request.request_id, f"interrupted by the operator (Ctrl-C) {where}")
        ledger.release(request.vm, request.request_id)
    finally:
        signal.signal(signal.SIGINT, previous)
    print(
        f"rdp-remediate: interrupted {where}; request {request.request_id} is recorded as interrupted and the "
        f"lock on {request.vm.name} is released. A Run Command or restart already sent keeps running in Azure "
        f"(neither can be cancelled). Continue with: rdp-remediate run --resume {request.request_id}",
        file=sys.stderr,
    )
