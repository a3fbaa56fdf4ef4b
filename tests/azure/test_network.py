"""The network path to a VM's RDP port: Azure's NSG evaluation as a pure function, and the real SDK reading the
NIC's effective rules (a long-running POST) and the JIT policies from the emulator."""

from __future__ import annotations

from typing import Any

import pytest

from remediate.azure.clients import AzureClients
from remediate.azure.network import evaluate, policy_ports, read_path
from remediate.model import TransientError, VmId
from sim.server import Emulator

SOURCE, VM_IP, PORT = "10.1.0.4", "10.2.0.5", 3389


def rule(name: str, priority: int, access: str, **fields: Any) -> dict[str, Any]:
    """An effective security rule in the REST shape Learn shows for Get-AzEffectiveNetworkSecurityGroup."""
    return {
        "name": name,
        "protocol": fields.get("protocol", "Tcp"),
        "sourcePortRange": "0-65535",
        "destinationPortRange": fields.get("ports", "3389-3389"),
        "sourceAddressPrefix": fields.get("source", "*"),
        "destinationAddressPrefix": fields.get("destination", "0.0.0.0/0"),
        "expandedSourceAddressPrefix": fields.get("expanded", []),
        "access": access,
        "priority": priority,
        "direction": fields.get("direction", "Inbound"),
    }


DEFAULTS = [
    rule("defaultSecurityRules/AllowVnetInBound", 65000, "Allow", protocol="All", ports="0-65535",
         source="VirtualNetwork", expanded=["10.0.0.0/8"]),
    rule("defaultSecurityRules/DenyAllInBound", 65500, "Deny", protocol="All", ports="0-65535"),
]  # fmt: skip


def group(rules: list[dict[str, Any]], *, subnet: bool = False, name: str = "nsg-vm") -> dict[str, Any]:
    association = {"subnet": {"id": "s"}} if subnet else {"networkInterface": {"id": "n"}}
    return {
        "networkSecurityGroup": {"id": f"/x/networkSecurityGroups/{name}"},
        "association": association,
        "effectiveSecurityRules": rules,
    }


def test_the_default_rules_let_the_virtual_network_in() -> None:
    path = evaluate([group(DEFAULTS)], SOURCE, VM_IP, PORT)
    assert path.open is True and path.rule == "defaultSecurityRules/AllowVnetInBound"


def test_the_first_matching_rule_by_priority_decides() -> None:
    rules = [
        rule("securityRules/DenyRdp", 200, "Deny"),
        rule("securityRules/AllowRdpFromApp", 100, "Allow", source="10.1.0.0/24"),
        *DEFAULTS,
    ]
    assert evaluate([group(rules)], SOURCE, VM_IP, PORT).open is True
    blocked = evaluate([group(rules)], "10.9.0.4", VM_IP, PORT)
    assert (blocked.open, blocked.rule, blocked.nsg) == (False, "securityRules/DenyRdp", "nsg-vm")


def test_rules_for_other_ports_protocols_and_directions_do_not_match() -> None:
    rules = [
        rule("securityRules/DenyHttp", 100, "Deny", ports="80"),
        rule("securityRules/DenyUdp", 101, "Deny", protocol="Udp", ports="3389"),
        rule("securityRules/DenyOut", 102, "Deny", direction="Outbound"),
        rule("securityRules/DenyRange", 103, "Deny", ports="3390-4000"),
        *DEFAULTS,
    ]
    assert evaluate([group(rules)], SOURCE, VM_IP, PORT).open is True


def test_every_nsg_on_the_way_must_allow_and_the_subnet_is_read_first() -> None:
    subnet = group([rule("securityRules/SubnetDeny", 100, "Deny"), *DEFAULTS], subnet=True, name="nsg-subnet")
    nic = group([rule("securityRules/NicAllow", 100, "Allow"), *DEFAULTS])
    path = evaluate([nic, subnet], SOURCE, VM_IP, PORT)
    assert (path.open, path.nsg, path.rule) == (False, "nsg-subnet", "securityRules/SubnetDeny")


def test_an_unexpanded_service_tag_leaves_the_path_unknown_never_blocked() -> None:
    rules = [rule("securityRules/DenyFromTag", 100, "Deny", source="AzureCloud"), *DEFAULTS]
    assert evaluate([group(rules)], SOURCE, VM_IP, PORT).open is None
    assert evaluate([], SOURCE, VM_IP, PORT).open is True  # no NSG at all: nothing filters
    assert evaluate([group(DEFAULTS)], None, VM_IP, PORT).open is None


def test_jit_ports_are_read_for_this_vm_only() -> None:
    vm = VmId.parse(
        "/subscriptions/00000000-0000-4000-8000-000000000001/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"
    )
    policies = [
        {"properties": {"virtualMachines": [{"id": str(vm).upper(), "ports": [{"number": 3389}, {"number": 22}]}]}},
        {"properties": {"virtualMachines": [{"id": str(vm) + "0", "ports": [{"number": 5986}]}]}},
    ]
    assert policy_ports(policies, vm) == {3389, 22}


# --- through the real SDK against the emulator -------------------------------------------------------------------


def _read(emulator: Emulator, clients: AzureClients, scenario: str) -> Any:
    vm = emulator.fleet.by_scenario(scenario)[0]
    return read_path(clients, VmId.parse(vm.resource_id), vm.nic_id, vm.private_ip, emulator.rdp_port)


@pytest.mark.emulator
def test_the_sdk_reads_the_blocking_rule_and_the_jit_policy(emulator: Emulator, product_clients: AzureClients) -> None:
    blocked = _read(emulator, product_clients, "nsg-no-path")
    assert (blocked.open, blocked.rule, blocked.jit) == (False, "securityRules/DenyRdpInbound", False)
    jit = _read(emulator, product_clients, "jit-no-path")
    assert jit.open is False and jit.jit is True and jit.rule.startswith("securityRules/SecurityCenter-JITRule")
    open_path = _read(emulator, product_clients, "healthy")
    assert open_path.open is True and open_path.rule == "defaultSecurityRules/AllowVnetInBound"
    operations = [e.operation for e in emulator.log.entries()]
    assert operations.count("effectiveNsgs") == 3 and operations.count("listJitPolicies") == 3
    assert operations.count("networkOperationResult") == 6  # each LRO polled until done: 202, then 200


@pytest.mark.emulator
def test_a_throttled_rules_read_is_transient(emulator: Emulator, product_clients: AzureClients) -> None:
    vm = emulator.fleet.by_scenario("nsg-no-path")[0]
    emulator.faults.add("effectiveNsgs", "503", count=10)
    with pytest.raises(TransientError):
        read_path(product_clients, VmId.parse(vm.resource_id), vm.nic_id, vm.private_ip, emulator.rdp_port)
