"""Intake coalesces per VM and costs Azure nothing: through the real alert handler, Azurite, queue and worker.

A flood of distinct alerts for a few VMs must become one pending request per VM (the rest answered as its
duplicates), intake must never write on the row that holds the VM's lock (so concurrent deliveries for one VM
never fail each other into a 503), and a VM in cooldown is refused before any ARM read, at intake and in the
worker alike.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from remediate.ledger import intake_partition, vm_row_key
from remediate.model import RemediationRequest, TransientError, Trigger, VmId
from tests.functions.conftest import Functions, body
from tests.functions.test_function_app import metric_alert
from tests.functions.test_trust_sweep import _sweeping
from tests.intake.support import payload


def _vm(functions: Functions, scenario: str) -> str:
    return functions.emulator.fleet.by_scenario(scenario)[0].resource_id


def _alert(target: str) -> dict[str, Any]:
    return metric_alert(target)


def _arm_calls(functions: Functions) -> list[str]:
    return [entry.operation for entry in functions.emulator.log.entries()]


def test_a_flood_of_distinct_alerts_for_two_vms_becomes_two_requests(functions: Functions) -> None:
    targets = [_vm(functions, "expired-certificate"), _vm(functions, "healthy")]
    answers = [functions.post("alerts", _alert(targets[i % 2])) for i in range(60)]

    statuses = [a.status_code for a in answers]
    assert statuses.count(202) == 2 and statuses.count(200) == 58, statuses
    accepted = {body(a)["vms"][0]: body(a)["requestIds"][0] for a in answers if a.status_code == 202}
    for answer in answers:
        if answer.status_code == 200:
            document = body(answer)
            assert document["duplicates"] and "already pending" in document["reason"], document
            (pending,) = document["pending"]
            assert pending["pendingRequestId"] == accepted[pending["vm"]]
    assert functions.queued() == 2
    assert _arm_calls(functions) == []  # intake itself never calls Azure

    functions.host.drain(timeout=60)
    reads = [op for op in _arm_calls(functions) if op == "getVm"]
    # The two workflows' own reads (preflight, and the instance view polled while a VM reboots), not one per alert.
    assert len(reads) < len(statuses), reads


def test_concurrent_deliveries_for_one_vm_never_fail_each_other(functions: Functions) -> None:
    target = _vm(functions, "expired-certificate")
    start = threading.Barrier(16)
    statuses: list[int] = []
    lock = threading.Lock()

    def deliver() -> None:
        start.wait()
        for _ in range(4):
            response = functions.post("alerts", _alert(target))
            with lock:
                statuses.append(response.status_code)

    threads = [threading.Thread(target=deliver) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(set(statuses)) == [200, 202] and statuses.count(202) == 1, statuses
    assert functions.queued() == 1


def test_intake_never_writes_the_lock_row(functions: Functions) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    target = _vm(functions, "expired-certificate")
    assert functions.post("alerts", _alert(target)).status_code == 202
    with pytest.raises(ResourceNotFoundError):
        functions.app.ledger.vms.get_entity("vm", vm_row_key(VmId.parse(target)))
    # ...but the VM's history still lists the request (kept on the intake row).
    assert len(functions.app.ledger.history(VmId.parse(target))) == 1


def test_a_finished_request_no_longer_absorbs_new_alerts(functions: Functions) -> None:
    target = _vm(functions, "healthy")  # healthy: nothing changed, so no cooldown follows
    first = functions.post("alerts", _alert(target))
    functions.host.drain(timeout=60)
    assert body(functions.get_status(body(first)["requestIds"][0]))["outcome"] == "healthy"

    second = functions.post("alerts", _alert(target))
    assert second.status_code == 202, second.get_body()


def test_a_vm_in_cooldown_is_refused_before_any_arm_read(functions: Functions) -> None:
    target = _vm(functions, "expired-certificate")
    first = functions.post("alerts", _alert(target))
    functions.host.drain(timeout=60)
    assert body(functions.get_status(body(first)["requestIds"][0]))["outcome"] == "remediated"
    functions.emulator.log.clear()

    at_intake = functions.post("alerts", _alert(target))  # intake reads the ledger, not Azure
    assert at_intake.status_code == 200 and functions.queued() == 0
    assert "cooldown" in body(at_intake)["ignored"][0]["reason"]
    runbook = functions.post("remediations", {"vms": [target]})  # an operator's request reaches the worker
    assert runbook.status_code == 202
    functions.host.drain(timeout=60)

    status = body(functions.get_status(body(runbook)["requestIds"][0]))
    assert status["outcome"] == "skipped" and "cooldown" in status["outcomeReason"]
    assert _arm_calls(functions) == []


def test_a_ledger_failure_after_the_claim_gives_the_key_back(
    functions: Functions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger answers 503 to the pending-slot write: the delivery gets a 503, and the action group's retry
    of the same alert is queued and repaired (not answered "already accepted" with nothing behind it)."""
    target = _vm(functions, "expired-certificate")
    alert = _alert(target)
    ledger = functions.app.queue.ledger
    real_admit = ledger.admit
    failures = [TransientError("ledger busy (503) while trying to read a pending request")]

    def admit_once_failing(*args: Any, **kwargs: Any) -> str | None:
        if failures:
            raise failures.pop()
        return real_admit(*args, **kwargs)

    monkeypatch.setattr(ledger, "admit", admit_once_failing)
    first = functions.post("alerts", alert)
    assert first.status_code == 503 and functions.queued() == 0, first.get_body()

    retry = functions.post("alerts", alert)
    assert retry.status_code == 202, retry.get_body()
    assert functions.queued() == 1
    functions.host.drain(timeout=60)
    assert body(functions.get_status(body(retry)["requestIds"][0]))["outcome"] == "remediated"


def test_a_sweep_whose_ledger_fails_after_the_claim_can_queue_the_vm_again(
    functions: Functions, product_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sweeping(functions, product_settings, sweep_max_vms=3, sweep_max_percent=100.0)
    ledger = functions.app.queue.ledger
    real_admit = ledger.admit

    refused: list[VmId] = []

    def admit_failing_first(request: RemediationRequest, *args: Any, **kwargs: Any) -> str | None:
        if not refused:
            refused.append(request.vm)
            raise TransientError("ledger busy (503) while trying to read a pending request")
        return real_admit(request, *args, **kwargs)

    monkeypatch.setattr(ledger, "admit", admit_failing_first)
    with pytest.raises(TransientError):
        functions.sweep()  # the timer's run fails, visibly; nothing is queued
    assert functions.queued() == 0
    functions.sweep()  # the same hour: the VM whose admission failed is not "already enqueued this hour"
    assert functions.queued() == 3
    assert [r.trigger for r in ledger.history(refused[0])] == [Trigger.SWEEP]


def test_intake_rows_are_spread_over_partitions(functions: Functions) -> None:
    targets = [vm.resource_id for vm in functions.emulator.fleet][:8]
    for target in targets:
        functions.post("alerts", _alert(target))
    rows = list(
        functions.app.ledger.vms.query_entities("Vm ne @none", parameters={"none": ""}, select=["PartitionKey", "Vm"])
    )
    partitions = {row["PartitionKey"] for row in rows if row["PartitionKey"].startswith("intake")}
    assert len(partitions) > 1 and "intake" not in partitions, partitions
    for target in targets:
        vm = VmId.parse(target)
        assert functions.app.ledger.vms.get_entity(intake_partition(vm), vm_row_key(vm))["Vm"] == str(vm)


def test_an_alert_naming_thousands_of_computers_costs_one_resource_graph_query(functions: Functions) -> None:
    doc = payload("log-v2-workspace-computer.json")
    shared = functions.emulator.fleet.by_scenario("expired-certificate")[0]
    names = [shared.guest.computer_name] + [f"c{i:04d}" for i in range(6000)]  # under the 256 KB body limit
    doc["data"]["alertContext"]["condition"]["allOf"] = [
        {"dimensions": [{"name": "Computer", "value": n} for n in names]}
    ]

    answer = functions.post("alerts", doc)

    assert answer.status_code in (200, 202), answer.get_body()[:300]
    graph = [e for e in functions.emulator.log.entries() if e.operation == "resourceGraph"]
    assert len(graph) == 1  # one query's worth of names, not seventy
    unresolved = body(answer)["unresolved"]
    capped = [u for u in unresolved if "more than 100 computers" in u["reason"]]
    assert len(capped) == 1 and "and 5900 more" in capped[0]["computer"], capped
    assert body(answer)["vms"] == [shared.resource_id]  # the first name was still resolved and acted on
