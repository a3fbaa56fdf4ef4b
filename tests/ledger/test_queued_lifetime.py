"""A queued request and its queue message end together: the message lives a bounded time, the reconciler closes a
queued request only once no copy of its message can arrive, and a delivery that still comes is recorded."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from remediate.azure.clients import AzureClients
from remediate.intake.queue import RequestQueue, message_ttl_seconds, queue_client, queued_stale_seconds
from remediate.intake.reconcile import reconcile
from remediate.intake.worker import handle_message
from remediate.ledger import DONE, QUEUED, Ledger, table_service, utcnow
from remediate.model import RemediationRequest, Trigger, VmId
from remediate.settings import Settings
from sim.server import Emulator

VM = VmId.parse(
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"
)
HOURS_AGO = 4.0  # longer than the reconciler's threshold with the defaults (225 minutes)


def ledger_at(settings: Settings, moment: dt.datetime) -> Ledger:
    """The ledger as a worker whose clock reads `moment` (the request row's acceptance time)."""
    ledger = Ledger(table_service(settings), settings.table_prefix, clock=lambda: moment)
    ledger.create_tables()
    return ledger


def request_queue(settings: Settings, ledger: Ledger) -> RequestQueue:
    queue = RequestQueue(queue_client(settings, settings.queue_name), ledger, message_ttl=message_ttl_seconds(settings))
    queue.create()
    return queue


def reconcile_now(settings: Settings, ledger: Ledger, queue: RequestQueue, now: dt.datetime | None = None) -> list[str]:
    report = reconcile(
        ledger,
        queue,
        running_stale_seconds=settings.lock_minutes * 60.0,
        queued_stale_seconds=queued_stale_seconds(settings),
        now=now,
    )
    return report.closed


def test_a_message_expires_a_lock_lifetime_before_the_reconciler_may_close_its_request(
    storage_env: dict[str, str], ledger: Ledger
) -> None:
    settings = Settings.from_env(storage_env)
    queue = request_queue(settings, ledger)
    queue.enqueue(RemediationRequest(VM, Trigger.RUNBOOK, "test"))

    [message] = queue.queue.peek_messages()

    assert message.expires_on is not None and message.inserted_on is not None
    lives = (message.expires_on - message.inserted_on).total_seconds()
    assert lives == message_ttl_seconds(settings) == 3 * 3600  # not Azure's default of seven days
    assert queued_stale_seconds(settings) - lives == settings.lock_minutes * 60


def test_a_queued_request_stays_open_while_a_later_copy_of_its_message_can_arrive(
    storage_env: dict[str, str], ledger: Ledger
) -> None:
    settings = Settings.from_env(storage_env)
    long_ago = utcnow() - dt.timedelta(hours=HOURS_AGO)
    old = ledger_at(settings, long_ago)
    queue = request_queue(settings, ledger)
    forgotten = RemediationRequest(VM, Trigger.RUNBOOK, "its message expired long ago")
    old.record_accepted(forgotten)
    resent = RemediationRequest(VM, Trigger.ALERT, "its message went out again now", dedup_key="alert:a:vm1")
    assert ledger.claim("alert:a:vm1")
    old.prepare_claim("alert:a:vm1", resent.request_id, json.dumps(resent.to_message()))
    old.record_accepted(resent)
    queue.complete_outbox(ledger.unfinished_claim("alert:a:vm1"))  # type: ignore[arg-type]

    closed = reconcile_now(settings, ledger, queue)

    assert closed == [forgotten.request_id]
    record = ledger.get(forgotten.request_id)
    assert record is not None and record.state == DONE
    assert "none can come any more" in record.outcome_reason
    kept = ledger.get(resent.request_id)
    assert kept is not None and kept.state == QUEUED  # its copy lives three more hours
    # Once that copy has expired and a delivery that took it at the last moment has had a lock's lifetime:
    later = utcnow() + dt.timedelta(seconds=message_ttl_seconds(settings) + settings.lock_minutes * 60 + 60)
    assert reconcile_now(settings, ledger, queue, now=later) == [resent.request_id]


@pytest.mark.emulator
def test_a_delivery_after_the_reconciler_closed_its_request_is_recorded_and_runs_nothing(
    product_settings: Settings, product_ledger: Ledger, product_clients: AzureClients, emulator: Emulator
) -> None:
    vm = emulator.fleet.by_scenario("expired-certificate")[0]
    request = RemediationRequest(VmId.parse(vm.resource_id), Trigger.RUNBOOK, "late")
    ledger_at(product_settings, utcnow() - dt.timedelta(hours=HOURS_AGO)).record_accepted(request)
    queue = request_queue(product_settings, product_ledger)
    assert reconcile_now(product_settings, product_ledger, queue) == [request.request_id]
    verdict = product_ledger.get(request.request_id)
    assert verdict is not None

    result = handle_message(json.dumps(request.to_message()), 2, product_settings, product_ledger, product_clients)

    assert result is None
    fields = product_ledger.request_fields(request.request_id, "LateDeliveries", "LateDeliveryNote", "ClosedBy")
    assert fields["ClosedBy"] == "reconciler"
    assert fields["LateDeliveries"] == 1
    assert "after the reconciler had closed the request; nothing was run" in fields["LateDeliveryNote"]
    after = product_ledger.get(request.request_id)
    assert after is not None and (after.outcome, after.outcome_reason) == (verdict.outcome, verdict.outcome_reason)
    assert emulator.log.entries() == []  # no Azure call at all: the VM was not touched


def test_a_delivery_arriving_while_the_reconciler_closes_finds_the_request_held(
    storage_env: dict[str, str], ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconciler closes under the request's execution lease: a delivery that comes in the middle cannot
    start running a request that is being recorded as never run."""
    settings = Settings.from_env(storage_env)
    queue = request_queue(settings, ledger)
    request = RemediationRequest(VM, Trigger.RUNBOOK, "its message expired long ago")
    ledger_at(settings, utcnow() - dt.timedelta(hours=HOURS_AGO)).record_accepted(request)
    seen: list[bool] = []

    from remediate.engine.closing import close_abandoned as closing

    def delivery_in_the_middle(*args: object, **kwargs: object) -> bool:
        taken, holder = ledger.take_lease(request.request_id, "a-delivery", 60)
        seen.append(taken)
        assert holder == "reconciler"
        return closing(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("remediate.intake.reconcile.close_abandoned", delivery_in_the_middle)
    assert reconcile_now(settings, ledger, queue) == [request.request_id]
    assert seen == [False]  # the delivery found the request held
    assert ledger.lease_expires(request.request_id) is None or ledger.take_lease(request.request_id, "later", 60)[0]


def test_a_held_request_whose_message_expired_unseen_is_closed_and_one_still_coming_is_not(
    storage_env: dict[str, str], ledger: Ledger
) -> None:
    settings = Settings.from_env(storage_env)
    queue = request_queue(settings, ledger)
    gone, coming = (RemediationRequest(VM, Trigger.ALERT, name) for name in ("message gone", "message coming"))
    for request, expires in ((gone, utcnow() - dt.timedelta(hours=2)), (coming, utcnow() + dt.timedelta(hours=2))):
        ledger.record_accepted(request)
        ledger.mark_waiting(request.request_id, "held", "storm guard", MessageExpires=expires)

    assert reconcile_now(settings, ledger, queue) == [gone.request_id]
    closed = ledger.get(gone.request_id)
    assert closed is not None and closed.state == DONE and "expired" in closed.outcome_reason
    still = ledger.get(coming.request_id)
    assert still is not None and still.state == "held"


def test_a_started_request_whose_worker_died_is_resumed_once_from_the_poison_queue(
    storage_env: dict[str, str], ledger: Ledger
) -> None:
    """Every copy of its message was used up meeting an execution that then died: the poison handler waits while
    a lease lives, then sends the started request back once; a second time it closes it from its journal."""
    import time

    from remediate.intake.worker import handle_poison
    from remediate.ledger import ExecutionConflict
    from remediate.model import StepResult

    request = RemediationRequest(VM, Trigger.RUNBOOK, "its worker died")
    ledger.record_accepted(request)
    now = time.time()
    ledger.record_step(request.request_id, 0, StepResult("preflight", "ok", now, now, "ok"))
    body = json.dumps(request.to_message())
    sent: list[str] = []
    assert ledger.take_lease(request.request_id, "a-worker", 60)[0]
    with pytest.raises(ExecutionConflict):  # it still runs somewhere: asked again later
        handle_poison(body, ledger, 1, 5, None, sent.append)
    ledger.drop_lease(request.request_id, "a-worker")  # that worker died; its lease is gone
    handle_poison(body, ledger, 2, 5, None, sent.append)
    still = ledger.get(request.request_id)
    assert sent == [body] and still is not None and still.state != DONE
    handle_poison(body, ledger, 3, 5, None, sent.append)  # resumed once already: now it is closed
    closed = ledger.get(request.request_id)
    assert sent == [body] and closed is not None and closed.state == DONE
