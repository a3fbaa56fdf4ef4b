"""VM list, get, instance view and NIC get through the real, unmodified Azure SDK clients."""

from __future__ import annotations

from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError

from remediate.azure.clients import AzureClients
from remediate.settings import Settings
from sim.fleet import OUT_OF_SCOPE_GROUP, RESOURCE_GROUP, SUBSCRIPTION, generated_fleet
from sim.realism import KIND
from sim.server import Emulator
from tests.fixtures.emulator import EmulatorFactory, emulator_env
from tests.sim.support import agent_status, error_code, status_codes


def clients_for(emulator: Emulator) -> AzureClients:
    return AzureClients(Settings.from_env(emulator_env(emulator)))


def test_listing_2500_vms_follows_every_next_link(emulator_factory: EmulatorFactory) -> None:
    fleet = generated_fleet(2500, resource_groups=5)
    emulator = emulator_factory(fleet, page_size=100, listeners=False)
    clients = clients_for(emulator)
    try:
        listed = list(clients.compute(SUBSCRIPTION).virtual_machines.list_all())
    finally:
        clients.close()

    assert sorted(str(vm.id).lower() for vm in listed) == sorted(vm.key for vm in fleet)
    pages = [entry for entry in emulator.log.entries() if entry.operation == "listVms"]
    assert len(pages) == 25
    assert {entry.status for entry in pages} == {200}
    assert {entry.api_version for entry in pages} == {"2026-04-01"}


def test_listing_a_resource_group_returns_only_its_vms(emulator_factory: EmulatorFactory) -> None:
    fleet = generated_fleet(300, resource_groups=3)
    emulator = emulator_factory(fleet, page_size=40, listeners=False)
    clients = clients_for(emulator)
    try:
        listed = list(clients.compute(SUBSCRIPTION).virtual_machines.list("RG-01"))  # ARM ignores case
    finally:
        clients.close()

    expected = {vm.key for vm in fleet if vm.resource_group == "rg-01"}
    assert {str(vm.id).lower() for vm in listed} == expected
    assert len(listed) == len(expected)


def test_get_vm_carries_the_fields_the_product_reads(emulator: Emulator, azure_clients: AzureClients) -> None:
    source = emulator.fleet.get(
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
        "/providers/Microsoft.Compute/virtualMachines/vm-healthy"
    )
    assert source is not None

    vm = azure_clients.compute(SUBSCRIPTION).virtual_machines.get(RESOURCE_GROUP, "VM-HEALTHY")

    assert vm.id == source.resource_id
    assert vm.name == "vm-healthy"
    assert vm.type == "Microsoft.Compute/virtualMachines"
    assert vm.location == source.location
    assert vm.vm_id == source.vm_uuid
    assert vm.storage_profile.os_disk.os_type == "Windows"
    assert vm.os_profile.computer_name == source.guest.computer_name
    assert vm.hardware_profile.vm_size == source.vm_size
    # A secondary NIC comes first, as Azure allows: only `primary` tells which one the VM's address is on.
    nics = vm.network_profile.network_interfaces
    assert len(nics) == 2 and [nic.primary for nic in nics] == [False, True]
    assert nics[1].id == source.nic_id
    assert vm.zones == ["1"] and vm.identity is not None and vm.identity.type == "SystemAssigned"
    assert vm.security_profile.security_type == "TrustedLaunch"
    assert vm.resources and vm.license_type is None
    assert vm.provisioning_state == "Succeeded"
    assert vm.instance_view is None  # only with $expand=instanceView


def test_get_vm_with_expanded_instance_view_and_the_instance_view_agree(azure_clients: AzureClients) -> None:
    compute = azure_clients.compute(SUBSCRIPTION)

    expanded = compute.virtual_machines.get(RESOURCE_GROUP, "vm-healthy", expand="instanceView").instance_view
    direct = compute.virtual_machines.instance_view(RESOURCE_GROUP, "vm-healthy")

    assert expanded is not None
    for view in (expanded, direct):
        assert status_codes(view) == ["ProvisioningState/succeeded", "PowerState/running"]
        assert agent_status(view) == "Ready"
        assert view.computer_name == "VM-HEALTHY"
        assert str(view.os_name).startswith("Windows Server")


def test_instance_view_reports_an_agent_that_is_not_ready(azure_clients: AzureClients) -> None:
    view = azure_clients.compute(SUBSCRIPTION).virtual_machines.instance_view(RESOURCE_GROUP, "vm-agent-not-ready")

    assert status_codes(view)[1] == "PowerState/running"
    assert agent_status(view) == "Not Ready"
    # The shape of an agent that stopped reporting.
    agent: Any = view.vm_agent
    assert agent.vm_agent_version == "Unknown"
    assert agent.statuses[0].code == "ProvisioningState/Unavailable"


def test_instance_view_has_the_real_shape(azure_clients: AzureClients) -> None:
    view: Any = azure_clients.compute(SUBSCRIPTION).virtual_machines.instance_view(RESOURCE_GROUP, "vm-healthy")
    assert view.vm_agent.extension_handlers and view.vm_agent.statuses[0].time is not None
    assert view.disks and view.disks[0].statuses
    assert view.patch_status is not None and view.patch_status.available_patch_summary.status == "Succeeded"
    assert view.extensions


def test_a_deallocated_vm_shows_no_guest_information(azure_clients: AzureClients) -> None:
    view = azure_clients.compute(SUBSCRIPTION).virtual_machines.instance_view(RESOURCE_GROUP, "vm-deallocated")

    assert status_codes(view)[1] == "PowerState/deallocated"
    assert view.vm_agent is None
    assert view.computer_name is None


def test_linux_vm_reports_its_os_type(azure_clients: AzureClients) -> None:
    vm = azure_clients.compute(SUBSCRIPTION).virtual_machines.get(RESOURCE_GROUP, "vm-linux")

    assert vm.storage_profile.os_disk.os_type == "Linux"


def test_nic_get_gives_the_vms_loopback_private_ip(emulator: Emulator, azure_clients: AzureClients) -> None:
    compute = azure_clients.compute(SUBSCRIPTION)
    vm = compute.virtual_machines.get(RESOURCE_GROUP, "vm-expired-certificate")
    nic_name = next(nic.id for nic in vm.network_profile.network_interfaces if nic.primary).rsplit("/", 1)[1]

    nic = azure_clients.network(SUBSCRIPTION).network_interfaces.get(RESOURCE_GROUP, nic_name)

    source = emulator.fleet.get(str(vm.id))
    assert source is not None
    # The primary IP configuration is not the first one either.
    assert [config.primary for config in nic.ip_configurations] == [False, True]
    assert nic.ip_configurations[1].private_ip_address == source.private_ip
    assert nic.ip_configurations[0].private_ip_address != source.private_ip
    assert nic.primary is True and nic.virtual_machine.id == vm.id
    assert [entry.operation for entry in emulator.log.entries()] == ["getVm", "getNic"]


def test_the_secondary_nic_is_served_too_and_carries_an_address_nothing_listens_on(
    emulator: Emulator, azure_clients: AzureClients
) -> None:
    vm = azure_clients.compute(SUBSCRIPTION).virtual_machines.get(RESOURCE_GROUP, "vm-expired-certificate")
    secondary = vm.network_profile.network_interfaces[0]
    nic = azure_clients.network(SUBSCRIPTION).network_interfaces.get(RESOURCE_GROUP, secondary.id.rsplit("/", 1)[1])
    assert nic.primary is False
    assert nic.ip_configurations[0].private_ip_address.startswith("127.250.")


def test_a_kind_run_gives_one_nic_with_one_configuration(emulator_factory: EmulatorFactory) -> None:
    kind = emulator_factory(realism=KIND)
    view = kind.fleet.get(kind.fleet.by_scenario("healthy")[0].resource_id)
    assert view is not None and kind.secondary_nics(view) == 0


def test_unknown_vm_is_a_404_resource_not_found(azure_clients: AzureClients) -> None:
    with pytest.raises(ResourceNotFoundError) as caught:
        azure_clients.compute(SUBSCRIPTION).virtual_machines.get(RESOURCE_GROUP, "vm-nope")

    assert caught.value.status_code == 404
    assert error_code(caught.value)[0] == "ResourceNotFound"


def test_unknown_resource_group_and_subscription_are_404s(azure_clients: AzureClients) -> None:
    compute = azure_clients.compute(SUBSCRIPTION)
    with pytest.raises(ResourceNotFoundError) as group:
        compute.virtual_machines.get("rg-nope", "vm-healthy")
    other = azure_clients.compute("99999999-9999-4999-8999-999999999999")
    with pytest.raises(ResourceNotFoundError) as subscription:
        list(other.virtual_machines.list_all())

    assert error_code(group.value)[0] == "ResourceGroupNotFound"
    assert error_code(subscription.value)[0] == "SubscriptionNotFound"


def test_the_out_of_scope_vm_lives_in_another_group(azure_clients: AzureClients) -> None:
    compute = azure_clients.compute(SUBSCRIPTION)

    names = {vm.name for vm in compute.virtual_machines.list(OUT_OF_SCOPE_GROUP)}

    assert names == {"vm-out-of-scope"}
