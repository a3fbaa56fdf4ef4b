"""Run workflows: one request, or many with bounded concurrency (the CLI and the demo use it)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from remediate import telemetry
from remediate.engine.alert_loop import close_the_loop
from remediate.engine.slots import Lease, Slots
from remediate.engine.workflow import Progress, Workflow, WorkflowResult
from remediate.ledger import Ledger
from remediate.model import RemediationRequest
from remediate.settings import Settings

if TYPE_CHECKING:
    from remediate.azure.clients import AzureClients
    from remediate.engine.storm import StormGuard


def remediate(
    request: RemediationRequest,
    settings: Settings,
    ledger: Ledger,
    clients: AzureClients,
    *,
    progress: Progress | None = None,
    retry_later: bool = False,
    trace_context: Mapping[str, str] | None = None,
    storm: StormGuard | None = None,
) -> WorkflowResult:
    """Run one request's workflow inside its trace (`trace_context`: the queue message's W3C fields)."""
    with telemetry.request_trace(request, trace_context) as trace:
        result = Workflow(
            request,
            settings=settings,
            ledger=ledger,
            clients=clients,
            progress=trace.progress(progress),
            retry_later=retry_later,
            storm=storm,
        ).run()
        trace.finish(result.outcome.value, result.reason, result.failed_step, result.rebooted, result.duration_seconds)
        close_the_loop(request, result, settings, ledger, clients)
        return result


def remediate_many(
    requests: Sequence[RemediationRequest],
    settings: Settings,
    ledger: Ledger,
    clients: AzureClients,
    *,
    concurrency: int | None = None,
    progress: Callable[[RemediationRequest, str, str], None] | None = None,
    slots: Slots | None = None,
) -> list[WorkflowResult]:
    """Results in input order; at most `concurrency` (default RDPR_MAX_CONCURRENT) VMs at a time, and with
    `slots` each one also holds a fleet-wide slot (RDPR_MAX_ACTIVE) while it runs."""
    limit = max(1, concurrency or settings.max_concurrent)

    def one(request: RemediationRequest) -> WorkflowResult:
        report = (lambda step, detail: progress(request, step, detail)) if progress else None
        lease = _wait_for_slot(slots, request, settings) if slots is not None else None
        try:
            return remediate(request, settings, ledger, clients, progress=report)
        finally:
            if slots is not None and lease is not None:
                slots.release(lease)

    with ThreadPoolExecutor(max_workers=min(limit, max(1, len(requests)))) as pool:
        return list(pool.map(one, requests))


def _wait_for_slot(slots: Slots, request: RemediationRequest, settings: Settings) -> Lease:
    """A thread of this process has nothing else to do while every slot is taken: it sleeps, with jitter, and
    asks again (a queue worker instead puts its message back; see remediate.intake.gate)."""
    pause = min(float(settings.slot_retry_seconds), 1.0)
    while True:
        lease = slots.try_acquire(request.vm, request.request_id)
        if lease is not None:
            return lease
        time.sleep(pause * (0.5 + random.random()))  # noqa: S311 - jitter, nothing secret
