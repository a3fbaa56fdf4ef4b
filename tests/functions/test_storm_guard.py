"""The storm guard counts a remediation when it is about to change its VM, not when its request is accepted."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from remediate.engine.slots import Slots
from remediate.engine.storm import StormGuard
from remediate.intake.app import reset_app
from remediate.model import VmId
from remediate.settings import Settings
from sim.fleet import Fleet, make_vm
from tests.fixtures.emulator import EmulatorFactory
from tests.functions.conftest import Functions, body
from tests.functions.test_fleet_controls import _controlled
from tests.functions.test_function_app import metric_alert


@pytest.fixture(autouse=True)
def platform_authentication(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")


def test_a_burst_of_alerts_for_healthy_vms_does_not_spend_the_budget_of_real_repairs(
    functions: Functions, emulator_factory: EmulatorFactory
) -> None:
    healthy = [make_vm("healthy", i, name=f"ok{i}") for i in range(4)]
    broken = [make_vm("expired-certificate", 10 + i, name=f"bad{i}") for i in range(2)]
    _with_fleet(functions, emulator_factory, Fleet([*healthy, *broken]), RDPR_STORM_MAX_PER_HOUR="2")
    # The storm comes first: four alerts for VMs that turn out healthy, then two for VMs that are broken.
    first = [body(functions.post("alerts", metric_alert(vm.resource_id)))["requestIds"][0] for vm in healthy]
    functions.host.drain(timeout=60, idle_seconds=1)
    assert [body(functions.get_status(i))["outcome"] for i in first] == ["healthy"] * 4
    assert functions.app.storm.started_last_hour() == 0  # reading a VM changes nothing and spends nothing
    then = [body(functions.post("alerts", metric_alert(vm.resource_id)))["requestIds"][0] for vm in broken]
    functions.host.drain(timeout=60, idle_seconds=1)
    assert [body(functions.get_status(i))["outcome"] for i in then] == ["remediated"] * 2
    assert functions.app.storm.started_last_hour() == 2


def test_past_the_budget_a_request_stops_before_its_first_change_and_its_vm_stays_free(
    functions: Functions, emulator_factory: EmulatorFactory
) -> None:
    fleet = _controlled(functions, emulator_factory, 2, RDPR_STORM_MAX_PER_HOUR="1")
    vms = list(fleet)
    first = body(functions.post("alerts", metric_alert(vms[0].resource_id)))["requestIds"][0]
    functions.host.drain(timeout=60, idle_seconds=1)
    assert body(functions.get_status(first))["outcome"] == "remediated"
    runs_before = sum(1 for e in functions.emulator.log.entries() if e.operation == "runCommand")
    second = body(functions.post("alerts", metric_alert(vms[1].resource_id)))["requestIds"][0]
    functions.host.drain(timeout=60, idle_seconds=1)
    held = body(functions.get_status(second))
    assert held["state"] == "held" and "RDPR_STORM_MAX_PER_HOUR=1" in held["outcomeReason"]
    assert [s["name"] for s in held["steps"]][-1] == "plan"  # diagnosed and planned, nothing changed
    runs = sum(1 for e in functions.emulator.log.entries() if e.operation == "runCommand")
    assert runs - runs_before == 1  # only the read-only diagnose ran on the held VM
    assert sum(1 for e in functions.emulator.log.entries() if e.operation == "restart") == 1
    vm = VmId.parse(vms[1].resource_id)
    assert functions.app.ledger.vm_state(vm).owner is None  # no lock kept while it waits
    assert functions.app.ledger.vm_state(vm).attempts == {}  # no attempt spent either
    assert functions.queued() == 1  # its message waits, invisible until the budget frees


def test_two_workers_never_both_take_the_last_unit(product_settings: Settings) -> None:
    table = Slots.from_settings(product_settings)
    table.create_table()
    settings = dataclasses.replace(product_settings, storm_max_per_hour=5)
    guard = StormGuard(table.table, settings)
    assert [guard.admit(f"early{n}") for n in range(4)] == [None] * 4
    results: dict[str, object] = {}
    barrier = threading.Barrier(8)

    def ask(request_id: str) -> None:
        contender = StormGuard(Slots.from_settings(settings).table, settings)  # its own client: another instance
        barrier.wait()
        results[request_id] = contender.admit(request_id)

    threads = [threading.Thread(target=ask, args=(f"racer{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    admitted = [r for r, hold in results.items() if hold is None]
    assert len(admitted) == 1 and guard.started_last_hour() == 5


def _with_fleet(functions: Functions, emulator_factory: EmulatorFactory, fleet: Fleet, **env: str) -> None:
    """The fleet-control tests' settings (`_controlled`), on a fleet of the test's own making."""
    functions.emulator = emulator_factory(fleet)
    settings = functions.app.settings
    base = {
        "RDPR_STORAGE_CONNECTION": settings.storage_connection,
        "RDPR_TABLE_PREFIX": settings.table_prefix,
        "RDPR_QUEUE_NAME": settings.queue_name,
        "RDPR_BOOT_TIMEOUT_SECONDS": "4",
        "RDPR_PROBE_TIMEOUT_SECONDS": "1",
        "RDPR_RETRY_AFTER_CAP_SECONDS": "0.2",
        "RDPR_REBOOT_POLICY": "always",
    }
    functions.app = reset_app(Settings.from_env({**base, **functions.emulator.settings_env(), **env}))
