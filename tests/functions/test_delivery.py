"""Delivery guarantees: an alert storm, the poison path, and host.json agreeing with the settings."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

from remediate.intake.app import reset_app
from remediate.model import VmId
from remediate.settings import Settings
from sim.fleet import Fleet, make_vm
from tests.fixtures.emulator import EmulatorFactory
from tests.functions.conftest import Functions, body
from tests.functions.test_function_app import alert_id_for, metric_alert

ROOT = Path(__file__).resolve().parents[2]


def test_host_json_poisons_after_the_deliveries_the_worker_expects() -> None:
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    assert host["extensions"]["queues"]["maxDequeueCount"] == Settings.from_env({}).max_dequeue_count


def test_an_alert_storm_for_ten_vms_remediates_each_once(
    functions: Functions, emulator_factory: EmulatorFactory
) -> None:
    fleet = Fleet([make_vm("expired-certificate", i, name=f"vm{i:02d}") for i in range(10)])
    storm_emulator = emulator_factory(fleet)
    functions.emulator = storm_emulator
    env = {**_env(functions.app.settings), **storm_emulator.settings_env()}
    functions.app = reset_app(Settings.from_env(env))
    alerts = [metric_alert(vm.resource_id, alert_id=alert_id_for(vm.resource_id, vm.name)) for vm in fleet]
    rng = random.Random(42)
    deliveries: list[dict[str, Any]] = []
    for _ in range(1000):
        alert = rng.choice(alerts)
        if rng.random() < 0.2:  # the same alert resolving, delivered in between
            alert = metric_alert(
                alert["data"]["essentials"]["alertTargetIDs"][0], "Resolved", alert["data"]["essentials"]["alertId"]
            )
        deliveries.append(alert)
    accepted = sum(len(body(functions.post("alerts", d)).get("requestIds", [])) for d in deliveries)
    assert accepted == 10 and functions.queued() == 10
    functions.host.drain(timeout=120)
    outcomes = [functions.app.ledger.history(VmId.parse(vm.resource_id)) for vm in fleet]
    assert [len(records) for records in outcomes] == [1] * 10
    assert {records[0].outcome for records in outcomes} == {"remediated"}
    assert sum(1 for e in storm_emulator.log.entries() if e.operation == "restart") == 10


def test_a_request_that_keeps_failing_ends_recorded_as_failed_on_its_last_delivery(functions: Functions) -> None:
    # The first delivery re-raises (the host redelivers); the last one records the failure and consumes it.
    settings = dataclasses.replace(
        functions.app.settings, retry_total=1, retry_backoff_seconds=0.0, max_dequeue_count=2
    )
    functions.app = reset_app(settings)
    functions.host._max_dequeue = 2
    target = functions.emulator.fleet.by_scenario("expired-certificate")[0].resource_id
    functions.emulator.faults.add("getVm", "503", count=1000)
    response = functions.post("remediations", {"vms": [target]})
    request_id = body(response)["requestIds"][0]
    stats = functions.host.drain(timeout=60)
    assert stats.invocations == 2 and stats.failed_deliveries == 1 and stats.poisoned == []
    status = body(functions.get_status(request_id))
    assert status["outcome"] == "failed" and "503" in status["outcomeReason"]
    assert "gave up" in status["outcomeReason"] and functions.queued() == 0


def _env(settings: Settings) -> dict[str, str]:
    return {
        "RDPR_STORAGE_CONNECTION": settings.storage_connection,
        "RDPR_TABLE_PREFIX": settings.table_prefix,
        "RDPR_QUEUE_NAME": settings.queue_name,
        "RDPR_BOOT_TIMEOUT_SECONDS": "4",
        "RDPR_PROBE_TIMEOUT_SECONDS": "1",
        "RDPR_RETRY_AFTER_CAP_SECONDS": "0.2",
        "RDPR_REBOOT_POLICY": settings.reboot_policy,  # as the shared fixture sets it: a change is rebooted
    }


def test_a_poisoned_message_without_an_outcome_is_closed_and_its_lock_freed(functions: Functions) -> None:
    from azure.functions.queue import QueueMessage

    from remediate.model import RemediationRequest, Trigger

    vm = VmId.parse(functions.emulator.fleet.by_scenario("expired-certificate")[0].resource_id)
    request = RemediationRequest(vm, Trigger.ALERT, "alert")
    functions.app.ledger.record_accepted(request)
    assert functions.app.ledger.acquire(vm, request.request_id, minutes=45)[0]  # its worker died holding it
    message = QueueMessage(id="m1", body=json.dumps(request.to_message()).encode(), dequeue_count=1)  # type: ignore[no-untyped-call]
    functions.module.poison(message)
    record = functions.app.ledger.get(request.request_id)
    assert record is not None and record.outcome == "failed" and "poison queue" in record.outcome_reason
    assert functions.app.ledger.vm_state(vm).owner is None
    functions.module.poison(message)  # a second look changes nothing
    assert functions.app.ledger.get(request.request_id).outcome_reason == record.outcome_reason  # type: ignore[union-attr]
