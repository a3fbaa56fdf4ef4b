"""The fleet-wide slots belong to one delivery: a second delivery of the same request never frees (or renews) the
slot the first one runs under, so the bound holds even when the queue delivers a message twice."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import time

from azure.functions.queue import QueueMessage as TriggerMessage

from remediate.engine.slots import Slots
from remediate.ledger import RUNNING, WAITING
from remediate.model import RemediationRequest, Trigger, VmId
from tests.fixtures.emulator import EmulatorFactory
from tests.functions.conftest import Functions, body
from tests.functions.test_fleet_controls import Sampler, _controlled, _host
from tests.functions.test_function_app import alert_id_for, metric_alert


def _message(functions: Functions) -> bytes:
    """Take the one queued message out of the queue's hands, as a worker would get it."""
    received = functions.app.queue.queue.receive_message(visibility_timeout=600)
    assert received is not None
    content = received.content
    return content if isinstance(content, bytes) else str(content).encode()


def _deliver(functions: Functions, message: bytes, dequeue_count: int = 1) -> None:
    trigger = TriggerMessage(id="m", body=message, dequeue_count=dequeue_count)  # type: ignore[no-untyped-call]
    with contextlib.suppress(Exception):  # a duplicate may be asked back (raises): the host would redeliver it
        functions.module.worker(trigger)


def _wait_for_state(functions: Functions, request_id: str, state: str, timeout: float = 30) -> None:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        record = functions.app.ledger.get(request_id)
        if record is not None and record.state == state:
            return
        time.sleep(0.02)
    raise AssertionError(f"request {request_id} never reached {state}")


def test_a_duplicate_delivery_never_frees_the_slot_the_first_delivery_runs_under(
    functions: Functions, emulator_factory: EmulatorFactory
) -> None:
    # One slot, two VMs, slow enough (boot and waits at 5 % of real time) that the first run is still going
    # while the duplicate comes and goes.
    first_vm, other_vm = list(
        _controlled(
            functions,
            emulator_factory,
            2,
            0.05,
            RDPR_MAX_ACTIVE="1",
            RDPR_STORM_MAX_PER_HOUR="1000",
            RDPR_BOOT_TIMEOUT_SECONDS="120",
        )
    )
    request_id = body(
        functions.post("alerts", metric_alert(first_vm.resource_id, alert_id=alert_id_for(first_vm.resource_id, "a1")))
    )["requestIds"][0]
    message = _message(functions)
    first = threading.Thread(target=_deliver, args=(functions, message))
    with Sampler(functions.app) as sampler:
        first.start()
        _wait_for_state(functions, request_id, RUNNING)
        _deliver(functions, message, dequeue_count=2)  # the same message again (at-least-once delivery)
        held = functions.app.slots.active()
        still_running = functions.app.ledger.get(request_id)
        assert still_running is not None and still_running.state == RUNNING, "the first run must still be going"
        assert [slot.owner for slot in held] == [request_id], "the first delivery's slot must stay held"
        # Another VM's request now finds the bound full: it waits instead of running beside the first.
        other = body(
            functions.post(
                "alerts", metric_alert(other_vm.resource_id, alert_id=alert_id_for(other_vm.resource_id, "a2"))
            )
        )["requestIds"][0]
        _deliver(functions, _message(functions))
        waiting = functions.app.ledger.get(other)
        assert waiting is not None and waiting.state == "queued" and "waiting for a slot" in waiting.outcome_reason
        first.join(timeout=120)
    assert max(sampler.leased) <= 1 and max(sampler.running) <= 1
    assert len(sampler.leased) > 5, "the sampler must have seen the run"
    _host(functions, 4).drain(timeout=120, idle_seconds=2)  # the put-back messages: the other VM, the duplicate
    outcomes = [body(functions.get_status(i))["outcome"] for i in (request_id, other)]
    assert outcomes == ["remediated", "remediated"]
    restarts = [e for e in functions.emulator.log.entries() if e.operation == "restart"]
    assert len(restarts) == 2  # each VM once: the duplicate ran nothing
    assert functions.app.slots.active() == []


def test_only_the_holder_frees_or_renews_its_slot(functions: Functions, emulator_factory: EmulatorFactory) -> None:
    """Against Azurite: the same request acquiring twice is two holders; each release and renewal names its own."""
    fleet = _controlled(functions, emulator_factory, 1, RDPR_MAX_ACTIVE="2", RDPR_STORM_MAX_PER_HOUR="1000")
    vm = VmId.parse(next(iter(fleet)).resource_id)
    slots: Slots = functions.app.slots
    first = slots.try_acquire(vm, "req1")
    second = slots.try_acquire(vm, "req1")  # a duplicate delivery of the same request
    assert first is not None and second is not None and first.rows != second.rows
    assert slots.try_acquire(vm, "req1") is None  # the bound (2) is full, whoever asks
    slots.release(second)
    assert [s.row for s in slots.active()] == [first.rows[0][1]]  # the first holder's slot is untouched
    assert slots.renew(first) and not slots.renew(second)  # only the holder renews
    slots.release(second)  # a second release by the loser frees nothing
    assert len(slots.active()) == 1
    slots.release(first)
    assert slots.active() == []


def test_a_repaired_vm_back_from_its_window_stays_reserved_while_it_waits_for_a_slot(
    functions: Functions, emulator_factory: EmulatorFactory
) -> None:
    """Its window opened, every slot is busy: each slot retry keeps the VM's lock, so no other request starts on a
    VM whose reboot is still to come."""
    fleet = _controlled(functions, emulator_factory, 2, RDPR_MAX_ACTIVE="1", RDPR_STORM_MAX_PER_HOUR="1000")
    waiting_vm, other_vm = (VmId.parse(vm.resource_id) for vm in fleet)
    app = functions.app
    request = RemediationRequest(waiting_vm, Trigger.RUNBOOK, "repaired, back from its change window")
    app.queue.enqueue(request)
    app.ledger.mark_waiting(request.request_id, WAITING, "waiting for its change window")
    assert app.ledger.acquire(waiting_vm, request.request_id, 1)[0]  # the reservation, about to lapse
    busy = app.slots.try_acquire(other_vm, "another-request")  # the only slot
    assert busy is not None
    app.gate.deliver(json.dumps(request.to_message()), 1)
    state = app.ledger.vm_state(waiting_vm)
    lock_minutes = app.settings.lock_minutes
    assert state.owner == request.request_id and state.lock_expires is not None
    assert state.lock_expires - dt.datetime.now(dt.UTC) > dt.timedelta(minutes=lock_minutes - 1)
    app.slots.release(busy)
