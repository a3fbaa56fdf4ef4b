"""The ARM JSON of the emulator's resources: virtual machines, instance views, NICs, operation results.

Shapes follow the Compute and Network REST API references closely enough that the unmodified
`azure-mgmt-compute` / `azure-mgmt-network` models deserialize every field the product reads. Callers hold the
fleet lock while rendering (the result is plain data, serialized after the lock is released).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sim.fleet import VirtualMachine
from sim.operations import Operation

CREATED = "2024-05-06T08:30:00.0000000+00:00"  # every simulated VM was created at the same, fixed time

_POWER_DISPLAY = {
    "running": "VM running",
    "stopping": "VM stopping",
    "stopped": "VM stopped",
    "starting": "VM starting",
    "deallocating": "VM deallocating",
    "deallocated": "VM deallocated",
}
# Azure reports no guest information (agent, computer name, OS) for a VM that is not booted.
_GUEST_VISIBLE = {"running", "stopping", "starting"}


def _iso(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).isoformat()


def vm_json(vm: VirtualMachine, provisioning: str, instance_view: dict[str, Any] | None = None) -> dict[str, Any]:
    """`Microsoft.Compute/virtualMachines` GET body; with `instance_view` when `$expand=instanceView`.

    Only the properties the product reads, plus the identifying ones: Azure returns many more (image, disks,
    diagnostics), and each field costs the SDK's model deserialization time on every VM of a large list.
    """
    properties: dict[str, Any] = {
        "vmId": vm.vm_uuid,
        "hardwareProfile": {"vmSize": vm.vm_size},
        "storageProfile": {
            "osDisk": {"osType": vm.os_type, "name": f"{vm.name}_OsDisk_1", "createOption": "FromImage"}
        },
        "osProfile": {"computerName": vm.guest.computer_name, "adminUsername": "azureadmin"},
        "networkProfile": {"networkInterfaces": [{"id": vm.nic_id, "properties": {"primary": True}}]},
        "provisioningState": provisioning,
        "timeCreated": CREATED,
    }
    if instance_view is not None:
        properties["instanceView"] = instance_view
    return {
        "id": vm.resource_id,
        "name": vm.name,
        "type": "Microsoft.Compute/virtualMachines",
        "location": vm.location,
        "tags": dict(vm.tags),
        "properties": properties,
    }


def instance_view_json(vm: VirtualMachine, provisioning: str, now: dt.datetime) -> dict[str, Any]:
    """`.../instanceView` body: provisioning and power statuses, plus the agent and guest when booted."""
    statuses = [
        {
            "code": f"ProvisioningState/{provisioning.lower()}",
            "level": "Info",
            "displayStatus": "Provisioning succeeded" if provisioning == "Succeeded" else provisioning,
            "time": _iso(now),
        },
        {
            "code": f"PowerState/{vm.power_state}",
            "level": "Info",
            "displayStatus": _POWER_DISPLAY.get(vm.power_state, vm.power_state),
        },
    ]
    view: dict[str, Any] = {"hyperVGeneration": "V2", "statuses": statuses}
    if vm.power_state in _GUEST_VISIBLE:
        windows = vm.os_type == "Windows"
        view["computerName"] = vm.guest.computer_name
        view["osName"] = "Windows Server 2022 Datacenter Azure Edition" if windows else "ubuntu"
        view["osVersion"] = vm.guest.os_build if windows else "22.04"
        view["vmAgent"] = _agent(vm.agent_ready, now)
    return view


def _agent(ready: bool, now: dt.datetime) -> dict[str, Any]:
    status = (
        {
            "code": "ProvisioningState/succeeded",
            "level": "Info",
            "displayStatus": "Ready",
            "message": "GuestAgent is running and processing the extensions.",
            "time": _iso(now),
        }
        if ready
        else {
            "code": "ProvisioningState/Unavailable",
            "level": "Warning",
            "displayStatus": "Not Ready",
            "message": "VM Agent is unresponsive.",
            "time": _iso(now),
        }
    )
    return {"vmAgentVersion": "2.7.41491.1102", "statuses": [status]}


def nic_json(vm: VirtualMachine) -> dict[str, Any]:
    """`Microsoft.Network/networkInterfaces` GET body; the private IP is the VM's loopback address."""
    vnet = (
        f"/subscriptions/{vm.subscription_id}/resourceGroups/{vm.resource_group}"
        "/providers/Microsoft.Network/virtualNetworks/vnet-sim"
    )
    return {
        "id": vm.nic_id,
        "name": vm.nic_name,
        "type": "Microsoft.Network/networkInterfaces",
        "location": vm.location,
        "etag": f'W/"{vm.vm_uuid}"',
        "properties": {
            "provisioningState": "Succeeded",
            "resourceGuid": vm.vm_uuid,
            "ipConfigurations": [
                {
                    "id": f"{vm.nic_id}/ipConfigurations/ipconfig1",
                    "name": "ipconfig1",
                    "type": "Microsoft.Network/networkInterfaces/ipConfigurations",
                    "properties": {
                        "provisioningState": "Succeeded",
                        "privateIPAddress": vm.private_ip,
                        "privateIPAllocationMethod": "Dynamic",
                        "privateIPAddressVersion": "IPv4",
                        "primary": True,
                        "subnet": {"id": f"{vnet}/subnets/default"},
                    },
                }
            ],
            "virtualMachine": {"id": vm.resource_id},
            "primary": True,
            "enableAcceleratedNetworking": False,
            "enableIPForwarding": False,
        },
    }


def run_command_result(op: Operation) -> dict[str, Any]:
    """The final `RunCommandResult`: StdOut then StdErr, each already cut to its last 4096 bytes."""
    return {
        "value": [
            {
                "code": "ComponentStatus/StdOut/succeeded",
                "level": "Info",
                "displayStatus": "Provisioning succeeded",
                "message": op.stdout,
            },
            {
                "code": "ComponentStatus/StdErr/succeeded",
                "level": "Info",
                "displayStatus": "Provisioning succeeded",
                "message": op.stderr,
            },
        ]
    }


def status_document(op: Operation, started: dt.datetime, ended: dt.datetime | None) -> dict[str, Any]:
    """The `Azure-AsyncOperation` status document."""
    doc: dict[str, Any] = {"name": op.id, "status": op.status, "startTime": _iso(started)}
    if ended is not None:
        doc["endTime"] = _iso(ended)
    if op.status == "Succeeded" and op.kind == "runCommand":
        doc["properties"] = {"output": run_command_result(op)}
    if op.error is not None:
        doc["error"] = dict(op.error)
    return doc
