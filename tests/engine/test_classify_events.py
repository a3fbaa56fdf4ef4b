"""Log Analytics evidence in the classification: one query scoped to the VM and the last hour, through the real
SDK against the emulator; its source recorded in the journal; optional (no workspace, or an unreadable one,
and the classifier runs on the guest's facts alone and says so)."""

from __future__ import annotations

import datetime as dt

from remediate.azure.clients import AzureClients
from remediate.azure.inventory import load_query
from remediate.azure.logs import query_vm_events
from remediate.engine.event_evidence import read_vm_events
from remediate.model import VmId
from remediate.settings import Settings
from sim.logs import handle_logs_query
from sim.server import Emulator
from tests.engine.conftest import Engine
from tests.fixtures.emulator import emulator_env

SCENARIO = "policy-certificate"


def _log_1065(emulator: Emulator, scenario: str) -> None:
    """Event 1065 (a template certificate expired and cannot be replaced): diagnose does not read it, only Log
    Analytics has it."""
    vm = emulator.fleet.by_scenario(scenario)[0]
    with emulator.fleet.lock:
        vm.guest.events.append((1065, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)))


def _classified(engine: Engine, request_id: str) -> dict[str, object]:
    record = engine.ledger.get(request_id)
    assert record is not None
    (step,) = [s for s in record.steps if s.name == "classify"]
    assert step.summary is not None
    return step.summary


def test_the_workspace_evidence_reaches_the_classifier_with_its_source(engine: Engine) -> None:
    _log_1065(engine.emulator, SCENARIO)
    _log_1065(engine.emulator, "healthy")  # another VM's event is not this VM's evidence
    result = engine.run(SCENARIO)
    assert result.diagnosis is not None and result.diagnosis["cause"] == "policy-certificate"
    assert "event 1065 x1 (Log Analytics x1)" in result.diagnosis["evidence"]
    summary = _classified(engine, result.request_id)
    source = str(summary["eventSource"])
    assert (
        source.startswith(f"Log Analytics workspace {engine.emulator.workspace_id}, last 1 h") and "1065 x1" in source
    )
    assert [e.operation for e in engine.emulator.log.entries()].count("logsQuery") == 1


def test_without_a_workspace_the_classifier_runs_on_the_guest_facts_and_says_so(engine: Engine) -> None:
    _log_1065(engine.emulator, SCENARIO)
    settings = engine.with_settings(log_workspace_id="")
    result = engine.workflow(engine.request(SCENARIO), settings=settings).run()
    assert result.diagnosis is not None and result.diagnosis["cause"] == "policy-certificate"
    assert not any("1065" in str(e) for e in result.diagnosis["evidence"])
    assert "no Log Analytics workspace configured" in str(_classified(engine, result.request_id)["eventSource"])
    assert "logsQuery" not in [e.operation for e in engine.emulator.log.entries()]


def test_an_unreadable_workspace_does_not_stop_the_classification(engine: Engine) -> None:
    settings = engine.with_settings(log_workspace_id="99999999-aaaa-4bbb-8ccc-dddddddddddd")
    result = engine.workflow(engine.request(SCENARIO), settings=settings).run()
    assert result.diagnosis is not None and result.diagnosis["cause"] == "policy-certificate"
    source = str(_classified(engine, result.request_id)["eventSource"])
    assert "unreadable" in source and "guest's own logs only" in source


def test_the_vm_query_selects_one_vm_and_the_sdk_reads_it(emulator: Emulator, product_clients: AzureClients) -> None:
    storm = emulator.fleet.by_scenario("brute-force-storm")[0]
    vm = VmId.parse(storm.resource_id)
    evidence = query_vm_events(product_clients, emulator.workspace_id, vm, 1)
    assert {(e.vm, e.event_id) for e in evidence} == {(vm, 4625)} and evidence[0].count == 4200
    events = read_vm_events(product_clients, _settings(emulator), vm)
    assert events.counts == {4625: 4200} and "4625 x4200" in events.source
    # The emulator answers the scoped text with this VM's rows only (as `_ResourceId =~` does in Log Analytics).
    query = load_query("rdp_events_vm").replace("{vm}", str(vm).upper())
    status, body = handle_logs_query(emulator.fleet, emulator.workspace_id, {"query": query, "timespan": "PT1H"})
    assert status == 200
    assert {row[0] for row in body["tables"][0]["rows"]} == {storm.resource_id.lower()}


def _settings(emulator: Emulator) -> Settings:
    return Settings.from_env(emulator_env(emulator))
