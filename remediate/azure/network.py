"""What Azure knows about the path from the function to a VM's RDP port, read before a VM is called broken.

Two reads, both read-only: the NIC's effective security rules (`effectiveNetworkSecurityGroups`, a long-running
POST; the SDK's `begin_list_effective_network_security_groups`) and the subscription's just-in-time policies
(`Microsoft.Security/jitNetworkAccessPolicies`, read through the network client's own pipeline: same credential,
retry and transport policies, no extra package).

`evaluate` is pure. Azure evaluates inbound traffic against the subnet's NSG, then the NIC's (Microsoft Learn,
"How network security groups filter network traffic"): in each, rules in priority order, the first that matches
protocol, source, destination and port decides; traffic gets through only if every NSG on the way allows it. A
rule whose match cannot be told (a service tag Azure did not expand, source ports that cover only part of the
range the probe's port is drawn from) leaves the path unknown, never blocked and never open.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from remediate.azure.errors import azure_errors
from remediate.model import PermanentError, VmId

if TYPE_CHECKING:
    from remediate.azure.clients import AzureClients

log = logging.getLogger(__name__)

JIT_API_VERSION = "2020-01-01"
_ANY = frozenset({"*", "any", "0.0.0.0/0"})
_TCP = frozenset({"tcp", "all", "*"})
# The probe never picks its source port: the operating system draws it from its dynamic (ephemeral) range. Linux
# (where the Functions Python worker runs) publishes its range in /proc; elsewhere, Windows' default dynamic port
# range, which is IANA's (Microsoft Learn, "The default dynamic port range for TCP/IP has changed"): 49152-65535.
LINUX_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_DYNAMIC_PORTS = (49152, 65535)


@dataclass(frozen=True)
class NetworkPath:
    """What Azure knows about the path from the function to the VM's RDP port (effective NSG rules, JIT).

    `open` is True (an allow rule decides first in every NSG on the way), False (a rule denies: `rule` names
    it) or None (unknown: the rules could not be read or do not decide for our address)."""

    open: bool | None
    rule: str | None = None
    nsg: str | None = None
    jit: bool = False  # a just-in-time policy governs the port (its deny rule opens only on request)
    source: str | None = None  # the address the function reaches the VM from
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "open": self.open,
            "rule": self.rule,
            "nsg": self.nsg,
            "jit": self.jit,
            "source": self.source,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NetworkPath:
        return cls(
            data.get("open"),
            data.get("rule"),
            data.get("nsg"),
            bool(data.get("jit")),
            data.get("source"),
            str(data.get("detail") or ""),
        )


def read_path(
    clients: AzureClients, vm: VmId, nic_id: str, destination: str, port: int, timeout: float = 60.0
) -> NetworkPath:
    """The path from this process to `destination`:`port` as the NIC's effective rules and JIT policies say."""
    source = local_source(destination, port)
    try:
        groups = effective_groups(clients, nic_id, timeout=timeout)
    except PermanentError as exc:  # e.g. a NIC not attached to a running VM: unknown, not blocked
        return NetworkPath(None, source=source, detail=f"effective security rules unreadable: {exc.reason}")
    jit_ports = _jit_ports(clients, vm)
    path = evaluate(groups, source, destination, port, source_ports=local_source_ports())
    return NetworkPath(path.open, path.rule, path.nsg, port in jit_ports, source, path.detail)


def effective_groups(clients: AzureClients, nic_id: str, timeout: float) -> list[dict[str, Any]]:
    parts = nic_id.strip("/").split("/")
    if len(parts) != 8 or parts[6].lower() != "networkinterfaces":
        raise PermanentError(f"{nic_id} is not a network interface id")
    with azure_errors(f"reading the effective security rules of {parts[7]}"):
        poller = clients.network(parts[1]).network_interfaces.begin_list_effective_network_security_groups(
            parts[3], parts[7]
        )
        result = poller.result(timeout=timeout)
    if result is None or not poller.done():
        raise PermanentError(f"the effective security rules of {parts[7]} were not ready within {timeout:.0f} s")
    # The SDK's models are mappings with the REST wire names (camelCase), which `evaluate` reads.
    return [dict(group.as_dict()) for group in result.value or []]


def _jit_ports(clients: AzureClients, vm: VmId) -> frozenset[int]:
    """The ports a just-in-time policy protects on this VM (empty when none does, or when JIT is unreadable)."""
    from azure.core.rest import HttpRequest

    # JitNetworkAccessPolicies_ListByResourceGroup: a policy lives in its VM's resource group, where the role is.
    url: str | None = (
        f"/subscriptions/{vm.subscription}/resourceGroups/{vm.resource_group}/providers/Microsoft.Security"
        f"/jitNetworkAccessPolicies?api-version={JIT_API_VERSION}"
    )
    ports: set[int] = set()
    try:
        while url:
            with azure_errors("reading the just-in-time access policies"):
                response = clients.network(vm.subscription).send_request(HttpRequest("GET", url))
                response.raise_for_status()
            page = response.json()
            ports |= policy_ports(page.get("value") or [], vm)
            url = page.get("nextLink")
    except PermanentError as exc:  # no Defender for Servers, or no read on it: not a reason to stop
        log.info("just-in-time policies unreadable", extra={"vm": str(vm), "reason": exc.reason})
    return frozenset(ports)


def policy_ports(policies: Iterable[Mapping[str, Any]], vm: VmId) -> set[int]:
    ports: set[int] = set()
    for policy in policies:
        for machine in (policy.get("properties") or {}).get("virtualMachines") or []:
            if str(machine.get("id", "")).lower() == str(vm).lower():
                ports |= {int(p["number"]) for p in machine.get("ports") or [] if "number" in p}
    return ports


def local_source(destination: str, port: int) -> str | None:
    """The local address this process reaches `destination` from (a UDP connect sends nothing)."""
    with contextlib.suppress(OSError, ValueError):
        family = socket.AF_INET6 if ipaddress.ip_address(destination).version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((destination, port))
            return str(probe.getsockname()[0])
    return None


def local_source_ports(proc_file: Path = LINUX_PORT_RANGE) -> tuple[int, int]:
    """The range this machine draws outgoing TCP source ports from (inclusive)."""
    with contextlib.suppress(OSError, ValueError):
        low, high = (int(part) for part in proc_file.read_text(encoding="ascii").split())
        if 0 < low <= high <= 65535:
            return low, high
    return DEFAULT_DYNAMIC_PORTS


# --- the pure evaluation ---------------------------------------------------------------------------------------


def evaluate(
    groups: Sequence[Mapping[str, Any]],
    source: str | None,
    destination: str,
    port: int,
    *,
    source_ports: tuple[int, int] = DEFAULT_DYNAMIC_PORTS,
) -> NetworkPath:
    """Open, blocked (with the rule) or unknown, for inbound TCP from `source` to `destination`:`port`, the
    connection's source port being any of `source_ports` (inclusive: the probe cannot choose it)."""
    if source is None:
        return NetworkPath(None, detail="the local source address is unknown")
    if not groups:
        return NetworkPath(True, source=source, detail="no network security group applies")
    allowed: list[str] = []
    for group in _subnet_first(groups):
        nsg = str((group.get("networkSecurityGroup") or {}).get("id", "")).rsplit("/", 1)[-1] or None
        verdict = _first_match(group.get("effectiveSecurityRules") or [], source, destination, port, source_ports)
        if verdict is None:
            return NetworkPath(None, nsg=nsg, source=source, detail=f"no rule in {nsg} decides for {source}")
        access, rule = verdict
        if access is None:
            return NetworkPath(None, rule, nsg, source=source, detail=f"{rule} in {nsg} may or may not match")
        if access != "allow":
            return NetworkPath(False, rule, nsg, source=source, detail=f"{rule} in {nsg} denies TCP {port}")
        allowed.append(f"{rule} in {nsg}")
    return NetworkPath(True, allowed[-1].split(" in ")[0], source=source, detail="allowed by " + ", ".join(allowed))


def _subnet_first(groups: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(groups, key=lambda g: 0 if (g.get("association") or {}).get("subnet") else 1)


def _first_match(
    rules: Iterable[Mapping[str, Any]], source: str, destination: str, port: int, source_ports: tuple[int, int]
) -> tuple[str | None, str] | None:
    inbound = [r for r in rules if str(r.get("direction", "")).lower() == "inbound"]
    for rule in sorted(inbound, key=lambda r: int(r.get("priority") or 0)):
        if str(rule.get("protocol", "")).lower() not in _TCP or not _port_matches(rule, port):
            continue
        source_match = _address_matches(rule, "source", source)
        destination_match = _address_matches(rule, "destination", destination)
        ports_match = _source_ports_match(rule, source_ports)
        if False in (source_match, destination_match, ports_match):
            continue
        name = str(rule.get("name", "?"))
        if None in (source_match, destination_match, ports_match):
            return None, name
        return str(rule.get("access", "")).lower(), name
    return None


def _port_matches(rule: Mapping[str, Any], port: int) -> bool:
    ranges = list(rule.get("destinationPortRanges") or []) or [rule.get("destinationPortRange") or "*"]
    for item in ranges:
        text = str(item).strip()
        if text == "*":
            return True
        low, _, high = text.partition("-")
        with contextlib.suppress(ValueError):
            if int(low) <= port <= int(high or low):
                return True
    return False


def _source_ports_match(rule: Mapping[str, Any], ephemeral: tuple[int, int]) -> bool | None:
    """True when the rule's source ports cover every port the probe may get, False when they cover none of them,
    None when some (or when a range cannot be read): whether it matches depends on the port the OS picks.

    Effective rules carry `sourcePortRange` ("0-65535", "456-456" in azure-rest-api-specs' example
    NetworkInterfaceEffectiveNSGList.json) and may carry `sourcePortRanges` (["0-65535"], as Learn's "Diagnose a
    virtual machine network traffic filter problem" shows); a list, when present, is the rule's full set."""
    items = list(rule.get("sourcePortRanges") or []) or [rule.get("sourcePortRange") or "*"]
    spans = [_port_range(str(item)) for item in items]
    if None in spans:
        return None
    low, high = ephemeral
    known = sorted(span for span in spans if span is not None)
    if not any(first <= high and last >= low for first, last in known):
        return False
    reached = low - 1  # the ranges may overlap each other: walk them in order, looking for a gap
    for first, last in known:
        if first > reached + 1:
            break
        reached = max(reached, last)
    return True if reached >= high else None


def _port_range(text: str) -> tuple[int, int] | None:
    """A port range as inclusive bounds ("*", "456", "100-400"); None when it is none of these."""
    text = text.strip()
    if text in ("*", ""):
        return 0, 65535
    low, _, high = text.partition("-")
    try:
        bounds = int(low), int(high or low)
    except ValueError:
        return None
    return bounds if 0 <= bounds[0] <= bounds[1] <= 65535 else None


def _address_matches(rule: Mapping[str, Any], side: str, address: str) -> bool | None:
    """True / False, or None when the rule names a tag Azure did not expand for us."""
    prefixes = list(rule.get(f"expanded{side.title()}AddressPrefix") or [])
    if not prefixes:
        prefixes = list(rule.get(f"{side}AddressPrefixes") or []) or [rule.get(f"{side}AddressPrefix") or "*"]
    ip = ipaddress.ip_address(address)
    unknown = False
    for prefix in prefixes:
        text = str(prefix).strip()
        if text.lower() in _ANY:
            return True
        try:
            if ip in ipaddress.ip_network(text, strict=False):
                return True
        except ValueError:
            unknown = True  # a service tag or application security group left unexpanded
    return None if unknown else False
