"""The Azure RBAC actions the product needs, in one place.

Every Azure Resource Manager call the product makes has a name (the same names the local emulator writes into
its request log) and exactly one RBAC action that authorises it. The custom role "RDP Remediation Operator" in
`infra/modules/roles.bicep` must hold `ROLE_ACTIONS` and nothing else: a test compares the two, and another
derives the operations from the emulator's request log, so a new call cannot ship without its permission and a
permission cannot outlive the call that needed it.

Log Analytics queries go to a different API (the workspace's query endpoint) and are authorised on the
workspace, so they have their own, separate role: `WORKSPACE_OPERATION_ACTIONS` / `WORKSPACE_ROLE_ACTIONS`.

The Activity Log is listed per subscription (`GET /subscriptions/{id}/providers/Microsoft.Insights/eventtypes/
management/values`, Microsoft Learn "Activity Logs - List"; the action "List Activity Log events (management
events) in a subscription", Microsoft Learn "Roles, permissions, and security in Azure Monitor"), while the
operator role may be assigned on a resource group only. So its action is a third role, assigned on the
subscription of every target scope: `SUBSCRIPTION_OPERATION_ACTIONS` / `SUBSCRIPTION_ROLE_ACTIONS`.
"""

from __future__ import annotations

from collections.abc import Iterable

# Operation name (as logged by the emulator) -> the RBAC action Azure checks for it.
OPERATION_ACTIONS: dict[str, str] = {
    "getVm": "Microsoft.Compute/virtualMachines/read",
    "listVms": "Microsoft.Compute/virtualMachines/read",
    "instanceView": "Microsoft.Compute/virtualMachines/instanceView/read",
    "runCommand": "Microsoft.Compute/virtualMachines/runCommand/action",
    "restart": "Microsoft.Compute/virtualMachines/restart/action",
    # Run Command and restart are long-running: the client polls the status URL Compute hands back
    # (/subscriptions/ID/providers/Microsoft.Compute/locations/REGION/operations/ID) until the LRO ends.
    "operationStatus": "Microsoft.Compute/locations/operations/read",
    "getNic": "Microsoft.Network/networkInterfaces/read",
    # The network path to a VM, read before it is called broken: the NIC's effective security rules (a
    # long-running POST whose result is read from the Location Network hands back) and just-in-time policies.
    "effectiveNsgs": "Microsoft.Network/networkInterfaces/effectiveNetworkSecurityGroups/action",
    "networkOperationResult": "Microsoft.Network/locations/operationResults/read",
    "listJitPolicies": "Microsoft.Security/locations/jitNetworkAccessPolicies/read",
    # Resource Graph returns only the resources the caller may read; this action lets it submit the query.
    "resourceGraph": "Microsoft.ResourceGraph/resources/read",
    # Closing (or commenting on) the alert that started a request: Alerts Management `changestate`.
    "alertChangeState": "Microsoft.AlertsManagement/alerts/changestate/action",
    # Before acting on an alert, the worker reads it back: an alert Azure Monitor never raised runs nothing.
    "getAlert": "Microsoft.AlertsManagement/alerts/read",
}

# The custom role's `actions`: sorted, each once.
ROLE_ACTIONS: tuple[str, ...] = tuple(sorted(set(OPERATION_ACTIONS.values())))

# The evidence query reads the System event log that VMs send to the `Event` table. Reading the workspace,
# running a query and reading that one table is all it needs: no other table, no shared keys, no settings.
WORKSPACE_OPERATION_ACTIONS: dict[str, tuple[str, ...]] = {
    "logsQuery": (
        "Microsoft.OperationalInsights/workspaces/read",
        "Microsoft.OperationalInsights/workspaces/query/read",
        "Microsoft.OperationalInsights/workspaces/query/Event/read",
    ),
}

WORKSPACE_ROLE_ACTIONS: tuple[str, ...] = tuple(
    sorted({action for actions in WORKSPACE_OPERATION_ACTIONS.values() for action in actions})
)

# Was a restart accepted? The subscription's Activity Log, read for one correlation id and a time window: granted
# on the subscription (above), never only on a resource group.
SUBSCRIPTION_OPERATION_ACTIONS: dict[str, tuple[str, ...]] = {
    "activityLog": ("Microsoft.Insights/eventtypes/values/read",),
}

SUBSCRIPTION_ROLE_ACTIONS: tuple[str, ...] = tuple(
    sorted({action for actions in SUBSCRIPTION_OPERATION_ACTIONS.values() for action in actions})
)


class UnknownOperation(KeyError):
    """An operation name with no RBAC action on record: add it to `OPERATION_ACTIONS` first."""


def actions_for(operations: Iterable[str]) -> frozenset[str]:
    """The RBAC actions that authorise `operations` (all three roles alike).

    Raises UnknownOperation for a name neither table knows, so a new call cannot slip past the role check.
    """
    actions: set[str] = set()
    for operation in operations:
        if operation in OPERATION_ACTIONS:
            actions.add(OPERATION_ACTIONS[operation])
        elif operation in WORKSPACE_OPERATION_ACTIONS:
            actions.update(WORKSPACE_OPERATION_ACTIONS[operation])
        elif operation in SUBSCRIPTION_OPERATION_ACTIONS:
            actions.update(SUBSCRIPTION_OPERATION_ACTIONS[operation])
        else:
            raise UnknownOperation(operation)
    return frozenset(actions)
