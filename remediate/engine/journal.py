"""A request's steps as the ledger holds them: write-ahead for the workflow, replay on redelivery."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from remediate.ledger import Ledger
from remediate.model import StepResult

OK, STARTED, FAILED, SKIPPED = "ok", "started", "failed", "skipped"


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
    ) -> None:
        """`steps`: what the ledger already holds for the request (the caller has just read it)."""
        self._ledger = ledger
        self._request_id = request_id
        self._clock = wall_clock
        self._steps: list[StepResult] = list(steps)

    @property
    def steps(self) -> list[StepResult]:
        return list(self._steps)

    def find(self, name: str) -> StepResult | None:
        return next((step for step in self._steps if step.name == name), None)

    def start(self, name: str) -> StepResult:
        step = StepResult(name, STARTED, self._clock())
        self._store(step)
        return step

    def finish(
        self, step: StepResult, status: str, detail: str = "", summary: dict[str, Any] | None = None
    ) -> StepResult:
        step.status, step.detail, step.summary = status, detail, summary
        step.finished_at = self._clock()
        self._store(step)
        return step

    def _store(self, step: StepResult) -> None:
        index = next((i for i, s in enumerate(self._steps) if s.name == step.name), None)
        if index is None:
            index = len(self._steps)
            self._steps.append(step)
        else:
            self._steps[index] = step
        self._ledger.record_step(self._request_id, index, step)
