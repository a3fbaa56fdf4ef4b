"""Event evidence from Log Analytics: the real LogsQueryClient against the emulator."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest

from remediate.azure.clients import AzureClients
from remediate.azure.logs import EventEvidence, query_rdp_events
from remediate.model import PermanentError, TransientError, VmId
from remediate.settings import Settings
from sim.fleet import Fleet, make_vm
from sim.server import Emulator
from tests.fixtures.emulator import EmulatorFactory, emulator_env


def by_vm(evidence: list[EventEvidence]) -> dict[VmId | None, set[int]]:
    found: dict[VmId | None, set[int]] = {}
    for item in evidence:
        found.setdefault(item.vm, set()).add(item.event_id)
    return found


def test_evidence_matches_the_fleet_scenarios(emulator: Emulator, azure_clients: AzureClients) -> None:
    evidence = query_rdp_events(azure_clients, emulator.workspace_id, 24)

    found = by_vm(evidence)

    def events(scenario: str) -> set[int]:
        return found.get(VmId.parse(emulator.fleet.by_scenario(scenario)[0].resource_id), set())

    assert events("expired-certificate") == {1058}
    assert events("keystore-acl") == {1057, 36870}
    assert events("keystore-corrupt") == {1057, 36870}
    assert events("tls12-disabled") == {36871}
    for quiet in ("healthy", "expiring-soon", "firewall-closed", "linux", "deallocated"):
        assert events(quiet) == set(), quiet
    # Machines that are not Azure VMs (blank or Arc `_ResourceId`) are kept as evidence without a VM.
    assert found.get(None) == {1058, 36870}
    storm = next(e for e in evidence if e.event_id == 4625)  # failed logons, types 10 and 3, in the last hour
    assert events("brute-force-storm") == {4625} and storm.count == 4200
    tls = next(item for item in evidence if item.event_id == 36871)
    assert tls.computer == emulator.fleet.by_scenario("tls12-disabled")[0].guest.computer_name
    assert tls.count == 1
    assert tls.last_seen.tzinfo == dt.UTC
    assert dt.timedelta(0) < dt.datetime.now(dt.UTC) - tls.last_seen < dt.timedelta(hours=2)
    assert sum(1 for entry in emulator.log.entries() if entry.operation == "logsQuery") == 1


def test_the_window_excludes_older_events(emulator_factory: EmulatorFactory) -> None:
    now = dt.datetime.now(dt.UTC)
    vm = make_vm("keystore-acl", 0, now=now)  # its events are three hours old
    vm.guest.events.append((1057, now - dt.timedelta(minutes=30)))
    emulator = emulator_factory(Fleet([vm]), listeners=False)
    clients = AzureClients(Settings.from_env(emulator_env(emulator)))
    try:
        last_hour = query_rdp_events(clients, emulator.workspace_id, 1)
        last_day = query_rdp_events(clients, emulator.workspace_id, 24)
    finally:
        clients.close()

    assert [(item.event_id, item.count) for item in last_hour if item.vm] == [(1057, 1)]
    assert [(item.event_id, item.count) for item in last_day if item.vm] == [(1057, 2), (36870, 1)]


def test_an_unknown_workspace_is_a_permanent_error(emulator: Emulator, azure_clients: AzureClients) -> None:
    with pytest.raises(PermanentError, match="404"):
        query_rdp_events(azure_clients, "99999999-aaaa-4bbb-8ccc-dddddddddddd", 24)


def test_throttling_beyond_the_sdk_retries_is_transient(emulator: Emulator, azure_clients: AzureClients) -> None:
    emulator.faults.add("logsQuery", "429", count=50, retry_after=1)

    with pytest.raises(TransientError, match="429"):
        query_rdp_events(azure_clients, emulator.workspace_id, 24)


@pytest.mark.parametrize(("workspace", "hours"), [("my-workspace", 24), ("../../subscriptions", 24), ("", 1)])
def test_bad_arguments_are_refused_before_any_request(workspace: str, hours: int) -> None:
    with pytest.raises(PermanentError):
        query_rdp_events(Unreachable(), workspace, hours)  # type: ignore[arg-type]


def test_a_zero_hour_window_is_refused() -> None:
    with pytest.raises(PermanentError, match="at least one hour"):
        query_rdp_events(Unreachable(), "11111111-2222-4333-8444-555555555555", 0)  # type: ignore[arg-type]


class Unreachable:
    def logs(self) -> Any:
        raise AssertionError("a Log Analytics request was attempted")


# --- PARTIAL answers -----------------------------------------------------------------------------------


class PartialLogs:
    """A logs client whose answer is a PARTIAL result, parsed by the SDK from the service's JSON shape."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def logs(self) -> PartialLogs:
        return self

    def query_workspace(self, workspace_id: str, query: str, **kwargs: Any) -> Any:
        from azure.monitor.query import LogsQueryError, LogsQueryPartialResult

        return LogsQueryPartialResult._from_generated(self.body, LogsQueryError)


def test_partial_results_are_used_and_logged_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    vm_id = (
        "/subscriptions/00000000-0000-4000-8000-000000000001/resourcegroups/rg-prod"
        "/providers/microsoft.compute/virtualmachines/vm1"
    )
    body = {
        "tables": [
            {
                "name": "PrimaryResult",
                "columns": [
                    {"name": "_ResourceId", "type": "string"},
                    {"name": "Computer", "type": "string"},
                    {"name": "EventID", "type": "int"},
                    {"name": "Count", "type": "long"},
                    {"name": "LastSeen", "type": "datetime"},
                ],
                "rows": [[vm_id, "VM1", 1058, 4, "2025-03-01T10:00:00Z"]],
            }
        ],
        "error": {"code": "PartialError", "message": "Query result exceeded the limits"},
    }

    with caplog.at_level(logging.WARNING, logger="remediate.azure.logs"):
        evidence = query_rdp_events(PartialLogs(body), "11111111-2222-4333-8444-555555555555", 24)  # type: ignore[arg-type]

    assert evidence == [
        EventEvidence(
            vm=VmId.parse(vm_id),
            computer="VM1",
            event_id=1058,
            count=4,
            last_seen=dt.datetime(2025, 3, 1, 10, 0, tzinfo=dt.UTC),
        )
    ]
    warning = next(record for record in caplog.records if record.levelno == logging.WARNING)
    assert "partial" in warning.getMessage()
    assert warning.__dict__["error_code"] == "PartialError"
