"""The demo: the whole product on the local emulator, through the real Function handlers and queue.

Starts the Azure emulator (one VM per scenario, with live RDP listeners) and Azurite, then delivers
an Azure Monitor alert, a runbook request and a sweep to the decorated functions in `function_app`, lets a
local stand-in for the Functions host drain the queue (Azurite) through the queue-trigger function, and
prints what happened to every VM. `python -m sim.demo` or `rdp-remediate demo`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from sim.appservice import PLATFORM_SETTING, operator_headers

SCENARIO_ORDER = (
    "expired-certificate",
    "expiring-soon",
    "keystore-acl",
    "keystore-corrupt",
    "firewall-closed",
    "tls12-disabled",
    "healthy",
    "linux",
    "deallocated",
    "agent-not-ready",
    "opted-out",
    "out-of-scope",
    "never-returns",
    "key-deny",
    "key-corrupt",
    "custom-certificate",
    "policy-certificate",
    "firewall-policy",
    "firewall-custom-allow",
    "cached-session",
    "wmi-hung",
    # Causes no repair fixes: each ends with its cause and the next step, nothing changed.
    "brute-force-storm",
    "nsg-no-path",
    "clock-skew",
    "security-layer-policy",
    "port-taken",
)
# The alert names one VM, the sweep finds the expiring certificate, the runbook asks for the rest.
ALERTED = "expired-certificate"
SWEPT = "expiring-soon"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rdp-remediate demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--time-scale",
        type=float,
        default=0.02,
        help="simulated Azure operation times as a fraction of real ones (default 0.02)",
    )
    parser.add_argument("--report", default="demo-report.json", help="where to write the JSON report")
    args = parser.parse_args(argv)
    started = time.monotonic()
    from sim.appinsights import Ingestion
    from sim.azurite import Azurite
    from sim.fleet import demo_fleet
    from sim.server import Emulator

    say(
        f"starting the Azure emulator ({len(SCENARIO_ORDER)} VMs, one per scenario), Azurite "
        "and Application Insights ingestion ..."
    )
    fleet = demo_fleet()
    with (
        Azurite() as azurite,
        Emulator(fleet, time_scale=args.time_scale, rdp_port=_free_rdp_port()) as emulator,
        Ingestion() as ingestion,
    ):
        _configure(emulator, azurite, ingestion)
        report = _run(fleet, emulator)
        _telemetry_summary(ingestion)
    Path(args.report).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    _print_table(report)
    say(f"\nreport written to {args.report}; demo took {time.monotonic() - started:.1f} s")
    expected_ok = all(entry["outcome"] == entry["expected"] for entry in report)
    return 0 if expected_ok else 1


def say(text: str) -> None:
    print(text, flush=True)


def _free_rdp_port() -> int:
    from sim.azurite import free_port

    return free_port("127.0.0.2")


def _configure(emulator: Any, azurite: Any, ingestion: Any) -> None:
    """Point the product at the emulators exactly as an operator would: environment variables."""
    env = emulator.settings_env()
    env.update(
        {
            # Telemetry through the real Azure Monitor exporter, to the local ingestion endpoint.
            "APPLICATIONINSIGHTS_CONNECTION_STRING": ingestion.connection_string,
            "REQUESTS_CA_BUNDLE": ingestion.ca_cert,
            "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
            "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
            "RDPR_STORAGE_CONNECTION": azurite.connection_string,
            "RDPR_QUEUE_NAME": "remediation-requests",
            "RDPR_SWEEP_MODE": "remediate",
            "RDPR_BOOT_TIMEOUT_SECONDS": "15",
            "RDPR_PROBE_TIMEOUT_SECONDS": "2",
            # Room for every broken VM of the demo fleet (the causes no repair fixes are found broken too), so the
            # expiring certificate is still renewed after them.
            "RDPR_SWEEP_MAX_VMS": "25",
            "RDPR_SWEEP_MAX_PERCENT": "100",
            # The storm guard counts each remediation as it starts changing its VM, after the sweep has sized the
            # fleet: 20 % of this one-VM-per-scenario fleet would hold the sweep's renewal behind the runbook's.
            "RDPR_STORM_MAX_PERCENT": "100",
            "RDPR_CIRCUIT_MIN_OUTCOMES": "50",
        }
    )
    # The demo plays App Service authentication's part for the runbook route (the platform's setting here; the
    # runbook identity's principal header in `_post`): in Azure, Microsoft Entra ID vouches for the caller.
    env.setdefault(*PLATFORM_SETTING)
    os.environ.update(env)
    from remediate.intake.app import reset_app
    from remediate.settings import Settings, get_settings

    get_settings.cache_clear()
    reset_app(Settings.from_env(os.environ))


def _telemetry_summary(ingestion: Any) -> None:
    from collections import Counter

    from remediate import telemetry

    telemetry.flush()
    events = Counter(m["customDimensions"].get("event") for m in ingestion.messages())
    traces = {
        m["operationId"] for m in ingestion.messages() if m["customDimensions"].get("event") == "remediation.outcome"
    }
    say(
        f"\n5. Application Insights received {events['remediation.outcome']} outcomes, {events['remediation.step']} "
        f"steps and {events['sweep.vm']} sweep observations as customDimensions, in {len(traces)} request traces"
    )


def _run(fleet: Any, emulator: Any) -> list[dict[str, Any]]:
    import azure.functions as func
    from azure.functions.timer import TimerRequest

    import function_app
    from remediate.intake.app import get_app
    from sim.host import LocalQueueHost

    app = get_app()
    vms = {vm.scenario: vm for vm in fleet}
    host = LocalQueueHost(
        function_app.worker,
        app.queue.queue,
        _poison(app),
        batch_size=8,
        max_dequeue_count=app.settings.max_dequeue_count,
    )

    say(f"\n1. Azure Monitor fires a log alert for {vms[ALERTED].name} (event 1058: certificate not replaced)")
    payload = _alert_payload(vms[ALERTED].resource_id)
    essentials = payload["data"]["essentials"]
    emulator.alerts.fire(essentials["alertId"], essentials["alertTargetIDs"][0])  # Azure Monitor raised it
    alert = _post(func, function_app.alerts, "/api/alerts", payload)
    say(f"   -> HTTP {alert.status_code}: {alert.get_body().decode()[:160]}")

    runbook_vms = [vms[s].resource_id for s in SCENARIO_ORDER if s not in (ALERTED, SWEPT)]
    say(f"\n2. An operator's runbook asks for {len(runbook_vms)} more VMs")
    body = {"vms": runbook_vms, "reason": "demo: reported by the service desk"}
    runbook = _post(func, function_app.remediations, "/api/remediations", body)
    say(f"   -> HTTP {runbook.status_code}: {len(json.loads(runbook.get_body()).get('requestIds', []))} requests")

    say("\n3. The queue-trigger workers remediate (Run Command, restart, verify) ...")
    stats = host.drain(timeout=240)
    say(f"   -> {stats.invocations} deliveries, {stats.succeeded} completed, {len(stats.poisoned)} poisoned")

    say("\n4. The scheduled sweep (remediate mode) probes every running Windows VM in scope")
    function_app.sweep(TimerRequest(past_due=False))
    stats = host.drain(timeout=120)
    say(f"   -> queue drained again ({stats.invocations} deliveries in all)")
    return _report(app.ledger, fleet)


def _post(func: Any, handler: Any, route: str, body: dict[str, Any]) -> Any:
    caller = {} if route == "/api/alerts" else operator_headers("demo-runbook")
    request = func.HttpRequest(
        "POST",
        f"https://localhost{route}",
        headers={"content-type": "application/json", **caller},
        params={},
        route_params={},
        body=json.dumps(body).encode(),
    )
    return handler(request)


def _poison(app: Any) -> Any:
    from remediate.intake.queue import queue_client

    return queue_client(app.settings, f"{app.settings.queue_name}-poison")


def _alert_payload(vm_id: str) -> dict[str, Any]:
    """A Log Alerts V2 payload (common alert schema) from a workspace-scoped rule split by _ResourceId."""
    workspace = (
        "/subscriptions/00000000-0000-4000-8000-000000000001/resourceGroups/rg-monitor/providers/"
        "Microsoft.OperationalInsights/workspaces/law-rdp"
    )
    fired = dt.datetime.now(dt.UTC).isoformat()
    return {
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": {
            "essentials": {
                "alertId": f"/subscriptions/00000000-0000-4000-8000-000000000001/providers/Microsoft.AlertsManagement/"
                f"alerts/{uuid.uuid4()}",
                "alertRule": "rdp-certificate-events",
                "severity": "Sev2",
                "signalType": "Log",
                "monitorCondition": "Fired",
                "monitoringService": "Log Alerts V2",
                "alertTargetIDs": [workspace.lower()],
                "configurationItems": [vm_id.lower()],
                "originAlertId": str(uuid.uuid4()),
                "firedDateTime": fired,
                "description": "RDP TLS failures",
                "essentialsVersion": "1.0",
                "alertContextVersion": "1.0",
            },
            "alertContext": {
                "properties": None,
                "conditionType": "LogQueryCriteria",
                "condition": {
                    "windowSize": "PT15M",
                    "windowStartTime": fired,
                    "windowEndTime": fired,
                    "allOf": [
                        {
                            "searchQuery": "Event | where EventID in (1057, 1058, 36870)",
                            "metricMeasureColumn": None,
                            "targetResourceTypes": "['Microsoft.OperationalInsights/workspaces']",
                            "operator": "GreaterThan",
                            "threshold": "0",
                            "timeAggregation": "Count",
                            "dimensions": [{"name": "_ResourceId", "value": vm_id.lower()}],
                            "metricValue": 1.0,
                            "failingPeriods": {"numberOfEvaluationPeriods": 1, "minFailingPeriodsToAlert": 1},
                        }
                    ],
                },
            },
            "customProperties": None,
        },
    }


EXPECTED = {
    "expired-certificate": "remediated",
    "expiring-soon": "remediated",
    "keystore-acl": "remediated",
    # the one key set aside and renewed did not help; the store rename would take the Azure agent's transport key
    "keystore-corrupt": "failed",
    "firewall-closed": "remediated",
    "tls12-disabled": "remediated",
    "healthy": "healthy",
    "linux": "skipped",
    "deallocated": "skipped",
    "agent-not-ready": "skipped",
    "opted-out": "skipped",
    "out-of-scope": "skipped",
    # Under the default reboot policy (when-required) the renewal needs no restart, so the VM that would never
    # come back from one is not restarted; the workflow tests cover the restart that never ends.
    "never-returns": "remediated",
    "key-deny": "remediated",
    "key-corrupt": "remediated",
    "custom-certificate": "remediated",
    "policy-certificate": "skipped",  # reported to its owner, nothing changed
    "firewall-policy": "skipped",  # reported: a Group Policy copy governs the rule
    "firewall-custom-allow": "healthy",  # an allow path exists: no firewall change
    "cached-session": "failed",  # the renewal is refused under an RDP session
    "wmi-hung": "skipped",  # facts unknown: nothing changed on a guess
    "brute-force-storm": "skipped",  # under attack: restrict the source, no reboot
    "nsg-no-path": "skipped",  # unknown: no network path (the NSG rule named), never rebooted
    "clock-skew": "skipped",  # reported: the guest's clock, not its certificate
    "security-layer-policy": "skipped",  # reported: SecurityLayer / FIPS policy, named by the negotiation failure
    "port-taken": "skipped",  # reported: another program holds the port
}


def _report(ledger: Any, fleet: Any) -> list[dict[str, Any]]:
    from remediate.model import VmId

    entries = []
    for scenario in SCENARIO_ORDER:
        vm = next(v for v in fleet if v.scenario == scenario)
        records = ledger.history(VmId.parse(vm.resource_id))
        finished = [r for r in records if r.outcome is not None]
        # The most telling record: the newest that was not skipped (a later sweep may only hit a cooldown), else the
        # newest that named a cause (a cause no repair fixes ends skipped), else the newest.
        named = [r for r in finished if any(step.name == "classify" for step in r.steps)]
        fallback = named[0] if named else (finished[0] if finished else None)
        record = next((r for r in finished if r.outcome != "skipped"), fallback)
        entries.append(_entry(vm, scenario, record))
    return entries


def _entry(vm: Any, scenario: str, record: Any) -> dict[str, Any]:
    if record is None:
        return {
            "vm": vm.name,
            "scenario": scenario,
            "expected": EXPECTED[scenario],
            "outcome": "not requested",
            "finding": "",
            "actions": [],
            "actionDetails": [],
            "rebooted": False,
            "verification": None,
            "durationSeconds": None,
            "trigger": None,
            "reason": "",
        }
    steps = {step.name: step for step in record.steps}
    finding = _finding(steps)
    verify = next((steps[name] for name in ("verify-2", "verify") if name in steps), None)
    # The repair steps that changed the VM, by name; their own words go into action_details.
    changed = [
        name
        for name, step in steps.items()
        if step.summary and step.summary.get("changed") and not name.startswith(("diagnose", "verify", "plan"))
    ]
    details = [action for name in changed for action in (steps[name].summary or {}).get("actions", [])]
    duration = (record.finished_at - record.accepted_at).total_seconds() if record.finished_at else None
    return {
        "vm": vm.name,
        "scenario": scenario,
        "expected": EXPECTED[scenario],
        "outcome": record.outcome,
        "trigger": record.trigger,
        "finding": finding,
        "actions": changed,
        "actionDetails": details,
        "rebooted": record.rebooted,
        "verification": (verify.summary or {}).get("status") if verify else None,
        "durationSeconds": round(duration, 1) if duration is not None else None,
        "reason": record.outcome_reason,
        "requestId": record.request_id,
    }


def _finding(steps: dict[str, Any]) -> str:
    probe = steps.get("probe")
    status = (probe.summary or {}).get("status") if probe else None
    plan = steps.get("plan")
    planned = [step["action"] for step in (plan.summary or {}).get("steps", [])] if plan else []
    refused = [refusal["action"] for refusal in (plan.summary or {}).get("refusals", [])] if plan else []
    parts = [f"probe {status}"] if status else []
    named = (steps["classify"].summary or {}) if "classify" in steps else {}
    if named.get("disposition") not in (None, "repair"):
        parts.append(f"{named['disposition']}: {named['cause']}")
    if planned:
        parts.append("plan " + "+".join(planned))
    if refused:
        parts.append("refused " + "+".join(refused))
    return ", ".join(parts) or (steps["preflight"].detail if "preflight" in steps else "")


def _print_table(report: list[dict[str, Any]]) -> None:
    """The verdict table, at most 120 columns wide (long cells wrap inside their column)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("VM", no_wrap=True)  # named after its scenario (the JSON report has both)
    table.add_column("finding", no_wrap=True, overflow="ellipsis", max_width=30)
    table.add_column("actions", min_width=18, max_width=20)  # one repair per line
    for name in ("rebooted", "verified", "outcome", "duration"):
        table.add_column(name, no_wrap=True)
    for e in report:
        table.add_row(
            e["vm"],
            e["finding"] or e["reason"],
            "\n".join(e["actions"]) or "-",
            "yes" if e["rebooted"] else "no",
            e["verification"] or "-",
            e["outcome"] + ("" if e["outcome"] == e["expected"] else f" (expected {e['expected']})"),
            f"{e['durationSeconds']:.1f} s" if e["durationSeconds"] is not None else "-",
        )
    say("")
    Console(width=120, highlight=False, force_terminal=sys.stdout.isatty()).print(table)
    say("")
    for e in report:
        if e["reason"]:
            say(f"{e['vm']}: {e['outcome']}: {e['reason']}")


if __name__ == "__main__":
    sys.exit(main())
