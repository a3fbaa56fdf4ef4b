"""The ARM JSON of the emulator's resources: virtual machines, instance views, NICs, operation results.

Shapes follow the Compute and Network REST API references closely enough that the unmodified
`azure-mgmt-compute` / `azure-mgmt-network` models deserialize every field the product reads. Callers hold the
fleet lock while rendering (the result is plain data, serialized after the lock is released).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sim.fleet import Nic, VirtualMachine
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


def vm_json(
    vm: VirtualMachine,
    provisioning: str,
    instance_view: dict[str, Any] | None = None,
    *,
    secondary_nics: int = 0,
) -> dict[str, Any]:
    """`Microsoft.Compute/virtualMachines` GET body; with `instance_view` when `$expand=instanceView`.

    Shaped after azure-rest-api-specs specification/compute/resource-manager/Microsoft.Compute/ComputeRP/stable/
    2024-07-01/examples/virtualMachineExamples/VirtualMachine_Get.json: explicit nulls, `zones`, `identity`,
    `securityProfile`, `resources` (the VM's extensions), data disks, and several NICs whose primary one need not
    come first (the Compute REST reference: NetworkInterfaceReference `properties.primary` "specifies the primary
    network interface in case the virtual machine has more than 1 network interface").
    """
    group_prefix = f"/subscriptions/{vm.subscription_id}/resourceGroups/{vm.resource_group}"
    nics = [
        {
            "id": f"{group_prefix}/providers/Microsoft.Network/networkInterfaces/{nic.name}",
            "properties": {"primary": nic.primary},
        }
        for nic in vm.nics(secondary_nics)
    ]
    windows = vm.os_type == "Windows"
    properties: dict[str, Any] = {
        "vmId": vm.vm_uuid,
        "hardwareProfile": {"vmSize": vm.vm_size},
        "securityProfile": {
            "uefiSettings": {"secureBootEnabled": True, "vTpmEnabled": True},
            "securityType": "TrustedLaunch",
        },
        "storageProfile": {
            "imageReference": {
                "publisher": "MicrosoftWindowsServer" if windows else "Canonical",
                "offer": "WindowsServer" if windows else "ubuntu-24_04-lts",
                "sku": "2022-datacenter-azure-edition" if windows else "server",
                "version": "latest",
                "exactVersion": "20348.2700.240906" if windows else "24.04.202409120",
            },
            "osDisk": {
                "osType": vm.os_type,
                "name": f"{vm.name}_OsDisk_1",
                "createOption": "FromImage",
                "caching": "ReadWrite",
                "managedDisk": {
                    "storageAccountType": "Premium_LRS",
                    "id": f"{group_prefix}/providers/Microsoft.Compute/disks/{vm.name}_OsDisk_1",
                },
                "deleteOption": "Delete",
                "diskSizeGB": 127,
            },
            "dataDisks": [],
            "diskControllerType": "SCSI",
        },
        "osProfile": {
            "computerName": vm.guest.computer_name,
            "adminUsername": "azureadmin",
            "windowsConfiguration": {
                "provisionVMAgent": True,
                "enableAutomaticUpdates": True,
                "patchSettings": {"patchMode": "AutomaticByOS", "assessmentMode": "ImageDefault"},
            }
            if windows
            else None,
            "secrets": [],
            "allowExtensionOperations": True,
            "requireGuestProvisionSignal": True,
        },
        "networkProfile": {"networkInterfaces": nics},
        "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}},
        "licenseType": None,
        "provisioningState": provisioning,
        "timeCreated": CREATED,
    }
    if instance_view is not None:
        properties["instanceView"] = instance_view
    return {
        "name": vm.name,
        "id": vm.resource_id,
        "type": "Microsoft.Compute/virtualMachines",
        "location": vm.location,
        "tags": dict(vm.tags),
        "zones": ["1"],
        "identity": {
            "type": "SystemAssigned",
            "principalId": vm.vm_uuid,
            "tenantId": "00000000-0000-4000-8000-0000000000aa",
        },
        "properties": properties,
        "resources": [
            {
                "id": f"{vm.resource_id}/extensions/AzureMonitorWindowsAgent",
                "name": "AzureMonitorWindowsAgent",
                "type": "Microsoft.Compute/virtualMachines/extensions",
                "location": vm.location,
                "properties": {
                    "autoUpgradeMinorVersion": True,
                    "provisioningState": "Succeeded",
                    "publisher": "Microsoft.Azure.Monitor",
                    "type": "AzureMonitorWindowsAgent",
                    "typeHandlerVersion": "1.0",
                    "enableAutomaticUpgrade": True,
                },
            }
        ]
        if windows
        else [],
        "etag": '"4"',
    }


def instance_view_json(
    vm: VirtualMachine, provisioning: str, now: dt.datetime, heartbeat: float = 0.0
) -> dict[str, Any]:
    """`.../instanceView` body, shaped after azure-rest-api-specs Microsoft.Compute ComputeRP stable 2024-07-01
    examples/virtualMachineExamples/VirtualMachine_Get_InstanceView.json: statuses, the agent with its
    extension handlers, disks, boot diagnostics, extensions and patch status.

    What ARM reports is not always the guest's truth: while a rebooted guest boots after an operation that
    completed at once, the platform reports the VM running (`reported_power`) and the agent's last `Ready`,
    with its old time, lingers for a while before the agent shows as not ready.
    """
    power = vm.reported_power or vm.power_state
    statuses = [
        {
            "code": f"ProvisioningState/{provisioning.lower()}",
            "level": "Info",
            "displayStatus": "Provisioning succeeded" if provisioning == "Succeeded" else provisioning,
            "time": _iso(now),
        },
        {
            "code": f"PowerState/{power}",
            "level": "Info",
            "displayStatus": _POWER_DISPLAY.get(power, power),
        },
    ]
    windows = vm.os_type == "Windows"
    view: dict[str, Any] = {
        "platformUpdateDomain": 0,
        "platformFaultDomain": 0,
        "hyperVGeneration": "V2",
        "disks": [
            {
                "name": f"{vm.name}_OsDisk_1",
                "statuses": [
                    {
                        "code": "ProvisioningState/succeeded",
                        "level": "Info",
                        "displayStatus": "Provisioning succeeded",
                        "time": CREATED,
                    }
                ],
            }
        ],
        "bootDiagnostics": {},
        "isVMInStandbyPool": False,
        "statuses": statuses,
    }
    if power in _GUEST_VISIBLE:
        view["computerName"] = vm.guest.computer_name
        view["osName"] = "Windows Server 2022 Datacenter Azure Edition" if windows else "ubuntu"
        view["osVersion"] = vm.guest.os_build if windows else "24.04"
        view["vmAgent"] = _agent(vm, now, heartbeat)
        view["extensions"] = _extensions(vm) if windows else []
        view["patchStatus"] = _patch_status() if windows else None
    return view


def _agent(vm: VirtualMachine, now: dt.datetime, heartbeat: float) -> dict[str, Any]:
    lingering = now.timestamp() < vm.agent_linger_until
    reported = vm.agent_time
    if vm.agent_ready and heartbeat > 0:  # a running agent reports again every `heartbeat` seconds
        reported += ((now.timestamp() - vm.agent_time) // heartbeat) * heartbeat
    if vm.agent_ready or lingering:
        return {
            "vmAgentVersion": "2.7.41491.1102",
            "statuses": [
                {
                    "code": "ProvisioningState/succeeded",
                    "level": "Info",
                    "displayStatus": "Ready",
                    "message": "GuestAgent is running and processing the extensions.",
                    "time": _iso(dt.datetime.fromtimestamp(reported, dt.UTC)),  # when it last reported
                }
            ],
            "extensionHandlers": [
                {
                    "type": "Microsoft.Azure.Monitor.AzureMonitorWindowsAgent",
                    "typeHandlerVersion": "1.30.0.0",
                    "status": {
                        "code": "ProvisioningState/succeeded",
                        "level": "Info",
                        "displayStatus": "Ready",
                    },
                }
            ],
        }
    # The shape of an agent that stopped reporting: version unknown, status Unavailable
    # (azure-cli vm test recordings; Microsoft Learn "Troubleshooting checklist" for Azure VM Guest Agent).
    return {
        "vmAgentVersion": "Unknown",
        "statuses": [
            {
                "code": "ProvisioningState/Unavailable",
                "level": "Warning",
                "displayStatus": "Not Ready",
                "message": "VM Agent is unresponsive.",
                "time": _iso(now),
            }
        ],
        "extensionHandlers": [],
    }


def _extensions(vm: VirtualMachine) -> list[dict[str, Any]]:
    return [
        {
            "name": "AzureMonitorWindowsAgent",
            "type": "Microsoft.Azure.Monitor.AzureMonitorWindowsAgent",
            "typeHandlerVersion": "1.30.0.0",
            "statuses": [
                {
                    "code": "ProvisioningState/succeeded",
                    "level": "Info",
                    "displayStatus": "Provisioning succeeded",
                    "message": f"ExtensionOperation:enable. Status:Success on {vm.guest.computer_name}",
                }
            ],
        }
    ]


def _patch_status() -> dict[str, Any]:
    return {
        "availablePatchSummary": {
            "status": "Succeeded",
            "assessmentActivityId": "68f8b292-dfc2-4646-9781-33cc88631968",
            "rebootPending": False,
            "criticalAndSecurityPatchCount": 0,
            "otherPatchCount": 1,
            "startTime": "2024-05-06T09:02:04.2556154Z",
            "lastModifiedTime": "2024-05-06T09:02:04.2556154Z",
            "error": None,
        },
        "configurationStatuses": [
            {
                "code": "PatchModeConfigurationState/Ready",
                "level": "Info",
                "displayStatus": "Status_PatchModeConfigurationState_Ready",
                "time": "2024-05-06T09:02:04.2556154Z",
            }
        ],
    }


def nic_json(vm: VirtualMachine, nic: Nic) -> dict[str, Any]:
    """`Microsoft.Network/networkInterfaces` GET body (azure-rest-api-specs specification/network/resource-manager/
    Microsoft.Network/stable/2024-05-01/examples/NetworkInterfaceGet.json); the primary address is the VM's
    loopback address, the others are addresses where nothing listens, and the primary IP configuration need not
    come first."""
    group_prefix = f"/subscriptions/{vm.subscription_id}/resourceGroups/{vm.resource_group}"
    nic_id = f"{group_prefix}/providers/Microsoft.Network/networkInterfaces/{nic.name}"
    vnet = f"{group_prefix}/providers/Microsoft.Network/virtualNetworks/vnet-sim"
    return {
        "id": nic_id,
        "name": nic.name,
        "type": "Microsoft.Network/networkInterfaces",
        "location": vm.location,
        "etag": f'W/"{vm.vm_uuid}"',
        "properties": {
            "provisioningState": "Succeeded",
            "resourceGuid": vm.vm_uuid,
            "ipConfigurations": [
                {
                    "id": f"{nic_id}/ipConfigurations/{config.name}",
                    "name": config.name,
                    "etag": f'W/"{vm.vm_uuid}"',
                    "type": "Microsoft.Network/networkInterfaces/ipConfigurations",
                    "properties": {
                        "provisioningState": "Succeeded",
                        "privateIPAddress": config.address,
                        "privateIPAllocationMethod": "Dynamic",
                        "privateIPAddressVersion": "IPv4",
                        "primary": config.primary,
                        "publicIPAddress": None,
                        "subnet": {"id": f"{vnet}/subnets/default"},
                    },
                }
                for config in nic.ip_configurations
            ],
            "dnsSettings": {"dnsServers": [], "appliedDnsServers": [], "internalDomainNameSuffix": "sim.internal"},
            "macAddress": "00-0D-3A-1B-C7-21",
            "virtualMachine": {"id": vm.resource_id},
            "primary": nic.primary,
            "enableAcceleratedNetworking": False,
            "enableIPForwarding": False,
            "networkSecurityGroup": None,
            "nicType": "Standard",
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
