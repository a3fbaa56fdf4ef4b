"""What Azure knows about the network path to a VM: the NIC's effective security rules and JIT policies.

Two Azure APIs, as the product reads them before it calls a VM broken:

* `POST .../networkInterfaces/{nic}/effectiveNetworkSecurityGroups` is a long-running operation (azure-rest-api-
  specs, Microsoft.Network, `NetworkInterfaces_ListEffectiveNetworkSecurityGroups`: 200 or 202,
  `x-ms-long-running-operation-options: final-state-via: location`). The emulator always answers 202 with a
  `Location` under `/providers/Microsoft.Network/locations/{region}/operationResults/{id}`, which answers 202 once
  (still running) and then 200 with the result. The body's shape follows the recorded output in Microsoft Learn
  ("Diagnose a virtual machine network traffic filter problem" and "View effective security rules"): one entry per
  NSG on the way (`association.subnet` or `association.networkInterface`), each with `effectiveSecurityRules` of
  `securityRules/<name>` and `defaultSecurityRules/<name>`, port ranges as "3389-3389" / "0-65535", protocol
  "Tcp" / "All", service tags with their `expandedSourceAddressPrefix`.
* `GET /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Security/jitNetworkAccessPolicies` (api-version
  2020-01-01, `JitNetworkAccessPolicies_ListByResourceGroup` in the spec's jitNetworkAccessPolicies.json), each
  policy shaped like the example `JitNetworkAccessPolicies/GetJitNetworkAccessPoliciesSubscription_example.json`.

The emulator's virtual network is 127.0.0.0/8 (every VM listens on a loopback address and the product calls from
127.0.0.1): the default rule AllowVnetInBound therefore lets the product in unless a rule of higher priority
denies it, as in Azure. A denied path cannot drop SYNs on loopback: the VM's listener then accepts and stays
silent (sim/rdp.py), and it is these rules, read through the API, that tell the product why.
"""

from __future__ import annotations

import ipaddress
import threading
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim.fleet import VirtualMachine
    from sim.server import Call, Emulator
    from sim.transport import Response

VNET_PREFIXES = ("127.0.0.0/8",)
LOAD_BALANCER_PREFIX = "168.63.129.16/32"  # the AzureLoadBalancer tag's address (Learn: "What is IP 168.63.129.16")
JIT_API_VERSION = "2020-01-01"

_lock = threading.Lock()
_pending: dict[str, tuple[int, dict[str, Any]]] = {}  # operation id -> (polls left before done, result)


def nsg_id(vm: VirtualMachine) -> str:
    return (
        f"/subscriptions/{vm.subscription_id}/resourceGroups/{vm.resource_group}"
        f"/providers/Microsoft.Network/networkSecurityGroups/{vm.name}-nsg"
    )


def _source_ports(ranges: list[str] | None) -> dict[str, Any]:
    """A rule's source ports as effective rules show them: one range as `sourcePortRange` ("0-65535", or "456-456"
    in azure-rest-api-specs' example NetworkInterfaceEffectiveNSGList.json), several as `sourcePortRanges` (the list
    Learn's "Diagnose a virtual machine network traffic filter problem" shows beside `sourcePortRange`)."""
    if not ranges:
        return {"sourcePortRange": "0-65535"}
    if len(ranges) == 1:
        return {"sourcePortRange": ranges[0]}
    return {"sourcePortRanges": list(ranges)}


def _rule(name: str, priority: int, access: str, direction: str, **fields: Any) -> dict[str, Any]:
    source = fields.get("source", "*")
    expanded = {"VirtualNetwork": list(VNET_PREFIXES), "AzureLoadBalancer": [LOAD_BALANCER_PREFIX]}
    return {
        "name": name,
        "protocol": fields.get("protocol", "All"),
        **_source_ports(fields.get("source_ports")),
        "destinationPortRange": fields.get("ports", "0-65535"),
        "sourceAddressPrefix": source,
        "destinationAddressPrefix": fields.get("destination", "*"),
        "expandedSourceAddressPrefix": expanded.get(source, []),
        "expandedDestinationAddressPrefix": [],
        "access": access,
        "priority": priority,
        "direction": direction,
    }


# Every NSG carries these (Learn: "Network security groups", default security rules).
def _default_rules() -> list[dict[str, Any]]:
    return [
        _rule("defaultSecurityRules/AllowVnetInBound", 65000, "Allow", "Inbound", source="VirtualNetwork"),
        _rule(
            "defaultSecurityRules/AllowAzureLoadBalancerInBound", 65001, "Allow", "Inbound", source="AzureLoadBalancer"
        ),
        _rule("defaultSecurityRules/DenyAllInBound", 65500, "Deny", "Inbound"),
        _rule("defaultSecurityRules/AllowVnetOutBound", 65000, "Allow", "Outbound", destination="VirtualNetwork"),
        _rule("defaultSecurityRules/AllowInternetOutBound", 65001, "Allow", "Outbound", destination="Internet"),
        _rule("defaultSecurityRules/DenyAllOutBound", 65500, "Deny", "Outbound"),
    ]


def effective_groups(vm: VirtualMachine, rdp_port: int) -> dict[str, Any]:
    """The effectiveNetworkSecurityGroups result for the VM's NIC: one NSG associated with the NIC."""
    custom = [
        _rule(
            f"securityRules/{rule['name']}",
            int(rule["priority"]),
            rule["access"],
            "Inbound",
            protocol=rule.get("protocol", "Tcp"),
            ports=f"{rdp_port}-{rdp_port}",
            source=rule.get("source", "*"),
            source_ports=rule.get("source_ports"),
        )
        for rule in vm.nsg_rules
    ]
    return {
        "value": [
            {
                "networkSecurityGroup": {"id": nsg_id(vm)},
                "association": {"networkInterface": {"id": vm.nic_id}},
                "effectiveSecurityRules": custom + _default_rules(),
            }
        ]
    }


def jit_policy(vm: VirtualMachine, rdp_port: int) -> dict[str, Any]:
    """A JIT policy naming the VM's protected ports (spec example GetJitNetworkAccessPoliciesSubscription)."""
    return {
        "kind": "Basic",
        "properties": {
            "virtualMachines": [
                {
                    "id": vm.resource_id,
                    "ports": [
                        {
                            "number": rdp_port,
                            "protocol": "*",
                            "allowedSourceAddressPrefix": "*",
                            "maxRequestAccessDuration": "PT3H",
                        }
                    ],
                }
            ],
            "requests": [],
            "provisioningState": "Succeeded",
        },
        "id": (
            f"/subscriptions/{vm.subscription_id}/resourceGroups/{vm.resource_group}/providers/Microsoft.Security"
            f"/locations/{vm.location}/jitNetworkAccessPolicies/default"
        ),
        "name": "default",
        "type": "Microsoft.Security/locations/jitNetworkAccessPolicies",
        "location": vm.location,
    }


PRODUCT_ADDRESS = ipaddress.ip_address("127.0.0.1")  # where the product calls from in the emulator


def blocks_product(vm: VirtualMachine, source_port: int | None = None) -> bool:
    """Whether the VM's own rules deny the product's connection on 3389 before any allows it (priority order).

    A rule limited to source ports (`source_ports`, e.g. ["456"] or ["1024-2047"]) matches only a connection
    from one of them, as NSGs match the source port (Learn, "Network security groups": source port range); the
    probe's port is the ephemeral one the listener saw (None: unknown, so such a rule matches nothing)."""
    for rule in sorted(vm.nsg_rules, key=lambda r: int(r["priority"])):
        source = str(rule.get("source", "*"))
        covers = source == "*" or PRODUCT_ADDRESS in ipaddress.ip_network(source, strict=False)
        if covers and _port_in(source_port, rule.get("source_ports")):
            return str(rule["access"]).lower() == "deny"
    return False


def _port_in(port: int | None, ranges: list[str] | None) -> bool:
    if not ranges:
        return True
    if port is None:
        return False
    for text in ranges:
        low, _, high = str(text).partition("-")
        if int(low) <= port <= int(high or low):
            return True
    return False


# --- handlers (registered in sim.server's route table) -----------------------------------------------------------


def start_effective_groups(emulator: Emulator, call: Call, groups: tuple[str, ...]) -> Response:
    from sim.server import not_found
    from sim.transport import Response

    sub, group, name = groups[:3]
    emulator._index.require_group(sub, group)
    vm = emulator._index.nic(sub, group, name)
    if vm is None:
        raise not_found("Microsoft.Network/networkInterfaces", name, group)
    with emulator.fleet.lock:
        result = effective_groups(vm, emulator.rdp_port)
        location = vm.location
    operation = str(uuid.uuid4())
    with _lock:
        _pending[operation] = (1, result)
    url = (
        f"{emulator.arm_url}/subscriptions/{vm.subscription_id}/providers/Microsoft.Network/locations/{location}"
        f"/operationResults/{operation}?api-version={call.api_version}"
    )
    return Response(202, b"", {"Location": url})


def operation_result(emulator: Emulator, call: Call, groups: tuple[str, ...]) -> Response:
    from sim.server import ArmError, json_response
    from sim.transport import Response

    operation = groups[2]
    with _lock:
        entry = _pending.get(operation)
        if entry is not None and entry[0] > 0:
            _pending[operation] = (entry[0] - 1, entry[1])
    if entry is None:
        raise ArmError(404, "OperationNotFound", f"The operation '{operation}' was not found.")
    if entry[0] > 0:
        return Response(202, b"", {"Location": f"{emulator.arm_url}{call.raw_path}?api-version={call.api_version}"})
    return json_response(200, entry[1])


def list_jit_policies(emulator: Emulator, call: Call, groups: tuple[str, ...]) -> Response:
    from sim.server import ArmError, json_response

    if call.api_version != JIT_API_VERSION:
        raise ArmError(
            400,
            "InvalidApiVersionParameter",
            f"The api-version '{call.api_version}' is invalid. The supported versions are '{JIT_API_VERSION}'.",
        )
    emulator._index.require_group(groups[0], groups[1])
    with emulator.fleet.lock:
        policies = [
            jit_policy(vm, emulator.rdp_port) for vm in emulator._index.in_group(groups[0], groups[1]) if vm.jit_rdp
        ]
    return json_response(200, {"value": policies})


_S = r"([^/]+)"
ROUTES: list[tuple[str, str, str, Any]] = [
    (
        "POST",
        (
            rf"/subscriptions/{_S}/resourcegroups/{_S}/providers/microsoft\.network/networkinterfaces/{_S}"
            r"/effectivenetworksecuritygroups"
        ),
        "effectiveNsgs",
        start_effective_groups,
    ),
    (
        "GET",
        rf"/subscriptions/{_S}/providers/microsoft\.network/locations/{_S}/operationresults/{_S}",
        "networkOperationResult",
        operation_result,
    ),
    (
        "GET",
        rf"/subscriptions/{_S}/resourcegroups/{_S}/providers/microsoft\.security/jitnetworkaccesspolicies",
        "listJitPolicies",
        list_jit_policies,
    ),
]
