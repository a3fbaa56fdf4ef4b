"""Resolve a step whose end was not recorded from evidence, never by rerunning it blind.

* A repair: the script is idempotent, so it runs again (another delivery's run, or a retry within one call
  after a lost answer); but a change the earlier run already made now reads "no change needed", or is refused
  because the facts the script checks before acting changed. So the rerun's report is not trusted: a fresh
  diagnose (read-only) is decided with the plan's context; the step was needed before and is not needed now
  means the change was made, so it still leads to its reboot and to the cooldown.
* A restart: the step sends its own correlation id, and the Activity Log says whether Azure accepted a call
  carrying it. Accepted: not sent again. Not shown once the log has had time (the documented lag is up to
  20 minutes): sent once. Not shown yet, or unreadable: not sent, and the outcome says the fate is unknown.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from remediate.model import RemediationError, VmId

if TYPE_CHECKING:
    from remediate.azure.clients import AzureClients
    from remediate.engine.closing import RestartEvidence
    from remediate.engine.decide import Decision, Step
    from remediate.settings import Settings

# The worker's clock and Azure's may disagree; look this much further back than the step's start.
CLOCK_SKEW_SECONDS = 120.0
# How far back the log must show some event of the VM before an absence counts (a change-window wait may hold a
# repaired VM's restart up to the queue's 7-day visibility limit after its diagnosis).
BLIND_LOOKBACK_SECONDS = 8 * 24 * 3600.0
UNREAD = "the Activity Log could not be read"


def needs_resolving(summary: dict[str, Any]) -> bool:
    """A rerun's report that may hide the change an earlier run made: no change, or a refusal (the earlier
    run changed the very facts the script checks before acting). A change or an error speaks for itself."""
    return not (summary.get("changed") or summary.get("errors") or summary.get("detect_only"))


def mark_resumed(summary: dict[str, Any]) -> dict[str, Any]:
    """Whatever the rerun says, the step ran more than once: it counts as a possible change (cooldown)."""
    return {**summary, "resumed": True}


def resolve_repair(summary: dict[str, Any], step: Step, now: Decision) -> dict[str, Any]:
    """The summary of a repair run again after an earlier run of the same step may have run unseen.

    `now` is the decision from facts read after the rerun, with the same context as the plan. The step was
    planned because the facts said it was needed; if the fresh facts no longer call for it (not planned, not
    refused, nothing unknown), the problem it addressed is gone: the earlier run made the change, and it still
    leads to its reboot and to the cooldown. Otherwise the rerun's own report stands.
    """
    resolved = mark_resumed(summary)
    still = {s.key for s in now.steps}
    refused = {r.action for r in now.refusals}
    if step.key in still or step.action in refused or now.unknown:
        resolved["resolved_from"] = f"fresh facts still call for {step.action.value} (or cannot tell)"
        return resolved
    resolved.pop("refused", None)
    resolved["changed"] = True
    resolved["reboot_required"] = True
    note = "the change was already made by an earlier run whose result was not recorded"
    resolved["actions"] = [*summary.get("actions", []), note]
    why = summary.get("refused") or "no change needed"
    resolved["resolved_from"] = (
        f"the rerun said: {why}; a fresh diagnose no longer calls for {step.action.value}, so an earlier run made it"
    )
    return resolved


@dataclass(frozen=True)
class RestartFate:
    accepted: bool | None  # None: could not be established
    detail: str
    unread: bool = False  # None because the log could not be read now: asking again later may settle it


def restart_fate(
    clients: AzureClients,
    vm: VmId,
    sent_after: float,
    correlation_id: str,
    *,
    evidence_seconds: float,
    give_up: float,
    poll_seconds: float,
    wall: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RestartFate:
    """Did Azure accept the restart of `vm` we sent with `correlation_id` at or after wall time `sent_after`?

    Only our own calls count (matched by correlation id). Accepted or Succeeded: taken. Anything else (no
    event, only `Started`, or `Failed`) counts as not accepted only once `evidence_seconds` have passed since
    `sent_after`, since the log lags by up to 20 minutes; until then this polls, up to the monotonic time
    `give_up`, and then answers unknown.
    """
    from remediate.azure.activitylog import restarts_since

    since = dt.datetime.fromtimestamp(sent_after - CLOCK_SKEW_SECONDS, dt.UTC)
    while True:
        until = dt.datetime.fromtimestamp(wall() + CLOCK_SKEW_SECONDS, dt.UTC)
        try:
            records = restarts_since(clients, vm, since, until, correlation_id)
        except RemediationError as exc:
            return RestartFate(None, f"the Activity Log could not be read ({exc.reason})", unread=True)
        accepted = [r for r in records if r.accepted]
        if accepted:
            first = accepted[0]
            return RestartFate(
                True,
                f"the Activity Log shows restart {first.correlation_id} at {first.first_seen.isoformat()} "
                f"({', '.join(first.statuses)})",
            )
        waited = wall() - sent_after
        undecided = [r for r in records if not r.refused]
        if waited >= evidence_seconds and undecided:
            # ARM received it (`Started`, or a 5xx after forwarding it) and nothing says Compute did not act.
            shown = ", ".join(undecided[0].statuses)
            return RestartFate(None, f"the Activity Log shows restart {correlation_id} only as {shown}")
        if waited >= evidence_seconds:
            blind = _blind(clients, vm, sent_after, until)
            if blind:
                return RestartFate(None, blind, unread=blind.startswith(UNREAD))
            seen = f" (it shows {', '.join(records[0].statuses)})" if records else ""
            return RestartFate(
                False, f"the Activity Log shows no accepted restart {correlation_id} in {waited:.0f} s{seen}"
            )
        if monotonic() >= give_up:
            return RestartFate(None, "the Activity Log did not show the restart yet and the deadline came first")
        sleep(max(min(poll_seconds, evidence_seconds - waited, give_up - monotonic()), 0.05))


def _blind(clients: AzureClients, vm: VmId, sent_after: float, until: dt.datetime) -> str:
    """Why the log cannot be believed about an absence ('' when it can): it must show this VM's events from
    before the restart, such as the product's own Run Commands of the same request (its diagnosis always runs
    before a restart; a change-window wait can put up to 7 days between them)."""
    from remediate.azure.activitylog import events_on

    since = dt.datetime.fromtimestamp(sent_after - BLIND_LOOKBACK_SECONDS, dt.UTC)
    try:
        if events_on(clients, vm, since, until):
            return ""
    except RemediationError as exc:
        return f"{UNREAD} ({exc.reason})"
    return (
        f"the Activity Log shows no event at all for {vm.name} since {since.isoformat(timespec='seconds')}, not "
        "even this product's Run Commands: an empty answer from a log we may not be allowed to read is no proof "
        "that the restart was not accepted"
    )


def activity_log_evidence(clients: AzureClients, settings: Settings) -> RestartEvidence:
    """For the closing paths: the Activity Log's verdict now, without waiting (None while it may still lag)."""

    def accepted(vm: VmId, sent_after: float, correlation_id: str) -> bool | None:
        fate = restart_fate(
            clients,
            vm,
            sent_after,
            correlation_id,
            evidence_seconds=settings.restart_evidence_seconds,
            give_up=time.monotonic(),
            poll_seconds=1.0,
        )
        return fate.accepted

    return accepted
