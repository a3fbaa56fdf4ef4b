"""Closing the loop: the Azure Monitor alert that started a request is closed after a verified fix, and left open
with a comment otherwise, through the Alerts Management API the emulator serves."""

from __future__ import annotations

import uuid

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


def test_an_alert_the_api_cannot_find_leaves_the_outcome_alone(functions: Functions) -> None:
    target = functions.emulator.fleet.by_scenario("expired-certificate")[0].resource_id
    alert_id = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/{uuid.uuid4()}"
    request_id = body(functions.post("alerts", metric_alert(target, alert_id=alert_id)))["requestIds"][0]
    functions.host.drain(timeout=60)
    status = body(functions.get_status(request_id))
    assert status["outcome"] == "remediated"
    assert status["alert"]["AlertState"] == "not updated" and "404" in status["alert"]["AlertNote"]
