"""The sweep's blast radius is a rolling window across sweeps, and the ledger's tables do not grow for ever.

Through the real timer handler, Azurite and the emulator.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from remediate.intake.app import reset_app
from remediate.ledger import ALERT_LIFETIME, Ledger
from remediate.model import Outcome, RemediationOptions, RemediationRequest, Trigger, VmId
from tests.functions.conftest import Functions


def _sweeping(functions: Functions, product_settings: Any, **changes: Any) -> None:
    settings = dataclasses.replace(product_settings, sweep_mode="remediate", **changes)
    functions.app = reset_app(settings)


def test_two_sweeps_within_the_window_share_one_blast_radius(functions: Functions, product_settings: Any) -> None:
    _sweeping(functions, product_settings, sweep_max_vms=3, sweep_max_percent=100.0)
    functions.sweep()
    assert functions.queued() == 3
    functions.sweep()  # a second sweep in the same hour (a manual run, a restarted host)
    assert functions.queued() == 3


def test_what_fell_out_of_the_window_no_longer_counts(functions: Functions, product_settings: Any) -> None:
    _sweeping(functions, product_settings, sweep_max_vms=3, sweep_max_percent=100.0, sweep_window_hours=1)
    old = Ledger(functions.app.ledger._service, product_settings.table_prefix, lambda: _ago(hours=2))
    vm = VmId.parse(functions.emulator.fleet.by_scenario("healthy")[0].resource_id)
    for _ in range(3):  # three sweep requests two hours ago, outside a one-hour window
        old.record_accepted(RemediationRequest(vm, Trigger.SWEEP, "earlier sweep", RemediationOptions()))
    functions.sweep()
    assert functions.queued() == 3


def _ago(**delta: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(**delta)


def test_each_sweep_prunes_old_audit_records_and_dedup_keys(functions: Functions, product_settings: Any) -> None:
    vm = VmId.parse(functions.emulator.fleet.by_scenario("healthy")[0].resource_id)
    service, prefix = functions.app.ledger._service, product_settings.table_prefix
    ancient = Ledger(service, prefix, lambda: _ago(days=product_settings.audit_retention_days + 1))
    stale_key = Ledger(service, prefix, lambda: _ago(days=ALERT_LIFETIME.days + 1))
    old_requests = [RemediationRequest(vm, Trigger.CLI, "old", RemediationOptions()) for _ in range(3)]
    for request in old_requests:
        ancient.record_accepted(request)
        ancient.record_outcome(request.request_id, Outcome.HEALTHY, "done long ago")
    assert stale_key.claim("alert:old:x")
    recent = RemediationRequest(vm, Trigger.CLI, "recent", RemediationOptions())
    functions.app.ledger.record_accepted(recent)
    assert functions.app.ledger.claim("alert:new:x")

    functions.sweep()  # report mode: the sweep itself changes nothing; retention runs after it

    ledger = functions.app.ledger
    assert all(ledger.get(r.request_id) is None for r in old_requests)
    assert list(ledger.audit.query_entities("PartitionKey eq @pk", parameters={"pk": old_requests[0].request_id})) == []
    assert ledger.get(recent.request_id) is not None
    assert ledger.claim("alert:old:x") is True  # pruned, so claimable again
    assert ledger.claim("alert:new:x") is False  # kept
    assert [r.request_id for r in ledger.history(vm)] == [recent.request_id]


def test_the_sweep_does_not_queue_a_vm_whose_alert_request_is_pending(
    functions: Functions, product_settings: Any
) -> None:
    from tests.functions.test_function_app import metric_alert

    target = functions.emulator.fleet.by_scenario("expired-certificate")[0].resource_id
    assert functions.post("alerts", metric_alert(target)).status_code == 202
    _sweeping(functions, product_settings, sweep_max_vms=50, sweep_max_percent=100.0)
    from remediate.intake.sweep import run_sweep

    app = functions.app
    report = run_sweep(app.settings, app.clients, app.queue, app.ledger)
    held = {item["vm"]: item["reason"] for item in report.held_back}
    assert "already pending" in held[target]
    assert len(report.enqueued) >= 1  # the other broken VMs are queued as before
