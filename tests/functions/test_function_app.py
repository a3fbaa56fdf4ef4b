"""function_app.py end to end: HTTP intake, the queue, the worker, the status API and the timer sweep."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from remediate.model import VmId
from tests.functions.conftest import Functions, body


def vm_id(functions: Functions, scenario: str) -> str:
    return functions.emulator.fleet.by_scenario(scenario)[0].resource_id


def alert_id_for(target: str, name: str | None = None) -> str:
    """An Alerts Management alert id in the target's subscription (the shape `essentials.alertId` has): a new
    one, or the same one for the same `name` (an action group's retry carries the same alert)."""
    parts = target.split("/")
    subscription = parts[2] if len(parts) > 2 and parts[1].lower() == "subscriptions" else str(uuid.UUID(int=1))
    guid = uuid.uuid5(uuid.NAMESPACE_URL, name) if name else uuid.uuid4()
    return f"/subscriptions/{subscription}/providers/Microsoft.AlertsManagement/alerts/{guid}"


def metric_alert(target: str, condition: str = "Fired", alert_id: str | None = None) -> dict[str, Any]:
    return {
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": {
            "essentials": {
                "alertId": alert_id or alert_id_for(target),
                "alertRule": "vm-availability",
                "severity": "Sev1",
                "signalType": "Metric",
                "monitorCondition": condition,
                "monitoringService": "Platform",
                "alertTargetIDs": [target.lower()],
                "configurationItems": ["vm"],
                "originAlertId": "x",
                "firedDateTime": dt.datetime.now(dt.UTC).isoformat(),
                "essentialsVersion": "1.0",
                "alertContextVersion": "1.0",
            },
            "alertContext": {
                "properties": None,
                "conditionType": "SingleResourceMultipleMetricCriteria",
                "condition": {
                    "windowSize": "PT5M",
                    "allOf": [
                        {
                            "metricName": "VmAvailabilityMetric",
                            "metricNamespace": "Microsoft.Compute/virtualMachines",
                            "operator": "LessThan",
                            "threshold": "1",
                            "timeAggregation": "Average",
                            "dimensions": [],
                            "metricValue": 0.0,
                        }
                    ],
                },
            },
            "customProperties": None,
        },
    }


def test_the_app_declares_its_functions(declared_functions: dict[str, Any]) -> None:
    assert set(declared_functions) == {
        "alerts",
        "remediations",
        "remediation_status",
        "remediation_release",
        "remediation_approve",
        "remediation_reject",
        "sweep",
        "worker",
        "poison",
        "reconcile",
    }
    bindings = {name: [b.get_dict_repr() for b in f.get_bindings()] for name, f in declared_functions.items()}
    alerts_trigger = next(b for b in bindings["alerts"] if b["type"] == "httpTrigger")
    assert str(alerts_trigger["authLevel"]).lower().endswith("function") and alerts_trigger["route"] == "alerts"
    timer = next(b for b in bindings["sweep"] if b["type"] == "timerTrigger")
    assert timer["schedule"] == "%RDPR_SWEEP_SCHEDULE%" and not timer.get("runOnStartup", False)
    queue = next(b for b in bindings["worker"] if b["type"] == "queueTrigger")
    assert queue["queueName"] == "%RDPR_QUEUE_NAME%" and queue["connection"] == "AzureWebJobsStorage"


def test_an_alert_is_queued_remediated_and_readable_through_the_status_api(functions: Functions) -> None:
    response = functions.post("alerts", metric_alert(vm_id(functions, "expired-certificate")))
    assert response.status_code == 202, response.get_body()
    request_id = body(response)["requestIds"][0]
    assert body(functions.get_status(request_id))["state"] == "queued"
    assert functions.queued() == 1
    functions.host.drain(timeout=60)
    status = body(functions.get_status(request_id))
    assert status["outcome"] == "remediated" and status["rebooted"]
    assert [s["name"] for s in status["steps"]][:2] == ["preflight", "locate"]


def test_an_action_group_retry_enqueues_once(functions: Functions) -> None:
    alert = metric_alert(vm_id(functions, "expired-certificate"))
    first, second = functions.post("alerts", alert), functions.post("alerts", alert)
    assert first.status_code == 202 and second.status_code in (200, 202)
    assert body(second).get("requestIds", []) == []
    assert functions.queued() == 1


def test_a_resolved_alert_is_acknowledged_and_ignored(functions: Functions) -> None:
    response = functions.post("alerts", metric_alert(vm_id(functions, "expired-certificate"), "Resolved"))
    assert response.status_code == 200 and "Resolved" in body(response)["reason"]
    assert functions.queued() == 0


@pytest.mark.parametrize(
    ("payload", "status"),
    [(b"{not json", 400), (b"x" * (256 * 1024 + 1), 413), (b'{"schemaId": "azureMonitorCommonAlertSchema"}', 400)],
)
def test_bad_alert_bodies_get_a_clear_error(functions: Functions, payload: bytes, status: int) -> None:
    response = functions.post("alerts", payload)
    assert response.status_code == status
    assert body(response)["error"]["message"]
    assert functions.queued() == 0


def test_runbook_request_and_status(functions: Functions) -> None:
    vms = [vm_id(functions, "firewall-closed"), vm_id(functions, "linux")]
    response = functions.post("remediations", {"vms": vms, "reason": "ticket 4711", "plan": "auto"})
    assert response.status_code == 202, response.get_body()
    ids = body(response)["requestIds"]
    assert len(ids) == 2 and all(url.endswith(i) for url, i in zip(body(response)["statusUrls"], ids, strict=True))
    functions.host.drain(timeout=60)
    outcomes = {body(functions.get_status(i))["vm"]: body(functions.get_status(i))["outcome"] for i in ids}
    assert outcomes == {vms[0]: "remediated", vms[1]: "skipped"}


@pytest.mark.parametrize("target", ["vm01.contoso.com", "10.0.0.4"])
def test_runbook_refuses_host_names_and_ips(functions: Functions, target: str) -> None:
    response = functions.post("remediations", {"vms": [target]})
    assert response.status_code == 400 and "vms" in body(response)["error"]["message"]


def test_status_of_unknown_or_malformed_ids(functions: Functions) -> None:
    assert functions.get_status(uuid.uuid4().hex).status_code == 404
    assert functions.get_status("../../etc").status_code == 400


def test_the_sweep_in_report_mode_queues_nothing(functions: Functions) -> None:
    functions.sweep()
    assert functions.queued() == 0


def test_the_sweep_in_remediate_mode_renews_the_expiring_certificate_without_a_reboot(
    functions: Functions, product_settings: Any
) -> None:
    import dataclasses

    from remediate.intake.app import reset_app

    settings = dataclasses.replace(
        product_settings,
        sweep_mode="remediate",
        sweep_max_vms=50,
        sweep_max_percent=100.0,
        storm_max_percent=100.0,  # every VM the sweep enqueues may change: the storm guard is not under test here
    )
    functions.app = reset_app(settings)
    functions.sweep()
    functions.host.drain(timeout=90)
    expiring = VmId.parse(vm_id(functions, "expiring-soon"))
    record = functions.app.ledger.history(expiring)[0]
    assert record.outcome == "remediated" and not record.rebooted
    assert record.options["plan"] == "renew-only"
    out_of_scope = VmId.parse(vm_id(functions, "out-of-scope"))
    assert functions.app.ledger.history(out_of_scope) == []
