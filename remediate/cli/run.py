"""`rdp-remediate run --vm ID`: remediate one VM now, showing each step, and print the verdict."""

from __future__ import annotations

import argparse

from remediate.cli.common import add_json_flag, print_json, progress_line, services, vm_id
from remediate.model import Plan, RemediationOptions, RemediationRequest, Trigger


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vm", required=True, type=vm_id, help="the VM's resource id")
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
    options = RemediationOptions(Plan(args.plan), args.dry_run, args.diagnose_only, args.force, args.force_keystore)
    request = RemediationRequest(args.vm, Trigger.CLI, args.reason, options)
    if not args.json:
        print(f"remediating {args.vm.name} (request {request.request_id})")
    result = remediate(request, settings, ledger, clients, progress=progress_line)
    if args.json:
        print_json(result.to_json())
    else:
        print(f"{result.outcome.value}: {result.reason}")
        if result.actions:
            print(f"actions: {'; '.join(result.actions)}")
        print(f"rebooted: {'yes' if result.rebooted else 'no'}   duration: {result.duration_seconds:.1f} s")
    return 0 if result.outcome.succeeded else 1
