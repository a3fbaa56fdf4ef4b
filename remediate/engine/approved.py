"""The plan a person approved, and whether the plan about to run stays within it.

An approver approves the plan recorded with the diagnosis: the ordered repair steps, each an action on an exact
target (the Run Command parameters `decide` chose: key file, thumbprint, rule). The approved run diagnoses the VM
again and decides again from fresh facts, so its plan may differ. Every repair step changes the VM, so each one
the fresh plan would run must be in the approved plan, with the same target, in the approved order; the fresh
plan may do less (a step the facts no longer call for drops out), never more or other. A step outside the
approval (a store rename where a certificate renewal was approved, another key file, another order) stops the
run before it changes anything, with both plans in the reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from remediate.engine.decide import Step

# The request-row columns: the plan recorded with the diagnosis, and the one the approver approved.
PLAN_STEPS, PLAN_FINGERPRINT = "PlanSteps", "PlanFingerprint"
APPROVED_PLAN, APPROVED_FINGERPRINT = "ApprovedPlan", "ApprovedPlanFingerprint"

Target = tuple[str, tuple[tuple[str, str], ...]]  # (action, sorted target parameters)


def _target(action: str, parameters: Mapping[str, Any]) -> Target:
    return action, tuple(sorted((str(k), str(v)) for k, v in parameters.items()))


def canonical(targets: Iterable[Target]) -> str:
    """The ordered steps as compact JSON with sorted parameters: equal plans give equal text."""
    return json.dumps([[action, [list(p) for p in params]] for action, params in targets], separators=(",", ":"))


def fingerprint(plan: str) -> str:
    """A short digest of a canonical plan, for people comparing plans at a glance."""
    return hashlib.sha256(plan.encode()).hexdigest()[:16]


def of_steps(steps: Iterable[Step]) -> str:
    return canonical(_target(step.action.value, dict(step.parameters)) for step in steps)


def of_decision_json(decision: Mapping[str, Any]) -> str:
    """The canonical plan of a recorded decision (`Decision.to_json()`, the journal's `plan` step summary)."""
    steps = decision.get("steps") or []
    return canonical(_target(str(s.get("action")), s.get("target") or {}) for s in steps if isinstance(s, dict))


def parse(plan: str) -> list[Target]:
    data = json.loads(plan) if plan else []
    return [(str(action), tuple((str(k), str(v)) for k, v in params)) for action, params in data]


def describe(targets: Sequence[Target]) -> str:
    if not targets:
        return "no repair steps"
    return ", then ".join(
        f"{action} ({', '.join(f'{k}={v}' for k, v in params) or 'no target'})" for action, params in targets
    )


def outside(steps: Sequence[Step], approved_plan: str) -> list[Step]:
    """The fresh steps the approval does not cover: each step must match an approved one, in the approved order."""
    approved = parse(approved_plan)
    position, beyond = 0, []
    for step in steps:
        wanted = _target(step.action.value, dict(step.parameters))
        match = next((i for i in range(position, len(approved)) if approved[i] == wanted), None)
        if match is None:
            beyond.append(step)
        else:
            position = match + 1
    return beyond


def _why(steps: Sequence[Step], approved_plan: str) -> str | None:
    beyond = outside(steps, approved_plan)
    if not beyond:
        return None
    fresh = of_steps(steps)
    return (
        f"approved {describe(parse(approved_plan))} [{fingerprint(approved_plan)}]; the VM now calls for "
        f"{describe(parse(fresh))} [{fingerprint(fresh)}], and {', '.join(s.action.value for s in beyond)} "
        "was not approved"
    )


def before_any_change(steps: Sequence[Step], approved_plan: str | None) -> str | None:
    """Why the fresh plan may not run under this approval, or None (within it, or no approval binds it)."""
    why = _why(steps, approved_plan) if approved_plan else None
    if why is None:
        return None
    return (
        f"the plan changed since it was approved, so nothing was changed: {why}. A new alert or request "
        "diagnoses the VM again and asks for approval of the new plan"
    )


def before_round(number: int, steps: Sequence[Step], approved_plan: str | None) -> str | None:
    """Why a further round (the repairs did not fix it) may not run under this approval, or None."""
    why = _why(steps, approved_plan) if approved_plan else None
    if why is None:
        return None
    return f"still broken after round {number - 1}, and round {number} goes beyond the approval: {why}"
