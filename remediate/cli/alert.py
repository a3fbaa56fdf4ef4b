"""`rdp-remediate alert PAYLOAD.json`: what the alert endpoint would do with this payload, without enqueuing.

The same `AlertIntake` the Function runs, with a sink that records instead of queueing and treats every
(alert, VM) pair as new, so the answer shows what a first delivery would start.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from remediate.cli import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE
from remediate.cli.common import AZURE_SETTINGS, print_json, settings_epilog
from remediate.intake.service import AlertDecision, AlertIntake, ComputerResolver, RecordingSink
from remediate.model import VmId
from remediate.settings import Settings

EPILOG = settings_epilog(
    *AZURE_SETTINGS,
    "RDPR_OPT_OUT_TAG",
    examples=(
        "rdp-remediate alert examples/alerts/metric-vm.json --offline",
        "rdp-remediate alert examples/alerts/log-v2-workspace-computer.json --json",
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("payload", type=Path, metavar="PAYLOAD.json", help="an alert in the common alert schema")
    parser.add_argument(
        "--offline",
        action="store_true",
        help="make no Azure call at all: Computer dimensions are listed as unresolved",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object for scripts")


def run(args: argparse.Namespace) -> int:
    path: Path = args.payload
    try:
        body = path.read_bytes()
    except OSError as exc:
        print(f"rdp-remediate: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    settings = Settings.from_env()
    intake = AlertIntake(RecordingSink(), settings, None if args.offline else _azure_resolver(settings))
    with _quiet_intake_log():
        decision = intake.decide(body)
    report = summary(decision)
    if args.json:
        _print_json(report)
    elif decision.error is None:
        _print_text(decision, report)
    if decision.error is not None:
        print(f"rdp-remediate: invalid alert: {decision.error.reason}", file=sys.stderr)
        return EXIT_USAGE
    if decision.answer.status >= 500:
        print(f"rdp-remediate: {report['reason']}", file=sys.stderr)
        return EXIT_PROBLEM
    return EXIT_OK


def summary(decision: AlertDecision) -> dict[str, Any]:
    """The `--json` object (printed camelCase): accepted, reason, alert_id, vm_ids, unresolved, ignored."""
    if decision.accepted:
        count = len(decision.accepted)
        reason = f"{count} remediation request{'s' if count != 1 else ''} would be enqueued"
    elif decision.answer.status >= 500:
        reason = str(decision.answer.body["error"]["message"])
    else:
        reason = decision.reason
    return {
        "accepted": bool(decision.accepted),
        "reason": reason,
        "alert_id": decision.alert.alert_id if decision.alert else None,
        "vm_ids": [str(request.vm) for request in decision.accepted],
        "unresolved": [{"computer": item["computer"]} for item in decision.unresolved],
        "ignored": [item.to_json() for item in decision.ignored],
    }


def _azure_resolver(settings: Settings) -> ComputerResolver:
    """Resolve Computer names through Resource Graph; the SDK is imported only if the alert needs it."""

    def resolve(computers: list[str], scopes: tuple[str, ...]) -> dict[str, list[VmId]]:
        from remediate.azure.clients import get_clients
        from remediate.azure.inventory import find_vms_by_computer_name

        return find_vms_by_computer_name(get_clients(settings), computers, scopes)

    return resolve


@contextmanager
def _quiet_intake_log() -> Iterator[None]:
    # The intake logs refusals as warnings for the Function's telemetry; here the command prints them itself.
    log = logging.getLogger("remediate.intake.service")
    previous = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(previous)


def _print_json(report: dict[str, Any]) -> None:
    print_json(report)


def _print_text(decision: AlertDecision, report: dict[str, Any]) -> None:
    alert = decision.alert
    if alert is not None:
        print(f"alert      {alert.alert_id}")
        print(f"rule       {alert.rule} ({alert.family.value}, {alert.condition.value})")
    verdict = "would start work" if report["accepted"] else "nothing to do"
    print(f"decision   {verdict}: {report['reason']}")
    for request in decision.accepted:
        print(f"  enqueue  {request.vm}")
        print(f"           {request.reason}")
    for item in decision.ignored:
        print(f"  ignore   {item.target}")
        print(f"           {item.reason}")
    for entry in decision.unresolved:
        print(f"  unknown  computer {entry['computer']!r}: {entry['reason']}")
