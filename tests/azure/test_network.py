"""The network path to a VM's RDP port: Azure's NSG evaluation as a pure function, and the real SDK reading the
NIC's effective rules (a long-running POST) and the JIT policies from the emulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from remediate.azure.clients import AzureClients
from remediate.azure.network import evaluate, local_source_ports, policy_ports, read_path
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


# --- source ports: the probe's is ephemeral, drawn by the operating system -------------------------------------

LINUX_EPHEMERAL = (32768, 60999)


def ported(name: str, priority: int, access: str, ranges: list[str], **fields: Any) -> dict[str, Any]:
    """A rule limited to source ports: one range as `sourcePortRange` (the spec example's "456-456"), several as
    `sourcePortRanges`."""
    shaped = rule(name, priority, access, **fields)
    if len(ranges) == 1:
        shaped["sourcePortRange"] = ranges[0]
    else:
        del shaped["sourcePortRange"]
        shaped["sourcePortRanges"] = ranges
    return shaped


def test_an_allow_rule_for_other_source_ports_does_not_let_the_probe_in() -> None:
    rules = [
        ported("securityRules/AllowRdpFromPort456", 100, "Allow", ["456-456"], source="10.1.0.0/24"),
        rule("securityRules/DenyRdp", 200, "Deny"),
        *DEFAULTS,
    ]
    for ports in (LINUX_EPHEMERAL, (49152, 65535)):
        path = evaluate([group(rules)], SOURCE, VM_IP, PORT, source_ports=ports)
        assert (path.open, path.rule) == (False, "securityRules/DenyRdp"), ports


def test_source_port_ranges_that_cover_part_of_the_ephemeral_range_leave_the_path_unknown() -> None:
    partial = ported("securityRules/AllowHighPorts", 100, "Allow", ["50000-65535"])
    path = evaluate([group([partial, rule("securityRules/DenyRdp", 200, "Deny"), *DEFAULTS])], SOURCE, VM_IP, PORT,
                    source_ports=LINUX_EPHEMERAL)  # fmt: skip
    assert (path.open, path.rule) == (None, "securityRules/AllowHighPorts")
    # A deny that may or may not catch the probe's port: unknown too, never blocked.
    deny = ported("securityRules/DenyLowPorts", 100, "Deny", ["1024-40000"])
    assert evaluate([group([deny, *DEFAULTS])], SOURCE, VM_IP, PORT, source_ports=LINUX_EPHEMERAL).open is None


def test_source_port_ranges_that_together_cover_the_ephemeral_range_match() -> None:
    split = ported("securityRules/AllowAll", 100, "Allow", ["1024-40000", "39000-65535"])
    rules = [split, rule("securityRules/DenyRdp", 200, "Deny"), *DEFAULTS]
    assert evaluate([group(rules)], SOURCE, VM_IP, PORT, source_ports=LINUX_EPHEMERAL).open is True
    gap = ported("securityRules/AllowTwo", 100, "Allow", ["1024-40000", "40002-65535"])
    assert evaluate([group([gap, *rules[1:]])], SOURCE, VM_IP, PORT, source_ports=LINUX_EPHEMERAL).open is None
    star = ported("securityRules/AllowStar", 100, "Allow", ["*"])
    assert evaluate([group([star, *rules[1:]])], SOURCE, VM_IP, PORT, source_ports=LINUX_EPHEMERAL).open is True


def test_the_ephemeral_range_is_read_from_the_operating_system(tmp_path: Path) -> None:
    proc = tmp_path / "ip_local_port_range"
    proc.write_text("32768\t60999\n", encoding="ascii")
    assert local_source_ports(proc) == (32768, 60999)
    assert local_source_ports(tmp_path / "absent") == (49152, 65535)  # Windows' and IANA's dynamic range
    proc.write_text("garbage\n", encoding="ascii")
    assert local_source_ports(proc) == (49152, 65535)


@pytest.mark.emulator
def test_the_sdk_path_is_blocked_when_the_only_allow_is_for_other_source_ports(
    emulator: Emulator, product_clients: AzureClients
) -> None:
    """Through the real SDK: the allow rule for the product's address names source port 456 only, so the probe
    (an ephemeral port) meets the deny below it; the emulator's listener drops it the same way (silence)."""
    vm = emulator.fleet.by_scenario("healthy")[0]
    with emulator.fleet.lock:
        vm.nsg_rules = [
            {"name": "AllowRdpFromPort456", "priority": 100, "access": "Allow", "source": "127.0.0.1/32",
             "source_ports": ["456"]},
            {"name": "DenyRdpInbound", "priority": 110, "access": "Deny", "source": "*"},
        ]  # fmt: skip
    path = read_path(product_clients, VmId.parse(vm.resource_id), vm.nic_id, vm.private_ip, emulator.rdp_port)
    assert (path.open, path.rule) == (False, "securityRules/DenyRdpInbound")
    from remediate.probe import probe

    assert probe(vm.private_ip, emulator.rdp_port, timeout=1.0).status == "no-answer"
