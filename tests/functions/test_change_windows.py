"""Change windows through the real handlers: a reboot outside its window waits (the message comes back later),
then runs; a repair that needs no reboot runs outside it; a malformed tag is a clear reason."""

from __future__ import annotations

import dataclasses
import datetime as dt

from remediate.intake.app import reset_app
from remediate.model import VmId
from tests.functions.conftest import Functions, body
from tests.functions.test_function_app import metric_alert

TAG = "rdp-remediate-window"


def _closed_now() -> str:
    """A one-hour window on a day that is not today (UTC): closed now, opens within a week."""
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).strftime("%a")
    return f"{tomorrow} 03:00-04:00 UTC"


def _restarts(functions: Functions, vm: str) -> int:
    return sum(
        1
        for e in functions.emulator.log.entries()
        if e.operation == "restart" and e.path.lower().startswith(vm.lower())
    )


def _repairs(functions: Functions) -> int:
    return sum(1 for e in functions.emulator.log.entries() if e.operation == "runCommand")


def test_a_reboot_outside_its_window_waits_and_then_runs(functions: Functions) -> None:
    vm = functions.emulator.fleet.by_scenario("expired-certificate")[0]
    vm.tags[TAG] = _closed_now()
    request_id = body(functions.post("alerts", metric_alert(vm.resource_id)))["requestIds"][0]
    functions.host.drain(timeout=60)
    status = body(functions.get_status(request_id))
    assert status["state"] == "waiting" and status["outcome"] is None
    assert f"waiting for its change window ({vm.tags[TAG]})" in status["outcomeReason"]
    assert "the reboot waits until" in status["outcomeReason"]
    # RDPR_REBOOT_POLICY=always: every change reboots, so nothing is changed before the window either.
    assert _restarts(functions, vm.resource_id) == 0 and _repairs(functions) == 0
    assert functions.queued() == 1  # the message is still there, invisible until the window opens

    # The window opens (here: the VM's owner widens it) and the message comes back.
    vm.tags[TAG] = "daily 00:00-24:00 UTC"
    message = functions.app.ledger.request_fields(request_id, "MessageId", "PopReceipt")
    functions.app.queue.queue.update_message(
        message["MessageId"], pop_receipt=message["PopReceipt"], visibility_timeout=0
    )
    functions.host.drain(timeout=60)
    done = body(functions.get_status(request_id))
    assert done["outcome"] == "remediated" and done["rebooted"] is True
    assert _restarts(functions, vm.resource_id) == 1


def test_a_repair_that_needs_no_reboot_runs_outside_the_window(functions: Functions) -> None:
    functions.app = reset_app(dataclasses.replace(functions.app.settings, reboot_policy="when-required"))
    vm = functions.emulator.fleet.by_scenario("expired-certificate")[0]
    vm.tags[TAG] = _closed_now()
    request_id = body(functions.post("alerts", metric_alert(vm.resource_id)))["requestIds"][0]
    functions.host.drain(timeout=60)
    status = body(functions.get_status(request_id))
    assert status["outcome"] == "remediated" and status["rebooted"] is False
    assert _restarts(functions, vm.resource_id) == 0


def test_a_malformed_window_tag_is_a_clear_reason_and_nothing_changes(functions: Functions) -> None:
    vm = functions.emulator.fleet.by_scenario("expired-certificate")[0]
    vm.tags[TAG] = "weekends, early"
    request_id = body(functions.post("alerts", metric_alert(vm.resource_id)))["requestIds"][0]
    functions.host.drain(timeout=60)
    status = body(functions.get_status(request_id))
    assert status["outcome"] == "skipped"
    assert "malformed change window (tag rdp-remediate-window='weekends, early')" in status["outcomeReason"]
    assert "Sat 02:00-06:00 Europe/Berlin" in status["outcomeReason"]  # the format, shown
    assert _restarts(functions, vm.resource_id) == 0 and _repairs(functions) == 0
    assert VmId.parse(vm.resource_id)  # the VM id itself was fine


def test_a_repaired_vm_stays_reserved_through_its_window_wait(functions: Functions) -> None:
    """The repair ran, the reboot waits for the window: the VM's lock is kept for that request until the window
    opens (plus the lock time), so a second request for the VM during the wait is refused with its reason."""
    functions.app = reset_app(dataclasses.replace(functions.app.settings, reboot_policy="when-required"))
    vm = functions.emulator.fleet.by_scenario("keystore-acl")[0]  # its ACL repair needs a reboot
    vm.tags[TAG] = _closed_now()
    first = body(functions.post("alerts", metric_alert(vm.resource_id)))["requestIds"][0]
    functions.host.drain(timeout=60)
    assert body(functions.get_status(first))["state"] == "waiting"
    repairs = _repairs(functions)
    assert repairs >= 2 and _restarts(functions, vm.resource_id) == 0  # diagnose + repair, no restart yet
    ledger = functions.app.ledger
    vm_id = VmId.parse(vm.resource_id)
    state = ledger.vm_state(vm_id)
    opens = ledger.request_fields(first, "WaitingUntil")["WaitingUntil"]
    assert state.owner == first and state.lock_expires is not None and state.lock_expires > opens

    # Well past RDPR_LOCK_MINUTES later (the window is still a day or more away), another request arrives.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=functions.app.settings.lock_minutes + 10)
    ledger._clock = lambda: later
    second = body(functions.post("remediations", {"vms": [vm.resource_id]}))["requestIds"][0]
    functions.host.drain(timeout=60)
    refused = body(functions.get_status(second))
    assert refused["outcome"] == "skipped"
    assert f"locked: request {first} changed this VM and holds it until its reboot" in refused["outcomeReason"]
    assert _repairs(functions) == repairs  # the second request ran nothing on the VM
    assert ledger.vm_state(vm_id).owner == first

    # The window opens: the first request reboots and verifies, and gives the VM back.
    ledger._clock = lambda: dt.datetime.now(dt.UTC)
    vm.tags[TAG] = "daily 00:00-24:00 UTC"
    message = ledger.request_fields(first, "MessageId", "PopReceipt")
    functions.app.queue.queue.update_message(
        message["MessageId"], pop_receipt=message["PopReceipt"], visibility_timeout=0
    )
    functions.host.drain(timeout=60)
    done = body(functions.get_status(first))
    assert done["outcome"] == "remediated" and done["rebooted"] is True
    assert _restarts(functions, vm.resource_id) == 1 and ledger.vm_state(vm_id).owner is None
