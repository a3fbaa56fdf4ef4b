"""The safety rules, in one place. Each check returns None (allowed) or the reason a human reads.

Nothing here talks to Azure: the callers pass in what they read, so every rule is testable on its own.
"""

from __future__ import annotations

import datetime as dt
import math

from remediate.azure.vm import VmView
from remediate.ledger import Decision, VmState
from remediate.model import Outcome, RemediationRequest, Trigger, VmId, azure_equal, azure_key, find_tag
from remediate.settings import Settings


def scope_refusal(settings: Settings, vm: VmId) -> str | None:
    """Checked before any Azure call: an out-of-scope VM is never even read."""
    if not settings.scopes:
        return "nothing is in scope: RDPR_SCOPES is empty (set the subscriptions or resource groups to act on)"
    if not vm.in_scope(settings.scopes):
        return f"outside the configured scope ({', '.join(settings.scopes)})"
    return None


def vm_refusal(settings: Settings, view: VmView, *, require_ready: bool = True) -> str | None:
    """Facts about the VM that make remediation impossible or unwanted.

    `require_ready=False` when resuming a request whose reboot already happened: the VM may still be booting,
    and the workflow's wait step is what waits for it.
    """
    if not view.is_windows:
        return f"not a Windows VM (OS type {view.os_type or 'unknown'})"
    return _tag_refusal(settings, view.tags) or (_readiness_refusal(view) if require_ready else None)


def _tag_refusal(settings: Settings, tags: dict[str, str]) -> str | None:
    if _has_tag(tags, settings.opt_out_tag):
        return f"opted out by tag {_tag_text(settings.opt_out_tag)}"
    if settings.require_opt_in and not _has_tag(tags, settings.opt_in_tag):
        return f"not opted in: RDPR_REQUIRE_OPT_IN is true and the VM lacks tag {_tag_text(settings.opt_in_tag)}"
    return None


def _readiness_refusal(view: VmView) -> str | None:
    if not view.running:
        return (
            f"VM is {view.power_state or 'in an unknown power state'}: Run Command needs a running VM "
            "(start it first; rdp-remediate never starts VMs)"
        )
    if not view.agent_ready:
        return "the VM guest agent is not ready, so Run Command cannot run (check the agent / boot diagnostics)"
    return None


def history_refusal(settings: Settings, state: VmState, request: RemediationRequest, now: dt.datetime) -> str | None:
    """Cooldown and attempt limit: no reboot loops on a VM that keeps breaking.

    A redelivered request that already counted its attempt is let through, so it can finish.
    """
    if request.request_id in state.attempts:
        return None
    if state.last_finished is not None:
        since = now - state.last_finished
        cooldown = dt.timedelta(minutes=settings.cooldown_minutes)
        if since < cooldown:
            minutes = int(since.total_seconds() // 60)
            return (
                f"cooldown: the last remediation of this VM finished {minutes} min ago "
                f"(RDPR_COOLDOWN_MINUTES={settings.cooldown_minutes})"
            )
    held = _unchanged_hold(settings, state, request, now)
    if held:
        return held
    window_start = now - dt.timedelta(hours=settings.attempt_window_hours)
    attempts = state.attempts_since(window_start)
    if attempts >= settings.max_attempts:
        return (
            f"attempt limit: {attempts} remediations in the last {settings.attempt_window_hours} h "
            f"(RDPR_MAX_ATTEMPTS={settings.max_attempts}); a VM that keeps breaking needs a human"
        )
    return None


def _unchanged_hold(settings: Settings, state: VmState, request: RemediationRequest, now: dt.datetime) -> str | None:
    """An alert or sweep for a VM whose last remediation failed without changing anything waits the cooldown.

    Nothing changed means the VM still shows the same facts, so the same verdict would follow; re-running it
    for every alert costs Run Commands and filled the circuit breaker's count. A person (CLI, runbook) may
    retry at once, having fixed something.
    """
    if request.trigger not in (Trigger.ALERT, Trigger.SWEEP) or state.last_unchanged_failure is None:
        return None
    since = now - state.last_unchanged_failure
    if since >= dt.timedelta(minutes=settings.cooldown_minutes):
        return None
    minutes = int(since.total_seconds() // 60)
    return (
        f"cooldown: the last remediation of this VM failed {minutes} min ago and changed nothing; the same "
        f"facts would fail the same way (RDPR_COOLDOWN_MINUTES={settings.cooldown_minutes})"
    )


def blast_radius(settings: Settings, fleet_size: int) -> int:
    """Most VMs one sweep may enqueue: the smaller of the count and the percentage of the fleet (at least 1)."""
    by_percent = math.floor(fleet_size * settings.sweep_max_percent / 100)
    return max(1, min(settings.sweep_max_vms, by_percent)) if fleet_size else 0


def circuit_refusal(settings: Settings, decisions: list[Decision]) -> str | None:
    """Stop new work while recent remediations mostly went wrong: something systemic is wrong.

    Counted per VM (its latest outcome in the window), so alerts repeated for one VM weigh as one; and only
    outcomes that may have changed a VM count, because the breaker guards against repairs doing harm. A failure
    that changed nothing (nothing repairable, a problem reported to the owner) is a verdict about that VM.
    """
    latest: dict[str, Decision] = {}
    for decision in decisions:
        if decision.changed and decision.outcome in _WEIGHED:
            key = azure_key(decision.vm)
            if key not in latest or latest[key].finished_at < decision.finished_at:
                latest[key] = decision
    if len(latest) < settings.circuit_min_outcomes:
        return None
    failures = sum(1 for d in latest.values() if d.outcome == Outcome.FAILED)
    if failures / len(latest) >= settings.circuit_failure_ratio:
        return (
            f"circuit breaker open: remediations of {failures} of the last {len(latest)} VMs changed them and "
            f"failed in {settings.circuit_window_hours} h (RDPR_CIRCUIT_FAILURE_RATIO={settings.circuit_failure_ratio})"
        )
    return None


_WEIGHED = frozenset({Outcome.REMEDIATED, Outcome.FAILED, Outcome.UNVERIFIED})


def _has_tag(tags: dict[str, str], wanted: tuple[str, str] | None) -> bool:
    """Tag names compare as Azure compares them; values too, case-insensitively by the same rule (an opt-out
    spelled `OFF` still opts out), never by Unicode folding (a Kelvin sign is not a `k`)."""
    if wanted is None:
        return False
    name, value = wanted
    found = find_tag(tags, name)
    if found is None:
        return False
    return not value or azure_equal(found, value)


def _tag_text(tag: tuple[str, str] | None) -> str:
    if tag is None:
        return "(none)"
    return f"{tag[0]}={tag[1]}" if tag[1] else tag[0]
