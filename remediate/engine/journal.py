"""A request's steps as the ledger holds them: write-ahead for the workflow, replay on redelivery.

Every row is written conditionally: a step's row is inserted when it starts (an insert fails if the row
exists) and replaced with the ETag of that insert when it ends. A second execution of the same request that
slipped past the execution lease therefore cannot overwrite the first one's record: its write fails with
`JournalConflict` and it stops. The journal also answers the two questions every closing path asks, from the
rows alone: did Azure accept a restart, and may the VM have been changed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from remediate.ledger import Ledger
from remediate.model import StepResult

OK, STARTED, FAILED, SKIPPED = "ok", "started", "failed", "skipped"
# A restart whose fate could not be established (the Activity Log could not be read): never counted as a
# reboot, never sent again, and said so in the outcome.
UNKNOWN = "unknown"

# Steps that only read (Azure, the probe, or the guest in detect-only): they never change a VM.
READ_ONLY_STEPS = frozenset(
    {"preflight", "locate", "probe", "network-path", "diagnose", "classify", "plan", "verify", "verify-guest", "wait"}
)


class Journal:
    """Each step is recorded as started before it runs and as finished before the next one begins.

    A worker that dies mid-way leaves the journal telling the next delivery exactly what happened: finished
    steps are replayed from their records instead of being run again.
    """

    def __init__(
        self,
        ledger: Ledger,
        request_id: str,
        steps: list[StepResult],
        wall_clock: Callable[[], float] = time.time,
        etags: list[str] | None = None,
    ) -> None:
        """`steps` and their row `etags`: what the ledger already holds (the caller has just read it)."""
        self._ledger = ledger
        self._request_id = request_id
        self._clock = wall_clock
        self._steps: list[StepResult] = list(steps)
        self._etags: list[str] = list(etags or [])

    @property
    def steps(self) -> list[StepResult]:
        return list(self._steps)

    def find(self, name: str) -> StepResult | None:
        return next((step for step in self._steps if step.name == name), None)

    def start(self, name: str, summary: dict[str, Any] | None = None) -> StepResult:
        """Record `name` as started: a new row, or the existing row of a step being resumed."""
        step = StepResult(name, STARTED, self._clock(), summary=summary)
        index = self._index(name)
        if index is None:
            self._etags.append(self._ledger.append_step(self._request_id, len(self._steps), step))
            self._steps.append(step)
        else:
            self._etags[index] = self._ledger.update_step(self._request_id, index, step, self._etags[index])
            self._steps[index] = step
        return step

    def finish(
        self, step: StepResult, status: str, detail: str = "", summary: dict[str, Any] | None = None
    ) -> StepResult:
        index = self._index(step.name)
        assert index is not None, "only a started (or recorded) step can finish"
        finished = StepResult(step.name, status, step.started_at, self._clock(), detail, summary)
        self._etags[index] = self._ledger.update_step(self._request_id, index, finished, self._etags[index])
        self._steps[index] = finished
        step.status, step.detail, step.summary, step.finished_at = status, detail, summary, finished.finished_at
        return step

    def _index(self, name: str) -> int | None:
        return next((i for i, s in enumerate(self._steps) if s.name == name), None)


def base_name(step_name: str) -> str:
    """`reboot-2` -> `reboot`: a later round's step is the same kind of step."""
    head, _, tail = step_name.rpartition("-")
    return head if head and tail.isdigit() else step_name


def restart_correlation_id(request_id: str, step_name: str) -> str:
    """The x-ms-correlation-request-id a restart step sends: derived from the request and the step, so every
    delivery (and a closing path) knows it without reading it back, and the Activity Log shows this step's
    restart calls and no one else's (not another caller's, not an earlier round's)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"rdp-remediate:{request_id}/{step_name}"))


def is_reboot(step: StepResult) -> bool:
    return base_name(step.name) == "reboot"


def accepted_restarts(steps: Iterable[StepResult]) -> int:
    """Restarts Azure accepted: reboot steps that ended `ok` (sent and answered 202, or established from the
    Activity Log). A started, failed or unknown one is not evidence of a restart."""
    return sum(1 for step in steps if is_reboot(step) and step.status == OK)


def may_have_changed(steps: Iterable[StepResult]) -> bool:
    """Whether the VM may have been changed (so its cooldown must start): an accepted or possibly-sent
    restart, a repair that said it changed something, or a repair that started and has no verdict.
    Read-only steps never count, so a request that only diagnosed leaves no cooldown."""
    for step in steps:
        name = base_name(step.name)
        if name in READ_ONLY_STEPS or name.startswith("plan-"):  # plan-N-after: a decision, recorded
            continue
        if name == "reboot":
            if step.status in (OK, STARTED, UNKNOWN):
                return True
            continue
        if step.status == SKIPPED:
            continue
        summary = step.summary or {}
        if summary.get("resumed"):  # ran more than once: an earlier run may have changed the VM unseen
            return True
        if "changed" in summary:
            if summary["changed"]:
                return True
            continue
        if step.status in (STARTED, FAILED):  # no verdict from the script: it may have run
            return True
    return False
