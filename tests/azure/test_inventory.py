"""VM discovery through Resource Graph: the real ResourceGraphClient against the emulator."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from remediate.azure.clients import AzureClients
from remediate.azure.inventory import (
    PAGE_SIZE,
    computer_host_label,
    find_vms_by_computer_name,
    list_windows_vms,
    load_query,
)
from remediate.model import PermanentError, TransientError, VmId
from remediate.settings import Settings
from sim.fleet import OTHER_SUBSCRIPTION, SUBSCRIPTION, Fleet, generated_fleet, make_vm
from sim.server import Emulator
from tests.fixtures.emulator import EmulatorFactory, emulator_env

NOW = dt.datetime.now(dt.UTC)
SUB = f"/subscriptions/{SUBSCRIPTION}"


@pytest.fixture
def clients_for() -> Iterator[Any]:
    """`clients_for(emulator)`: the product's clients for that emulator, closed after the test."""
    made: list[AzureClients] = []

    def build(emulator: Emulator) -> AzureClients:
        made.append(AzureClients(Settings.from_env(emulator_env(emulator))))
        return made[-1]

    yield build
    for clients in made:
        clients.close()


def graph_requests(emulator: Emulator) -> int:
    return sum(1 for entry in emulator.log.entries() if entry.operation == "resourceGraph")


class NoAzure:
    """Clients that fail the test if any request is attempted."""

    def resource_graph(self) -> Any:
        raise AssertionError("a Resource Graph request was attempted")

    def logs(self) -> Any:
        raise AssertionError("a Log Analytics request was attempted")


def no_azure() -> AzureClients:
    return NoAzure()  # type: ignore[return-value]


# --- Inventory -----------------------------------------------------------------------------------------


def test_demo_fleet_inventory_has_state_computer_name_tags_and_private_ip(
    emulator: Emulator, azure_clients: AzureClients
) -> None:
    records = {record.vm.name: record for record in list_windows_vms(azure_clients, (SUB,))}

    expected = {vm.name for vm in emulator.fleet if vm.os_type == "Windows"}
    assert set(records) == expected
    assert "vm-linux" not in records
    for vm in emulator.fleet:
        if vm.name in records:
            record = records[vm.name]
            assert record.vm == VmId.parse(vm.resource_id)
            assert record.private_ip == vm.private_ip
            assert record.computer_name == vm.guest.computer_name
            assert record.os_type == "Windows"
            assert record.location == vm.location
    assert records["vm-healthy"].power_state == "running"
    assert records["vm-deallocated"].power_state == "deallocated"
    assert records["vm-opted-out"].tags == {"rdp-remediate": "off"}
    assert graph_requests(emulator) == 1


def test_resource_group_scopes_filter_the_rows_of_one_query_per_subscription_batch(
    emulator_factory: EmulatorFactory, clients_for: Any
) -> None:
    fleet = Fleet(
        [
            make_vm("healthy", 0, name="a1", now=NOW, resource_group="rg-a"),
            make_vm("healthy", 1, name="a2", now=NOW, resource_group="RG-A"),
            make_vm("healthy", 2, name="b1", now=NOW, resource_group="rg-b"),
            make_vm("healthy", 3, name="c1", now=NOW, resource_group="rg-c"),
            make_vm("healthy", 4, name="o1", now=NOW, resource_group="rg-x", subscription_id=OTHER_SUBSCRIPTION),
            make_vm("healthy", 5, name="o2", now=NOW, resource_group="rg-y", subscription_id=OTHER_SUBSCRIPTION),
        ]
    )
    emulator = emulator_factory(fleet, listeners=False)
    clients = clients_for(emulator)

    scopes = (
        f"{SUB}/resourceGroups/rg-A",
        f"{SUB}/resourcegroups/rg-c",
        f"/subscriptions/{OTHER_SUBSCRIPTION.upper()}",
    )
    names = sorted(record.vm.name for record in list_windows_vms(clients, scopes))

    assert names == ["a1", "a2", "c1", "o1", "o2"]
    assert graph_requests(emulator) == 1  # both subscriptions in one paged query


def test_paging_over_2500_vms_returns_each_exactly_once(emulator_factory: EmulatorFactory, clients_for: Any) -> None:
    fleet = generated_fleet(2500, mix="healthy", now=NOW)
    emulator = emulator_factory(fleet, listeners=False)

    records = list_windows_vms(clients_for(emulator), (SUB,))

    ids = [record.vm.key for record in records]
    assert len(ids) == len(set(ids)) == 2500
    assert set(ids) == {vm.key for vm in fleet}
    assert graph_requests(emulator) == 3


def test_10000_vms_take_at_most_12_requests(emulator_factory: EmulatorFactory, clients_for: Any) -> None:
    fleet = generated_fleet(10_000, now=NOW)
    emulator = emulator_factory(fleet, listeners=False)

    records = list_windows_vms(clients_for(emulator), (SUB,))

    assert len(records) == sum(1 for vm in fleet if vm.os_type == "Windows")
    requests = [entry for entry in emulator.log.entries() if entry.operation == "resourceGraph"]
    assert len(requests) == -(-10_000 // PAGE_SIZE) <= 12
    assert all(entry.status == 200 and entry.method == "POST" for entry in requests)


def test_no_scope_means_no_request() -> None:
    assert list_windows_vms(no_azure(), ()) == []


def test_a_scope_that_is_not_a_subscription_is_refused_before_any_request() -> None:
    with pytest.raises(PermanentError, match="subscriptions/GUID"):
        list_windows_vms(no_azure(), ("/subscriptions/not-a-guid",))


def test_throttling_beyond_the_sdk_retries_is_transient(emulator: Emulator, azure_clients: AzureClients) -> None:
    emulator.faults.add("resourceGraph", "429", count=50, retry_after=1)

    with pytest.raises(TransientError, match="429"):
        list_windows_vms(azure_clients, (SUB,))


# --- Computer names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "vm1' or 1==1",
        "vm1')| take 1 //",
        "x' | union (Resources)",
        'vm"01',
        "vm 01",
        "vm01;",
        "",
        "ABCDEFGHIJKLMNOP",  # 16 characters
        "vm\u00e901",
        "vm01\n| take 1",
        "vm01.bad domain",
        "vm01..contoso.com",
    ],
)
def test_names_that_could_change_the_query_are_refused_before_any_request(name: str) -> None:
    with pytest.raises(PermanentError, match="not a Windows computer name"):
        find_vms_by_computer_name(no_azure(), ["VM-OK", name], (SUB,))


def test_computer_names_resolve_case_insensitively_within_scope(
    emulator_factory: EmulatorFactory, clients_for: Any
) -> None:
    web_prod = make_vm("healthy", 0, name="web01", now=NOW, resource_group="rg-prod")
    web_dr = make_vm("healthy", 1, name="web01", now=NOW, resource_group="rg-dr")
    web_sandbox = make_vm("healthy", 2, name="web01", now=NOW, resource_group="rg-sandbox")
    db = make_vm("keystore-acl", 3, name="db01", now=NOW, resource_group="rg-prod")
    emulator = emulator_factory(Fleet([web_prod, web_dr, web_sandbox, db]), listeners=False)
    scopes = (f"{SUB}/resourceGroups/rg-prod", f"{SUB}/resourceGroups/rg-dr")

    found = find_vms_by_computer_name(clients_for(emulator), ["Web01", "db01.corp.contoso.com", "nosuch"], scopes)

    assert found == {
        "Web01": sorted([VmId.parse(web_dr.resource_id), VmId.parse(web_prod.resource_id)], key=lambda v: v.key),
        "db01.corp.contoso.com": [VmId.parse(db.resource_id)],
        "nosuch": [],
    }
    assert graph_requests(emulator) == 1


def test_fqdn_host_label_is_the_computer_name() -> None:
    assert computer_host_label("web01.corp.contoso.com") == "web01"
    assert computer_host_label("WEB-01") == "WEB-01"
    assert computer_host_label("web01.") == "web01"
    assert computer_host_label(None) is None


def test_shipped_queries_are_single_line_without_comments_and_the_lookup_has_one_placeholder() -> None:
    for name in ("windows_vms", "vms_by_computer_name", "rdp_events"):
        text = load_query(name)
        assert "\n" not in text
        assert "//" not in text
    assert load_query("vms_by_computer_name").count("{names}") == 1
    assert "{" not in load_query("windows_vms")
