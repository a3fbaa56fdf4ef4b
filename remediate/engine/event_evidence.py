"""The Log Analytics evidence the classifier reads for one VM: optional, and always with its source named.

The workspace is read only when one is configured (`RDPR_LOG_WORKSPACE_ID`); a VM's events are one cheap query
(`rdp_events_vm.kql`: this VM's `_ResourceId`, the last hour). Without a workspace, or when the workspace cannot
be read, the classifier runs on the guest's own event counts alone, and the source says which of these it was:
evidence from Log Analytics is a help to naming a cause, never a condition for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from remediate.model import RemediationError, VmId

if TYPE_CHECKING:
    from remediate.azure.clients import AzureClients
    from remediate.settings import Settings

# One hour: the storm threshold is a rate per hour (as the guest counts its own failed logons), and events 1057,
# 1058 and 36870 recur with every connection the listener fails, so a live fault shows within the hour.
VM_EVENT_HOURS = 1
_GUEST_ONLY = "events from the guest's own logs only"


@dataclass(frozen=True)
class VmEvents:
    counts: dict[int, int]  # event id -> count in the window
    source: str  # where the counts came from, or why there are none


def read_vm_events(clients: AzureClients, settings: Settings, vm: VmId) -> VmEvents:
    """This VM's events of the last hour from the configured workspace, or none with the reason."""
    workspace = settings.log_workspace_id
    if not workspace:
        return VmEvents({}, f"no Log Analytics workspace configured (RDPR_LOG_WORKSPACE_ID): {_GUEST_ONLY}")
    from remediate.azure.logs import query_vm_events

    try:
        evidence = query_vm_events(clients, workspace, vm, VM_EVENT_HOURS)
    except RemediationError as exc:  # throttled, refused, unknown workspace: classify without it, and say so
        return VmEvents({}, f"Log Analytics workspace {workspace} unreadable ({exc.reason}): {_GUEST_ONLY}")
    counts: dict[int, int] = {}
    for item in evidence:
        counts[item.event_id] = counts.get(item.event_id, 0) + item.count
    seen = ", ".join(f"{number} x{count}" for number, count in sorted(counts.items())) or "no event"
    return VmEvents(counts, f"Log Analytics workspace {workspace}, last {VM_EVENT_HOURS} h: {seen}")
