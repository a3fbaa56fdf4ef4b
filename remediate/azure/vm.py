"""The VM operations the engine performs: read state, find the private IP, restart, wait until ready."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from remediate.azure.errors import azure_errors
from remediate.model import PermanentError, RemediationError, TransientError, VmId

if TYPE_CHECKING:
    from azure.core.polling import LROPoller

    from remediate.azure.clients import AzureClients


@dataclass(frozen=True)
class VmView:
    """What the engine needs to know about a VM, from one GET with the instance view expanded."""

    vm: VmId
    os_type: str | None
    power_state: str | None  # "running", "deallocated", "starting", ... (None when Azure reports none)
    agent_ready: bool
    computer_name: str | None
    tags: dict[str, str] = field(default_factory=dict)
    nic_ids: tuple[str, ...] = ()  # the primary NIC first, then the others in Azure's order
    # When the agent last reported the status in `agent_ready`: after a restart the old `Ready` can linger.
    agent_time: dt.datetime | None = None

    @property
    def is_windows(self) -> bool:
        return (self.os_type or "").lower() == "windows"

    @property
    def running(self) -> bool:
        return self.power_state == "running"

    @property
    def ready(self) -> bool:
        return self.running and self.agent_ready

    def ready_since(self, moment: dt.datetime) -> bool:
        """Running, with an agent `Ready` reported after `moment` (a `Ready` from before a reboot is stale)."""
        return self.ready and self.agent_time is not None and self.agent_time > moment


def get_vm(clients: AzureClients, vm: VmId) -> VmView:
    with azure_errors(f"reading VM {vm.name}"):
        model = clients.compute(vm.subscription).virtual_machines.get(vm.resource_group, vm.name, expand="instanceView")
    return _view(vm, model)


def _view(vm: VmId, model: Any) -> VmView:
    os_disk = model.storage_profile.os_disk if model.storage_profile else None
    # The SDK gives an OperatingSystemTypes enum (a str subclass whose str() is its class-qualified name).
    os_type = getattr(os_disk.os_type, "value", os_disk.os_type) if os_disk and os_disk.os_type else None
    power, agent_ready, agent_time = _power_and_agent(model.instance_view)
    nics = _primary_first(model.network_profile.network_interfaces or []) if model.network_profile else ()
    computer = model.os_profile.computer_name if model.os_profile else None
    return VmView(vm, os_type, power, agent_ready, computer, dict(model.tags or {}), nics, agent_time)


def _primary_first(references: list[Any]) -> tuple[str, ...]:
    """NIC ids with the one marked `primary` first: a VM with several NICs need not list its primary first.

    A single NIC is primary whether or not Azure says so (`primary` is often null then).
    """
    ids = [ref.id for ref in references if ref.id]
    primary = [ref.id for ref in references if ref.id and ref.primary]
    return tuple(primary[:1] + [nic for nic in ids if nic not in primary[:1]])


def _power_and_agent(view: Any) -> tuple[str | None, bool, dt.datetime | None]:
    """(power state, agent ready, when the agent reported it) from an instance view."""
    if view is None:
        return None, False, None
    power = next(
        (s.code.split("/", 1)[1] for s in view.statuses or [] if (s.code or "").startswith("PowerState/")), None
    )
    agent = view.vm_agent
    status = agent.statuses[0] if agent and agent.statuses else None
    ready = status is not None and (status.display_status or "").lower() == "ready"
    when = status.time if status is not None and isinstance(status.time, dt.datetime) else None
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return power, ready, when


def private_ip(clients: AzureClients, view: VmView) -> str | None:
    """The private IP of the primary IP configuration of the VM's primary NIC (where the probe connects)."""
    if not view.nic_ids:
        return None
    nic_id = view.nic_ids[0]  # the primary one (see _primary_first)
    parts = nic_id.strip("/").split("/")
    if len(parts) != 8 or parts[6].lower() != "networkinterfaces":
        raise PermanentError(f"VM {view.vm.name} has a NIC id that is not a network interface: {nic_id}")
    with azure_errors(f"reading the NIC of {view.vm.name}"):
        nic = clients.network(parts[1]).network_interfaces.get(parts[3], parts[7])
    return primary_address(nic.ip_configurations or [])


def primary_address(configs: list[Any]) -> str | None:
    """The address of the IP configuration marked `primary`; with a single configuration, that one."""
    primary = next((c for c in configs if c.primary), configs[0] if len(configs) == 1 else None)
    return primary.private_ip_address if primary is not None else None


CORRELATION_HEADER = "x-ms-correlation-request-id"


def begin_restart(clients: AzureClients, vm: VmId, correlation_id: str) -> LROPoller[None]:
    """Send ONE restart POST and return once Azure has accepted it (the poller's token survives a crash).

    The transport must not repeat it: azure-core re-sends a POST after a 500/503/504 or a dropped connection,
    and a restart that Azure accepted before the error would then be sent twice. So this request goes out
    with `retry_total=0`; the workflow decides about a second attempt, and only after the Activity Log shows
    that the first was not accepted. Polling the operation afterwards keeps the clients' normal retries: the
    polling method is built here, so the per-call `retry_total=0` does not reach it.

    The POST carries our own `x-ms-correlation-request-id` (a caller-specified value that ARM keeps for the
    whole operation: Azure/azure-resource-manager-rpc, v1.0/common-api-details.md, "Client Request Headers"),
    so the Activity Log can later say whether *this* restart was accepted, not whether any restart was.
    """
    from azure.mgmt.core.polling.arm_polling import ARMPolling  # lazy: cold start

    interval = clients.settings.poll_interval_seconds
    polling = ARMPolling(30 if interval is None else interval)
    with azure_errors(f"restarting {vm.name}"):
        return clients.compute(vm.subscription).virtual_machines.begin_restart(
            vm.resource_group,
            vm.name,
            retry_total=0,
            polling=polling,
            headers={CORRELATION_HEADER: correlation_id},
        )


def resume_restart(clients: AzureClients, vm: VmId, continuation_token: str) -> LROPoller[None]:
    """The poller of a restart accepted earlier, perhaps by another worker: polls, never sends the POST again.

    The token comes from the ledger: one naming a host other than the configured endpoints is refused
    (`UntrustedHost`, permanent) before anything is sent.
    """
    from remediate.azure.clients import check_continuation_token

    check_continuation_token(continuation_token, clients.trusted)
    with azure_errors(f"resuming the restart of {vm.name}"):
        return clients.compute(vm.subscription).virtual_machines.begin_restart(
            vm.resource_group, vm.name, continuation_token=continuation_token
        )


class RestartFailed(TransientError):
    """Azure accepted the restart, then the operation ended `Failed` or `Canceled`. Whether the VM restarted is
    not said (a failed start "may still start successfully", Microsoft Learn on VMStartTimedOut), so it is
    never taken as "nothing restarted"."""


def finish_restart(poller: LROPoller[None], vm: VmId, timeout: float) -> None:
    """Wait for Azure to report the restart done (the VM may still be booting after).

    RestartFailed when the operation itself ended Failed or Canceled (the VM may or may not have restarted);
    TransientError when only reading its status failed.
    """
    from azure.core.exceptions import HttpResponseError

    try:
        with azure_errors(f"restarting {vm.name}"):
            poller.result(timeout=max(timeout, 1.0))
    except RemediationError as exc:
        # azure-core ends the poll with an error for both terminal failures, `Failed` and `Canceled` (a
        # preempted operation is canceled): both are the operation's verdict, not a failed status read, whatever
        # error code (or none) the operation carries. Only a status read that failed is not.
        if isinstance(exc.__cause__, HttpResponseError) and poller.status().lower() in ("failed", "canceled"):
            raise RestartFailed(f"the restart operation of {vm.name} failed: {exc.reason}") from exc
        raise
    if not poller.done():
        raise TransientError(f"restart of {vm.name} did not complete within {timeout:.0f} s")


def wait_until_ready(
    clients: AzureClients,
    vm: VmId,
    timeout: float,
    *,
    since: dt.datetime,
    poll_seconds: float | Callable[[float], float] = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> VmView:
    """Poll the instance view until the VM runs with an agent `Ready` reported after `since` (when the restart
    was asked for); PermanentError after `timeout`.

    Azure's restart operation ends long before the guest is back, and the instance view can still show the
    agent's `Ready` from before the reboot: only a status whose time is after the restart counts.
    `poll_seconds` is a fixed interval or a function of the seconds waited so far (a cadence).
    Resource Graph lags by about a minute, so readiness is read from the VM itself, never from the graph.
    """
    started = clock()
    deadline = started + timeout
    interval = poll_seconds if callable(poll_seconds) else (lambda _elapsed: float(poll_seconds))
    view = get_vm(clients, vm)
    while not view.ready_since(since):
        if clock() >= deadline:
            agent = "ready" if view.agent_ready else "not ready"
            if view.agent_ready and not view.ready_since(since):
                agent = "still showing the status from before the restart"
            raise PermanentError(
                f"{vm.name} did not come back within {timeout:.0f} s after the restart "
                f"(power state {view.power_state or 'unknown'}, agent {agent})"
            )
        sleep(min(interval(clock() - started), max(deadline - clock(), 0.0)))
        try:
            view = get_vm(clients, vm)
        except TransientError:
            continue  # a throttled read while waiting is not a reason to give up
    return view
