"""Closing the loop: the Azure Monitor alert that started a request is closed after a verified fix, and left open
with a comment otherwise, through the Alerts Management API the emulator serves."""

from __future__ import annotations

import uuid

from remediate.model import VmId
from sim.fleet import SUBSCRIPTION
from tests.functions.conftest import Functions, body
from tests.functions.test_function_app import metric_alert


def _fire(functions: Functions, scenario: str) -> tuple[str, str]:
    target = functions.emulator.fleet.by_scenario(scenario)[0].resource_id
    alert_id = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/{uuid.uuid4()}"
    functions.emulator.alerts.fire(alert_id, target)
    answer = functions.post("alerts", metric_alert(target, alert_id=alert_id))
    assert answer.status_code == 202
    return alert_id, body(answer)["requestIds"][0]


def test_the_alert_is_closed_with_a_comment_after_a_verified_fix(functions: Functions) -> None:
    alert_id, request_id = _fire(functions, "expired-certificate")
    functions.host.drain(timeout=60)
    status = body(functions.get_status(request_id))
    assert status["outcome"] == "remediated"
    alert = functions.emulator.alerts.get(alert_id)
    assert alert is not None and alert.state == "Closed"
    ((state, comment),) = alert.changes
    assert state == "Closed" and request_id in comment and "fixed and verified" in comment
    assert "restarted" in comment  # what was done
    assert status["alert"]["AlertState"] == "Closed"
    calls = [e for e in functions.emulator.log.entries() if e.operation == "alertChangeState"]
    assert len(calls) == 1 and calls[0].api_version == "2019-05-05-preview"


def test_after_a_failure_the_alert_gets_a_comment_and_stays_open(functions: Functions) -> None:
    alert_id, request_id = _fire(functions, "cached-session")
    functions.host.drain(timeout=60)
    status = body(functions.get_status(request_id))
    assert status["outcome"] == "failed"
    alert = functions.emulator.alerts.get(alert_id)
    assert alert is not None and alert.state != "Closed"
    ((state, comment),) = alert.changes
    assert state == "Acknowledged" and request_id in comment and "left open" in comment
    assert "failed" in comment


def test_an_alert_the_api_cannot_find_is_not_acted_on(functions: Functions) -> None:
    """Read back before the VM is touched: an alert Azure Monitor has no record of ends `skipped`, unchanged."""
    target = functions.emulator.fleet.by_scenario("expired-certificate")[0].resource_id
    alert_id = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/{uuid.uuid4()}"
    answer = functions.post("alerts", metric_alert(target, alert_id=alert_id), forged=True)
    request_id = body(answer)["requestIds"][0]
    functions.host.drain(timeout=60)
    status = body(functions.get_status(request_id))
    assert status["outcome"] == "skipped" and "Azure Monitor has no alert" in status["outcomeReason"]
    assert not [e for e in functions.emulator.log.entries() if e.operation in ("runCommand", "restart")]
    assert [e.operation for e in functions.emulator.log.entries() if "alert" in e.operation.lower()] == ["getAlert"]


def _fire_many(functions: Functions, scenarios: list[str]) -> tuple[str, list[str]]:
    """One alert naming several VMs (`alertTargetIDs`), as a metric alert on a resource group's VMs does."""
    targets = [functions.emulator.fleet.by_scenario(s)[0].resource_id for s in scenarios]
    alert_id = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/{uuid.uuid4()}"
    # An alert over several resources names their scope as its target (the VMs are in alertTargetIDs).
    functions.emulator.alerts.fire(alert_id, VmId.parse(targets[0]).resource_group_id)
    payload = metric_alert(targets[0], alert_id=alert_id)
    payload["data"]["essentials"]["alertTargetIDs"] = [t.lower() for t in targets]
    answer = functions.post("alerts", payload)
    assert answer.status_code == 202
    ids = body(answer)["requestIds"]
    assert len(ids) == len(scenarios)
    return alert_id, ids


def test_an_alert_naming_several_vms_is_closed_only_when_every_one_is_fixed(functions: Functions) -> None:
    alert_id, ids = _fire_many(functions, ["expired-certificate", "firewall-closed"])
    functions.host.drain(timeout=120)
    assert [body(functions.get_status(i))["outcome"] for i in ids] == ["remediated", "remediated"]
    alert = functions.emulator.alerts.get(alert_id)
    assert alert is not None and alert.state == "Closed"
    closing = [comment for state, comment in alert.changes if state == "Closed"]
    assert closing and all(ids[0] in c and ids[1] in c for c in closing)  # the closing comment names both
    assert "Every VM this alert named is fixed and verified" in closing[-1]
    # Whichever finished first while the other was still open left the alert open, saying which is not done.
    early = [comment for state, comment in alert.changes if state != "Closed"]
    assert all("1 of 2 VMs this alert named are fixed and verified" in c and "not yet" in c for c in early)


def test_an_alert_naming_several_vms_stays_open_while_one_of_them_failed(functions: Functions) -> None:
    alert_id, ids = _fire_many(functions, ["expired-certificate", "cached-session"])
    functions.host.drain(timeout=120)
    outcomes = [body(functions.get_status(i))["outcome"] for i in ids]
    assert outcomes == ["remediated", "failed"]
    alert = functions.emulator.alerts.get(alert_id)
    assert alert is not None and alert.state == "Acknowledged"
    assert all(state != "Closed" for state, _ in alert.changes)  # never closed, not even for a moment
    fixed_vm = functions.emulator.fleet.by_scenario("expired-certificate")[0].name
    failed_vm = functions.emulator.fleet.by_scenario("cached-session")[0].name
    last = alert.changes[-1][1]
    assert "1 of 2 VMs this alert named are fixed and verified" in last
    assert fixed_vm in last and failed_vm in last  # which VM is done and which is not
    for request_id in ids:
        assert body(functions.get_status(request_id))["alert"]["AlertState"] == "Acknowledged"
