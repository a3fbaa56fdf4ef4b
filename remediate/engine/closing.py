"""Closing a request that no execution will finish: the poison path, the last delivery, the reconciler.

The verdict is read from the journal, never assumed: `rebooted` counts the restarts Azure accepted, the
cooldown starts only if a step may have changed the VM, and the reason says where the request stopped.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from remediate.engine.journal import (
    OK,
    SKIPPED,
    UNKNOWN,
    accepted_restarts,
    is_reboot,
    may_have_changed,
    restart_correlation_id,
)
from remediate.ledger import DONE, AuditRecord, ExecutionConflict, Ledger, utcnow
from remediate.model import Outcome, StepResult, TransientError, VmId

# Did Azure accept a restart of this VM at or after this wall time? True / False / None (unknown).
RestartEvidence = Callable[[VmId, float, str], "bool | None"]

log = logging.getLogger(__name__)


def close_abandoned(
    ledger: Ledger,
    record: AuditRecord,
    why: str,
    now: dt.datetime | None = None,
    restart_evidence: RestartEvidence | None = None,
) -> bool:
    """Record `failed` for a request without an outcome, with what its journal shows; then finish the VM row.

    A restart step with no recorded end is resolved from `restart_evidence` (the Activity Log) first, so
    `rebooted` counts a restart Azure accepted even if the worker died before writing it down.
    True if this call wrote the outcome (an execution that finished first keeps its own verdict).
    """
    if record.state == DONE:
        ledger.complete_finish(record)
        return False
    if restart_evidence is not None:
        _resolve_restarts(ledger, record, restart_evidence)
    steps = record.steps
    open_steps = [s for s in steps if s.status not in (OK, SKIPPED, UNKNOWN)]
    last = open_steps[-1] if open_steps else (steps[-1] if steps else None)
    restarts = accepted_restarts(steps)
    unsure = [s.name for s in steps if is_reboot(s) and s.status != OK]
    facts = [f"stopped at step {last.name} ({last.status})" if last else "no step had started"]
    facts.append(f"{restarts} restart(s) accepted by Azure")
    if unsure:
        facts.append(f"restart step(s) {', '.join(unsure)} without a confirmed answer")
    changed = may_have_changed(steps)
    facts.append("the VM may have been changed: cooldown started" if changed else "nothing was changed")
    at = now or utcnow()
    wrote = ledger.record_outcome(
        record.request_id,
        Outcome.FAILED,
        f"{why}; {'; '.join(facts)}",
        failed_step=last.name if last else None,
        rebooted=restarts > 0,
        changed=changed,
        at=at,
    )
    final = ledger.get(record.request_id)
    if final is not None:
        ledger.complete_finish(final)
    log.error(
        "request closed without a finished workflow",
        extra={"vm": record.vm, "request_id": record.request_id, "reason": why, "wrote": wrote},
    )
    return wrote


def _resolve_restarts(ledger: Ledger, record: AuditRecord, evidence: RestartEvidence) -> None:
    """Write the Activity Log's verdict into each open restart step (conditionally: a live writer wins)."""
    vm = VmId.parse(record.vm)
    for index, step in enumerate(record.steps):
        if not is_reboot(step) or step.status in (OK, SKIPPED, UNKNOWN):
            continue
        accepted = evidence(vm, step.started_at, restart_correlation_id(record.request_id, step.name))
        status = UNKNOWN if accepted is None else (OK if accepted else step.status)
        if status == step.status:
            continue
        detail = "restart accepted by Azure (Activity Log)" if accepted else "whether Azure accepted it is unknown"
        resolved = StepResult(step.name, status, step.started_at, step.finished_at or step.started_at, detail)
        try:
            ledger.update_step(record.request_id, index, resolved, record.step_etags[index])
        except (ExecutionConflict, TransientError, IndexError):
            log.warning("could not record a restart's fate", extra={"request_id": record.request_id})
        record.steps[index] = resolved
