"""Retries, repeats and storms: one remediation per (alert, VM), and a 503 only when a retry can help."""

from __future__ import annotations

import random
from typing import Any

from remediate.intake.service import AlertIntake
from remediate.model import PermanentError, TransientError, VmId
from tests.intake.support import FailingSink, FakeResolver, LedgerSink, encode, payload, settings, vm


def test_action_group_retry_of_the_same_alert_enqueues_once() -> None:
    sink = LedgerSink()
    intake = AlertIntake(sink, settings(), None)
    body = encode(payload("metric-vm.json"))

    first = intake.handle(body)
    second = intake.handle(body)

    assert first.status == 202
    assert second.status == 200
    assert second.body["duplicates"] == first.body["vms"]
    assert "already accepted" in second.body["reason"]
    assert len(sink.requests) == 1


def test_a_different_alert_for_the_same_vm_is_new_work() -> None:
    sink = LedgerSink()
    intake = AlertIntake(sink, settings(), None)
    intake.handle(encode(payload("metric-vm.json")))

    answer = intake.handle(encode(payload("activity-log-administrative.json")))

    assert answer.status == 202
    assert [r.vm for r in sink.requests] == [vm("vm-web-01"), vm("vm-web-01")]


def test_the_same_vm_twice_in_one_alert_is_one_request() -> None:
    doc = payload("log-v2-workspace-resourceid.json")
    criteria = doc["data"]["alertContext"]["condition"]["allOf"]
    criteria.append(dict(criteria[0], dimensions=[{"name": "_ResourceId", "value": str(vm("VM-DB-03"))}]))
    sink = LedgerSink()

    answer = AlertIntake(sink, settings(), None).handle(encode(doc))

    assert answer.status == 202
    assert len(sink.requests) == 1


def test_partial_retry_only_enqueues_the_new_vm() -> None:
    sink = LedgerSink()
    intake = AlertIntake(sink, settings(), None)
    doc = payload("metric-vm.json")
    intake.handle(encode(doc))
    doc["data"]["essentials"]["alertTargetIDs"].append(str(vm("vm-web-02")))

    answer = intake.handle(encode(doc))

    assert answer.status == 202
    assert answer.body["vms"] == [str(vm("vm-web-02"))]
    assert [VmId.parse(text) for text in answer.body["duplicates"]] == [vm("vm-web-01")]


def _storm_alerts() -> list[dict[str, Any]]:
    """Ten alert instances, one per VM, across the families, with ids spelled in varying case."""
    families = [
        "metric-vm.json",
        "log-v2-vm.json",
        "log-v2-workspace-resourceid.json",
        "activity-log-administrative.json",
        "resource-health.json",
    ]
    alerts = []
    for index in range(10):
        name = f"vm-storm-{index:02d}"
        doc = payload(families[index % len(families)])
        essentials = doc["data"]["essentials"]
        essentials["alertId"] = essentials["alertId"][:-2] + f"{index:02d}"
        target = str(vm(name))
        if "workspace" in families[index % len(families)]:
            doc["data"]["alertContext"]["condition"]["allOf"][0]["dimensions"] = [
                {"name": "_ResourceId", "value": target.lower()},
                {"name": "Computer", "value": name.upper()},
            ]
        else:
            essentials["alertTargetIDs"] = [target.lower() if index % 2 else target.upper()]
        alerts.append(doc)
    return alerts


def test_alert_storm_of_1000_deliveries_for_10_vms_makes_exactly_10_requests() -> None:
    rng = random.Random(904)
    sink = LedgerSink()
    intake = AlertIntake(sink, settings(), FakeResolver())
    alerts = _storm_alerts()
    statuses: dict[int, int] = {}
    for _ in range(1000):
        doc = rng.choice(alerts)
        condition = rng.choices(["Fired", "Resolved"], weights=[3, 1])[0]
        doc["data"]["essentials"]["monitorCondition"] = condition
        answer = intake.handle(encode(doc))
        statuses[answer.status] = statuses.get(answer.status, 0) + 1

    assert len(sink.requests) == 10
    assert {r.vm for r in sink.requests} == {vm(f"vm-storm-{i:02d}") for i in range(10)}
    assert statuses[202] == 10
    assert set(statuses) == {200, 202}


def test_queue_failure_answers_503_so_the_action_group_retries() -> None:
    sink = FailingSink(TransientError("queue throttled"))
    answer = AlertIntake(sink, settings(), None).handle(encode(payload("metric-vm.json")))

    assert answer.status == 503
    assert answer.body["error"]["code"] == "ServiceUnavailable"
    assert "request queue" in answer.body["error"]["message"]
    # Azure's own error text stays in the log, not in the answer.
    assert "throttled" not in answer.body["error"]["message"]


def test_lookup_outage_answers_503_before_anything_is_enqueued() -> None:
    sink = LedgerSink()
    resolver = FakeResolver(error=TransientError("Resource Graph 429"))
    answer = AlertIntake(sink, settings(), resolver).handle(encode(payload("log-v2-workspace-computer.json")))

    assert answer.status == 503
    assert sink.requests == []
    assert sink.claims == 0


def test_lookup_refusal_is_reported_per_name_not_as_an_outage() -> None:
    resolver = FakeResolver(error=PermanentError("not a Windows computer name: 'x'"))
    answer = AlertIntake(LedgerSink(), settings(), resolver).handle(encode(payload("log-v2-workspace-computer.json")))

    assert answer.status == 200
    assert answer.body["unresolved"][0]["reason"].startswith("the lookup failed: not a Windows computer name")
