"""Fleet-wide controls through the real handlers: the global bound on active remediations and the storm guard."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

import azure.functions as func
import pytest

from remediate.engine.slots import Slots
from remediate.intake.app import App, reset_app
from remediate.ledger import RUNNING
from remediate.model import VmId
from remediate.settings import Settings
from sim.appservice import APPROVER, client_principal
from sim.fleet import Fleet, make_vm
from sim.host import LocalQueueHost
from tests.fixtures.emulator import EmulatorFactory
from tests.functions.conftest import Functions, body
from tests.functions.test_function_app import alert_id_for, metric_alert


@pytest.fixture(autouse=True)
def platform_authentication(monkeypatch: pytest.MonkeyPatch) -> None:
    """App Service authentication is on (the platform sets WEBSITE_AUTH_ENABLED): the principal header is its."""
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")


def _controlled(
    functions: Functions, emulator_factory: EmulatorFactory, vms: int, scale: float | None = None, **env: str
) -> Fleet:
    fleet = Fleet([make_vm("expired-certificate", i, name=f"vm{i:03d}") for i in range(vms)])
    emulator = emulator_factory(fleet) if scale is None else emulator_factory(fleet, time_scale=scale)
    functions.emulator = emulator
    settings = functions.app.settings
    base = {
        "RDPR_STORAGE_CONNECTION": settings.storage_connection,
        "RDPR_TABLE_PREFIX": settings.table_prefix,
        "RDPR_QUEUE_NAME": settings.queue_name,
        "RDPR_BOOT_TIMEOUT_SECONDS": "4",
        "RDPR_PROBE_TIMEOUT_SECONDS": "1",
        "RDPR_RETRY_AFTER_CAP_SECONDS": "0.2",
        "RDPR_SLOT_RETRY_SECONDS": "1",
        # Each remediation ends in a restart, so the restarts in the request log count the remediations that ran.
        "RDPR_REBOOT_POLICY": "always",
    }
    functions.app = reset_app(Settings.from_env({**base, **emulator.settings_env(), **env}))
    return fleet


def _host(functions: Functions, batch: int) -> LocalQueueHost:
    queue = functions.app.queue
    return LocalQueueHost(
        functions.module.worker,
        queue.queue,
        queue.poison,  # type: ignore[arg-type]
        max_dequeue_count=functions.app.settings.max_dequeue_count,
        batch_size=batch,
        retry_visibility_seconds=0,
    )


def _drain_on(hosts: list[LocalQueueHost], timeout: float) -> None:
    """Several hosts on the same queue at once: the Function scaled out to as many instances."""
    errors: list[BaseException] = []

    def drain(host: LocalQueueHost) -> None:
        try:
            host.drain(timeout=timeout, idle_seconds=6)  # longer than RDPR_SLOT_RETRY_SECONDS: nothing left behind
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=drain, args=(host,)) for host in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


class Sampler:
    """Reads the ledger while the hosts work: requests `running`, and slots leased."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.running: list[int] = []
        self.leased: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        audit = self.app.ledger.audit
        while not self._stop.is_set():
            rows = audit.query_entities("RowKey eq 'request' and State eq @s", parameters={"s": RUNNING})
            self.running.append(sum(1 for _ in rows))
            self.leased.append(len(self.app.slots.active()))
            time.sleep(0.05)


def test_two_hundred_vms_alerted_at_once_never_have_more_than_the_bound_active(
    functions: Functions, emulator_factory: EmulatorFactory
) -> None:
    fleet = _controlled(
        functions,
        emulator_factory,
        200,
        0.002,
        RDPR_SLOT_RETRY_SECONDS="5",
        RDPR_MAX_ACTIVE="10",
        RDPR_STORM_MAX_PER_HOUR="1000",
    )
    for vm in fleet:
        assert (
            functions.post(
                "alerts", metric_alert(vm.resource_id, alert_id=alert_id_for(vm.resource_id, vm.name))
            ).status_code
            == 202
        )
    # Three instances of 12 concurrent invocations each: 36 workers at once, far above the bound of 10.
    hosts = [_host(functions, 12) for _ in range(3)]
    with Sampler(functions.app) as sampler:
        _drain_on(hosts, timeout=600)
    assert len(sampler.running) > 20, "the sampler must have seen the run"
    assert max(sampler.running) <= 10 and max(sampler.leased) <= 10
    assert max(sampler.running) >= 8, "the bound must have been reached, or this test proves nothing"
    histories = [functions.app.ledger.history(VmId.parse(vm.resource_id)) for vm in fleet]
    assert [len(h) for h in histories] == [1] * 200
    assert {h[0].outcome for h in histories} == {"remediated"}
    assert sum(1 for e in functions.emulator.log.entries() if e.operation == "restart") == 200
    assert functions.app.slots.active() == []  # every slot given back
    assert sum(h.stats.poisoned.__len__() for h in hosts) == 0  # waiting for a slot is never a failed delivery


def test_slots_left_by_a_killed_instance_are_freed_by_expiry(
    functions: Functions, emulator_factory: EmulatorFactory
) -> None:
    fleet = _controlled(functions, emulator_factory, 2, RDPR_MAX_ACTIVE="2", RDPR_STORM_MAX_PER_HOUR="1000")
    settings = functions.app.settings
    # An instance that died mid-remediation leaves its leases behind. These expire 4 s from now: written as if
    # the dead instance took them RDPR_LOCK_MINUTES ago, minus 4 s.
    taken_at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=settings.lock_minutes) + dt.timedelta(seconds=4)
    dead = Slots(functions.app.slots.table, settings, clock=lambda: taken_at)
    assert dead.try_acquire(VmId.parse(next(iter(fleet)).resource_id), "deadinstance1") is not None
    assert dead.try_acquire(VmId.parse(next(iter(fleet)).resource_id), "deadinstance2") is not None
    assert len(functions.app.slots.active()) == 2
    ids = [body(functions.post("alerts", metric_alert(vm.resource_id)))["requestIds"][0] for vm in fleet]
    host = _host(functions, 4)
    started = time.monotonic()
    host.drain(timeout=60, idle_seconds=0.3)  # both slots still leased: the requests wait, the queue looks empty
    waiting = [body(functions.get_status(i)) for i in ids]
    assert [w["state"] for w in waiting] == ["queued", "queued"]
    assert all("waiting for a slot" in w["outcomeReason"] for w in waiting)
    assert not any(e.operation == "restart" for e in functions.emulator.log.entries())
    _drain_on([host], timeout=120)
    done = [body(functions.get_status(i)) for i in ids]
    assert [d["outcome"] for d in done] == ["remediated", "remediated"]
    assert time.monotonic() - started >= 3.5  # not before the dead instance's leases expired
    assert functions.app.slots.active() == []


def _release(
    functions: Functions, request_id: str, payload: bytes, principal: str = "ops@contoso.com", role: str = APPROVER
) -> Any:
    request = func.HttpRequest(
        "POST",
        f"https://localhost/api/remediations/{request_id}/release",
        headers={"x-ms-client-principal": client_principal(principal, role)},
        params={},
        route_params={"request_id": request_id},
        body=payload,
    )
    return functions.module.remediation_release(request)


def test_the_storm_guard_holds_what_exceeds_the_budget_and_releases_it(
    functions: Functions, emulator_factory: EmulatorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="remediate.events")
    fleet = _controlled(functions, emulator_factory, 5, RDPR_STORM_MAX_PER_HOUR="3")
    answers = [functions.post("alerts", metric_alert(vm.resource_id)) for vm in fleet]
    assert [a.status_code for a in answers] == [202] * 5  # accepted, every one: held is not dropped
    ids = [body(a)["requestIds"][0] for a in answers]
    # Nothing is counted at acceptance: a request counts when it is about to change its VM.
    assert [body(functions.get_status(i))["state"] for i in ids] == ["queued"] * 5
    functions.host.drain(timeout=60, idle_seconds=1)
    after = {i: body(functions.get_status(i)) for i in ids}
    held = [i for i in ids if after[i]["state"] == "held"]
    assert sorted(a["outcome"] or a["state"] for a in after.values()) == ["held", "held"] + ["remediated"] * 3
    assert all("RDPR_STORM_MAX_PER_HOUR=3" in after[i]["outcomeReason"] for i in held)
    assert all(after[i]["steps"][-1]["name"] == "plan" for i in held)  # stopped before the first change
    events = [r.__dict__ for r in caplog.records if getattr(r, "event", None) == "remediation.control"]
    assert sorted(e["requestId"] for e in events if e["action"] == "request held") == sorted(held)  # telemetry
    from remediate.cli.fleet import held_requests

    shown = held_requests(functions.app.settings)  # what `rdp-remediate fleet` lists
    assert sorted(h["requestId"] for h in shown) == sorted(held) and all("storm guard" in h["reason"] for h in shown)
    assert sum(1 for e in functions.emulator.log.entries() if e.operation == "restart") == 3
    assert all(functions.app.ledger.vm_state(VmId.parse(after[i]["vm"])).owner is None for i in held)  # not locked

    # Bad input changes nothing: an unknown id, a request that is not held, a reason that is not text.
    assert _release(functions, "0" * 32, b"{}").status_code == 404
    not_held = _release(functions, next(i for i in ids if i not in held), b"{}")
    assert not_held.status_code == 409 and body(not_held)["error"]["field"] == "request_id"
    bad_reason = _release(functions, held[0], b'{"reason": 42}')
    assert bad_reason.status_code == 400 and body(bad_reason)["error"]["field"] == "reason"
    operator = _release(functions, held[0], b"{}", role="Remediation.Operator")  # releasing passes a safety control
    assert operator.status_code == 403 and body(operator)["error"]["field"] == "caller"
    assert body(functions.get_status(held[0]))["state"] == "held"

    # An operator releases the first: it runs at once, recorded with who and why.
    released = _release(functions, held[0], b'{"reason": "one bad patch, checked (CHG0042)"}')
    assert released.status_code == 200 and body(released)["releasedBy"] == "ops@contoso.com (aad)"
    functions.host.drain(timeout=60, idle_seconds=1)
    first = body(functions.get_status(held[0]))
    assert first["outcome"] == "remediated"
    assert body(functions.get_status(held[1]))["state"] == "held"

    # The window passes for the second: its message comes back by itself and the budget has room again.
    # (Azurite cannot fast-forward the message's invisibility, so the test moves both clocks by hand.)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=61)
    functions.app.storm._clock = lambda: later
    message = functions.app.ledger.request_fields(held[1], "MessageId", "PopReceipt")
    functions.app.queue.queue.update_message(
        message["MessageId"], pop_receipt=message["PopReceipt"], visibility_timeout=0
    )
    functions.host.drain(timeout=60, idle_seconds=1)
    second = body(functions.get_status(held[1]))
    assert second["outcome"] == "remediated"
    assert sum(1 for e in functions.emulator.log.entries() if e.operation == "restart") == 5


def test_the_storm_budget_is_also_a_share_of_the_fleet_in_scope(product_settings: Settings) -> None:
    from remediate.engine.slots import Slots as _Slots
    from remediate.engine.storm import StormGuard

    table = _Slots.from_settings(product_settings)
    table.create_table()
    guard = StormGuard(table.table, product_settings, fleet_size=lambda: 40)  # 20 % of 40: 8 an hour
    assert guard.limit() == (8, "RDPR_STORM_MAX_PERCENT=20 of 40 VMs in scope")
    assert [guard.admit(f"request{n}") for n in range(8)] == [None] * 8
    hold = guard.admit("request8")
    assert hold is not None and "RDPR_STORM_MAX_PERCENT=20 of 40 VMs in scope" in hold.reason
    assert guard.check() is not None and guard.started_last_hour() == 8
    assert guard.admit("request3") is None and guard.started_last_hour() == 8  # counted once, however often asked
    assert guard.admit("request8", force=True) is None and guard.started_last_hour() == 9
