"""One VM's remediation: preflight, lock, diagnose, repair, reboot, wait, verify, record, unlock.

Every step goes through `Workflow._step`, which writes it to the journal before and after it runs. A
redelivered request therefore resumes after its last finished step, and a reboot whose start was recorded
is never requested twice, even if the worker died before learning whether Azure accepted it.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from remediate.azure import vm as azure_vm
from remediate.azure.errors import sdk_first_use_race
from remediate.azure.network import NetworkPath
from remediate.azure.polling import Cadence
from remediate.engine import approved, evidence, plans, policy, windows
from remediate.engine.classify import Diagnosis, Disposition, Observation, classify, classify_outside
from remediate.engine.decide import Context, Decision, decide
from remediate.engine.decide import Step as PlannedStep
from remediate.engine.execution import Lease
from remediate.engine.journal import (
    FAILED,
    OK,
    SKIPPED,
    STARTED,
    UNKNOWN,
    Journal,
    accepted_restarts,
    base_name,
    is_reboot,
    may_have_changed,
    restart_correlation_id,
)
from remediate.engine.storm import Held, StormGuard
from remediate.ledger import DONE, WAITING, AuditRecord, ExecutionConflict, Ledger, VmState
from remediate.model import (
    NotFound,
    Outcome,
    PermanentError,
    Plan,
    RemediationError,
    RemediationRequest,
    StepResult,
    TransientError,
    Trigger,
)
from remediate.settings import Settings

if TYPE_CHECKING:
    from azure.core.polling import LROPoller

    from remediate.azure.clients import AzureClients

log = logging.getLogger(__name__)

Progress = Callable[[str, str], None]


@dataclass
class WorkflowResult:
    """The verdict on one request: what the CLI prints, the demo tabulates and the ledger stores."""

    request_id: str
    vm: str
    outcome: Outcome
    reason: str
    failed_step: str | None = None
    rebooted: bool = False
    findings: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    verification: str | None = None
    duration_seconds: float = 0.0
    steps: list[StepResult] = field(default_factory=list)
    diagnosis: dict[str, Any] | None = None  # the named cause: cause, disposition, evidence, nextStep

    def to_json(self) -> dict[str, Any]:
        return {
            "requestId": self.request_id,
            "vm": self.vm,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "failedStep": self.failed_step,
            "rebooted": self.rebooted,
            "findings": self.findings,
            "actions": self.actions,
            "verification": self.verification,
            "durationSeconds": round(self.duration_seconds, 3),
            "steps": [s.to_json() for s in self.steps],
            "diagnosis": self.diagnosis,
        }


@dataclass(frozen=True)
class _NextRound:
    """What a round that did not end the remediation hands to the next: the steps that ran, the new decision."""

    done: frozenset[str]
    decision: Decision


class _Stop(Exception):
    # Control flow, not an error: ends the workflow early with an outcome.
    def __init__(self, outcome: Outcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome, self.reason = outcome, reason


class Workflow:
    def __init__(
        self,
        request: RemediationRequest,
        *,
        settings: Settings,
        ledger: Ledger,
        clients: AzureClients,
        retry_later: bool = False,
        progress: Progress | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        wall: Callable[[], float] = time.time,
        storm: StormGuard | None = None,
    ) -> None:
        self.request = request
        self.settings = settings
        self.ledger = ledger
        self.clients = clients
        # In a queue worker with deliveries left, a transient failure is re-raised so the message comes back.
        self.retry_later = retry_later
        self._progress = progress or _no_progress
        self._monotonic, self._sleep, self._now, self._wall = monotonic, sleep, now, wall
        self._deadline = 0.0
        self._journal: Journal | None = None
        self._current_step: str | None = None
        self._round_probe = "unknown"
        self.rebooted = False
        self.findings: list[str] = []
        self.actions: list[str] = []
        self.verification: str | None = None
        self._changed = False
        self._restart_poller: LROPoller[None] | None = None  # the live poller of a restart this worker asked for
        self._locked_out = False  # skipped because another request holds the lock: its lock is not ours to free
        self._holds_lock = False
        self._lease: Lease | None = None
        self._probes: dict[str, dict[str, Any]] = {}  # what each probe step saw, by step name
        self.diagnosis: Diagnosis | None = None
        self._window: windows.Window | None = None  # the VM's change window for reboots (None: any time)
        self._storm = storm  # the storm guard; made on first use when not given
        self._admitted = False  # counted against the storm budget in this execution

    # --- the public entry point -----------------------------------------------------------------------

    def run(self) -> WorkflowResult:
        started = self._monotonic()
        self._deadline = started + self.settings.workflow_deadline_seconds
        record = self.ledger.get(self.request.request_id)
        if record is not None and record.state == DONE:
            # A duplicate or late redelivery: the outcome stands; touching the VM again could reboot it twice.
            # A crash between the outcome and the VM row's finish left the cooldown or the lock: complete it.
            self.ledger.complete_finish(record)
            return _recorded_result(record)
        if record is None:
            self.ledger.record_accepted(self.request)
        # One request runs in one place: a second delivery of it stops here (ExecutionConflict) while this
        # one holds the lease.
        self._lease = Lease(self.ledger, self.request.request_id, self.settings.lease_seconds)
        self._lease.acquire()
        try:
            record = self.ledger.get(self.request.request_id)  # re-read under the lease: the journal as it is
            if record is not None and record.state == DONE:
                self.ledger.complete_finish(record)
                return _recorded_result(record)
            self.ledger.mark_running(self.request.request_id)
            steps, etags = (record.steps, record.step_etags) if record else ([], [])
            self._journal = Journal(self.ledger, self.request.request_id, steps, etags=etags)
            outcome, reason = self._run_guarded()
            return self._record(outcome, reason, self._monotonic() - started)
        finally:
            self._lease.release()

    def _run_guarded(self) -> tuple[Outcome, str]:
        try:
            return self._run_steps()
        except _Stop as stop:
            return stop.outcome, stop.reason
        except ExecutionConflict:
            raise  # another execution owns the request and records its outcome: record nothing here
        except TransientError as exc:
            if self.retry_later:
                raise  # the message comes back (OutsideWindow: when the window opens; Held: when the budget frees)
            return self._without_retry(exc)
        except RemediationError as exc:
            return Outcome.FAILED, exc.reason
        except Exception as exc:  # a bug must still end in a recorded outcome, never a lost request
            if sdk_first_use_race(exc) and self.retry_later:
                raise TransientError(f"the Azure SDK's first use raced ({exc}); the delivery is retried") from exc
            log.exception("unexpected error in workflow", extra=self._log_fields())
            return Outcome.FAILED, f"internal error ({type(exc).__name__}: {exc}); see the function logs"

    def _run_steps(self) -> tuple[Outcome, str]:
        refusal = policy.scope_refusal(self.settings, self.request.vm)
        if refusal:  # checked before any Azure call: an out-of-scope VM is never touched, not even read
            return Outcome.SKIPPED, refusal
        view = self._preflight()
        if self.request.options.dry_run or self.settings.dry_run:
            return self._dry_run(view)  # reads only, so it takes no lock a real remediation would wait for
        self._window, refusal = windows.reboot_window(self.settings, view.tags)
        if refusal:
            return Outcome.SKIPPED, refusal
        if self.settings.reboot_policy == "always" and not self.request.options.diagnose_only:
            self._await_window("reboot", before_changes=True)  # every change reboots: change nothing before it
        self._lock()
        self._recheck_history()
        return self._remediate(view)

    # --- steps ------------------------------------------------------------------------------------------

    def _step(
        self, name: str, action: Callable[[], tuple[str, dict[str, Any] | None]], *, rerun: bool = False
    ) -> StepResult:
        """Run `action` as the named step, or replay it if the journal says it already finished.

        `rerun=True` for a step that reads current state (preflight): it runs on every delivery.
        """
        journal = self._require_journal()
        self._current_step = name
        previous = None if rerun else journal.find(name)
        if previous is not None and previous.status in (OK, SKIPPED, UNKNOWN):
            self._progress(name, "already done (resumed)")
            return previous
        self._check_deadline(name)
        if self._lease is not None:
            self._lease.check()  # still ours: a delivery that lost its lease must not act
        if previous is not None and is_reboot(previous):
            # Started (or failed in a way that could hide an accepted restart) and never finished: the Activity
            # Log says whether Azure took it. Accepted or unknown: finished here, never sent twice.
            resolved = self._resolve_restart(previous)
            if resolved is not None:
                return resolved
        self._progress(name, "started")
        # A restart's started row names the correlation id its POST will carry (what the Activity Log shows).
        started = (
            {"correlationId": restart_correlation_id(self.request.request_id, name)}
            if base_name(name) == "reboot"
            else None
        )
        step = journal.start(name, started)
        try:
            detail, data = action()
        except _Stop as stop:
            journal.finish(step, SKIPPED if stop.outcome is Outcome.SKIPPED else FAILED, stop.reason)
            self._progress(name, stop.reason)
            raise
        except ExecutionConflict:
            raise
        except RemediationError as exc:
            journal.finish(step, FAILED, exc.reason)
            self._progress(name, f"failed: {exc.reason}")
            raise
        journal.finish(step, OK, detail, data)
        self._progress(name, detail)
        log.info("step finished", extra={**self._log_fields(), "step": name, "detail": detail})
        return step

    def _resolve_restart(self, previous: StepResult) -> StepResult | None:
        """The fate of a restart step with no recorded end, from the Activity Log; None: not accepted."""
        fate = self._restart_fate(previous.started_at, previous.name)
        journal = self._require_journal()
        if fate.accepted is None and fate.unread:
            # A failed read settles nothing: the step stays open and the next delivery asks again (the last one
            # closes the request with what the log says then).
            raise TransientError(f"whether Azure accepted the restart is not known yet: {fate.detail}")
        if fate.accepted is None:
            return journal.finish(
                previous, UNKNOWN, f"not sent again: whether Azure accepted the restart is unknown ({fate.detail})"
            )
        if fate.accepted:
            return journal.finish(
                previous, OK, f"restart accepted by Azure ({fate.detail}); not sent again", {"evidence": fate.detail}
            )
        self._progress(previous.name, f"the earlier restart was not accepted ({fate.detail}); sending it once")
        return None

    def _restart_fate(self, sent_after: float, step_name: str) -> evidence.RestartFate:
        return evidence.restart_fate(
            self.clients,
            self.request.vm,
            sent_after,
            restart_correlation_id(self.request.request_id, step_name),
            evidence_seconds=self.settings.restart_evidence_seconds,
            give_up=self._deadline,
            poll_seconds=self._poll_seconds(),
            monotonic=self._monotonic,
            sleep=self._sleep,
        )

    def _preflight(self) -> azure_vm.VmView:
        holder: list[azure_vm.VmView] = []

        def check() -> tuple[str, dict[str, Any] | None]:
            # Cooldown and attempts first: they need only the ledger, so a VM in cooldown costs no ARM read.
            refusal = policy.history_refusal(
                self.settings, self.ledger.vm_state(self.request.vm), self.request, self._now()
            )
            if refusal:
                raise _Stop(Outcome.SKIPPED, refusal)
            try:
                view = azure_vm.get_vm(self.clients, self.request.vm)
            except NotFound as exc:  # a wrong or deleted VM: nothing to do. A 403 stays a failure, visibly.
                raise _Stop(Outcome.SKIPPED, exc.reason) from exc
            rebooting = any(step.name.startswith("reboot") for step in self._require_journal().steps)
            refusal = policy.vm_refusal(self.settings, view, require_ready=not rebooting)
            if refusal:
                raise _Stop(Outcome.SKIPPED, refusal)
            holder.append(view)
            return "Windows, running, agent ready, in scope, no cooldown", {"computerName": view.computer_name}

        self._step("preflight", check, rerun=True)
        return holder[0]

    def _without_retry(self, exc: TransientError) -> tuple[Outcome, str]:
        """The verdict of a run that cannot come back later (the CLI, a message's last delivery)."""
        if isinstance(exc, windows.OutsideWindow):
            return self._outside_window(exc)
        if isinstance(exc, Held):
            return Outcome.SKIPPED, f"{exc.reason}; nothing was changed"
        return Outcome.FAILED, f"gave up after retries: {exc.reason}"

    def _outside_window(self, exc: windows.OutsideWindow) -> tuple[Outcome, str]:
        """The verdict of a run that cannot come back later (the CLI) when the window is closed."""
        if any((s.summary or {}).get("changed") for s in self._require_journal().steps):
            return Outcome.FAILED, f"repaired, not rebooted: {exc.reason}; resume it then (run --resume)"
        return Outcome.SKIPPED, f"nothing changed: {exc.reason}"

    def _await_window(self, reboot_step: str, *, before_changes: bool = False) -> None:
        """Raise OutsideWindow while the VM's change window is closed (or too little of it is left for a
        restart), unless this reboot was already sent (a resumed request never holds back a restart Azure may
        have accepted). The queue worker puts the message back until the window opens; nothing waits in a
        worker. A request that holds the VM's lock keeps it through the wait (`_reserve`)."""
        journal = self._require_journal()
        if self._window is None or journal.find(reboot_step) is not None:
            return
        if before_changes and any((step.summary or {}).get("changed") for step in journal.steps):
            return  # changes were made already: the check before the reboot itself decides
        if before_changes:
            self._refuse_if_reserved(self.ledger.vm_state(self.request.vm))
        wait = windows.reboot_wait(self._window, self._now(), self.settings.window_margin_seconds)
        if wait is not None:
            if self._holds_lock:
                self._reserve(wait.opens_at)
            raise wait

    def _reserve(self, opens_at: dt.datetime) -> None:
        """Keep the VM's lock until the window opens plus the lock time: a repaired VM waiting for its reboot
        belongs to this request, and no other request may start on it in between."""
        minutes = math.ceil(max((opens_at - self._now()).total_seconds(), 0.0) / 60) + self.settings.lock_minutes
        taken, state = self.ledger.acquire(self.request.vm, self.request.request_id, minutes)
        if not taken:  # the lock lapsed and another request took it: that one decides; this one still waits
            log.warning("lost the VM's lock before its window", extra={**self._log_fields(), "owner": state.owner})

    def _refuse_if_reserved(self, state: VmState) -> None:
        """Refuse (recorded, not retried) when another request holds the VM through its change-window wait."""
        if not state.owner or not state.locked_by_other(self.request.request_id, self._now()):
            return
        holder = self.ledger.request_fields(state.owner, "State", "WaitingUntil")
        if holder.get("State") != WAITING:
            return
        until = holder.get("WaitingUntil")
        when = until.isoformat(timespec="minutes") if isinstance(until, dt.datetime) else "its window"
        self._locked_out = True
        raise _Stop(
            Outcome.SKIPPED,
            f"locked: request {state.owner} changed this VM and holds it until its reboot in its change window "
            f"(opens {when}); nothing was done by this request",
        )

    def _admit_change(self) -> None:
        """Count this request against the storm budget as it is about to make its first change (once: a
        resumed request whose journal shows a change was counted before it). Past the budget it stops here,
        nothing changed and its VM unlocked, and comes back when the budget frees (`Held`). An operator's
        release, or a person running it from the command line, is counted and never refused."""
        journal = self._require_journal()
        if self._admitted or may_have_changed(journal.steps):
            return
        released = self.ledger.request_fields(self.request.request_id, "StormReleased").get("StormReleased")
        force = bool(released) or self.request.trigger is Trigger.CLI
        hold = self._storm_guard().admit(self.request.request_id, force=force)
        if hold is not None:
            if self._holds_lock:  # nothing changed: the VM is not kept from other requests while this one waits
                self.ledger.release(self.request.vm, self.request.request_id)
                self._holds_lock = False
            raise Held(hold)
        self._admitted = True

    def _storm_guard(self) -> StormGuard:
        if self._storm is None:
            self._storm = StormGuard.from_settings(self.settings)
        return self._storm

    def _lock(self) -> None:
        taken, state = self.ledger.acquire(self.request.vm, self.request.request_id, self.settings.lock_minutes)
        if not taken:
            self._refuse_if_reserved(state)
            expires = state.lock_expires.isoformat() if state.lock_expires else "?"
            reason = f"locked: request {state.owner} is remediating this VM (until {expires})"
            if self.retry_later:
                raise TransientError(reason)  # come back later: the other request may leave work for this one
            self._locked_out = True
            raise _Stop(Outcome.SKIPPED, reason)
        self._holds_lock = True

    def _recheck_history(self) -> None:
        """Cooldown and attempts again, now under the lock: another request may have finished in between."""
        refusal = (
            policy.history_refusal(self.settings, self.ledger.vm_state(self.request.vm), self.request, self._now())
            or self._circuit_refusal()
        )
        if refusal:
            raise _Stop(Outcome.SKIPPED, refusal)

    def _circuit_refusal(self) -> str | None:
        since = self._now() - dt.timedelta(hours=self.settings.circuit_window_hours)
        return policy.circuit_refusal(self.settings, self.ledger.recent_decisions(since))

    def _dry_run(self, view: azure_vm.VmView) -> tuple[Outcome, str]:
        ip = self._locate(view)
        before = self._probe("probe", ip, wait=False)
        self.findings = [f"probe: {before}"]
        return Outcome.PLANNED, "dry run: would " + ", then ".join(plans.describe_plan(self.request.options.plan))

    def _remediate(self, view: azure_vm.VmView) -> tuple[Outcome, str]:
        ip = self._locate(view)
        before = self._probe("probe", ip, wait=False)
        options = self.request.options
        if options.plan is Plan.RENEW_ONLY:
            return self._proactive_renewal(ip, before)
        path = self._network_path(view, ip, before)
        outside = classify_outside(Observation(self._probes["probe"], None, path))
        if outside is not None:  # no path from here: nothing to learn from the guest that would change that
            return self._decline(outside)
        facts = self._script("diagnose")
        diagnosis = self._classify(facts, path)
        if diagnosis.disposition is not Disposition.REPAIR:
            return self._decline(diagnosis)
        decision = self._plan("plan", facts, before, frozenset())
        self.findings = [f"probe: {before}", *decision.problems, *decision.unknown]
        if options.diagnose_only or not decision.steps:
            return self._without_repairs(before, decision)
        self._require_approved(decision)  # an unapproved plan ends here, spending no storm budget
        self._admit_change()
        self.ledger.record_attempt(self.request.vm, self.request.request_id)
        self._round_probe = before  # the probe the current plan was decided from
        return self._rounds(decision, ip)

    def _locate(self, view: azure_vm.VmView) -> str | None:
        step = self._step("locate", lambda: self._located(view))
        summary = step.summary or {}
        return summary.get("ip")

    def _located(self, view: azure_vm.VmView) -> tuple[str, dict[str, Any] | None]:
        ip = azure_vm.private_ip(self.clients, view)
        return (f"private IP {ip}" if ip else "no private IP found"), {"ip": ip}

    def _network_path(self, view: azure_vm.VmView, ip: str | None, before: str) -> NetworkPath | None:
        """What Azure's rules say about the path to the RDP port, read only when the probe did not get through."""
        if before in plans.PROBE_OK or ip is None or not view.nic_ids:
            return None
        from remediate.azure.network import read_path

        def read() -> tuple[str, dict[str, Any] | None]:
            path = read_path(
                self.clients, self.request.vm, view.nic_ids[0], ip, self.settings.rdp_port, max(self._remaining(), 1.0)
            )
            return path.detail or "read", path.to_json()

        step = self._step("network-path", read)
        return NetworkPath.from_json(step.summary or {})

    def _classify(self, facts: dict[str, Any], path: NetworkPath | None) -> Diagnosis:
        """The cause, recorded as a step: the audit trail says why the VM was repaired or left alone."""
        options = self.request.options
        context = Context(self._now(), self.settings.expiry_warning_days, options.plan, options.force)
        from remediate.engine.event_evidence import read_vm_events

        events = read_vm_events(self.clients, self.settings, self.request.vm)  # optional: its source is recorded
        diagnosis = classify(Observation(self._probes["probe"], facts, path, events.counts, events.source), context)
        self._step("classify", lambda: (diagnosis.explain()[:500], diagnosis.to_json()))
        self.diagnosis = diagnosis
        return diagnosis

    def _decline(self, diagnosis: Diagnosis) -> tuple[Outcome, str]:
        """A cause no repair of ours fixes: nothing changed, no attempt spent, the cause and next step recorded."""
        if self.diagnosis is None:
            self._step("classify", lambda: (diagnosis.explain()[:500], diagnosis.to_json()))
            self.diagnosis = diagnosis
        self.findings = [f"probe: {self._probes['probe'].get('status')}", *diagnosis.evidence]
        if diagnosis.disposition is Disposition.NOT_SERVER_SIDE and self.request.options.diagnose_only:
            return Outcome.HEALTHY, f"diagnose only: nothing to repair; {diagnosis.explain()}"
        if diagnosis.disposition is Disposition.NOT_SERVER_SIDE:
            return Outcome.HEALTHY, (
                "RDP works (probe healthy) and the in-guest check found nothing to repair: " + diagnosis.explain()
            )
        # Skipped, not failed: the product did what it should (named the cause, left the VM alone), and a storm
        # or a policy across a fleet must not open the circuit breaker that guards real repairs.
        return Outcome.SKIPPED, f"not changed: {diagnosis.explain()}"

    def _plan(self, step_name: str, facts: dict[str, Any], probe: str, done: frozenset[str]) -> Decision:
        """The engine's decision from the facts, recorded as a step so the journal says why each repair ran."""
        options = self.request.options
        context = Context(
            self._now(),
            self.settings.expiry_warning_days,
            options.plan,
            options.force,
            done,
            force_keystore=options.force_keystore,
            reboot_always=self.settings.reboot_policy == "always",
        )
        decision = decide(facts, probe, context)
        self._step(step_name, lambda: (decision.explain()[:500], decision.to_json()))
        return decision

    def _without_repairs(self, before: str, decision: Decision) -> tuple[Outcome, str]:
        """The verdict when nothing will be changed: diagnose-only, nothing to repair, or only refusals."""
        if decision.steps:
            return Outcome.PLANNED, "diagnose only: would " + ", then ".join(
                f"{s.action.value} ({s.reason})" for s in decision.steps
            )
        if not decision.clean or decision.refusals:
            outcome = Outcome.SKIPPED if self.request.options.plan is Plan.RENEW_ONLY else Outcome.FAILED
            return outcome, f"not repaired, nothing changed: {decision.explain()}"
        if self.request.options.diagnose_only:
            return Outcome.HEALTHY, "diagnose only: nothing to repair"
        if before in plans.PROBE_OK:
            return Outcome.HEALTHY, "RDP works (probe healthy) and the in-guest check found nothing to repair"
        if before in plans.PROBE_NO_PATH:
            return Outcome.HEALTHY, (
                "the in-guest check found nothing to repair (the probe has no network path "
                "to the VM, so RDP was not tested from outside)"
            )
        return Outcome.FAILED, (
            f"the probe says {before} but the in-guest check found nothing it can repair: "
            "check NSGs, the RDP listener configuration and the client side"
        )

    def _rounds(self, decision: Decision, ip: str | None) -> tuple[Outcome, str]:
        """Round after round of the plan, each verified; a next round only for new steps the facts call for."""
        done: frozenset[str] = frozenset()
        for number in range(1, plans.MAX_ROUNDS + 1):
            if number > 1:
                refusal = approved.before_round(number, decision.steps, self._approved_plan())
                refusal = refusal or self._attempts_refusal(number, decision)
                if refusal:
                    return Outcome.FAILED, refusal
            verdict = self._round(number, decision, ip, done)
            if not isinstance(verdict, _NextRound):
                return verdict
            done, decision = verdict.done, verdict.decision
        return Outcome.FAILED, f"still broken after {plans.MAX_ROUNDS} rounds: {decision.explain()}"

    def _require_approved(self, decision: Decision) -> None:
        """In approval mode, stop before any change when the fresh plan goes beyond the approved one."""
        beyond = approved.before_any_change(decision.steps, self._approved_plan())
        if beyond:
            raise _Stop(Outcome.SKIPPED, beyond)

    def _approved_plan(self) -> str | None:
        """The plan a person approved for this request (approval mode), or None: no approval binds it."""
        plan = self.ledger.request_fields(self.request.request_id, approved.APPROVED_PLAN).get(approved.APPROVED_PLAN)
        return plan if isinstance(plan, str) and plan else None

    def _attempts_refusal(self, number: int, decision: Decision) -> str | None:
        state = self.ledger.vm_state(self.request.vm)
        window_start = self._now() - dt.timedelta(hours=self.settings.attempt_window_hours)
        if state.attempts_since(window_start) >= self.settings.max_attempts:
            steps = ", ".join(s.action.value for s in decision.steps)
            return f"still broken: {decision.explain()}; no attempts left for {steps} (RDPR_MAX_ATTEMPTS)"
        self.ledger.record_attempt(self.request.vm, f"{self.request.request_id}#round-{number}")
        return None

    def _round(
        self, number: int, decision: Decision, ip: str | None, done: frozenset[str]
    ) -> tuple[Outcome, str] | _NextRound:
        """The plan's steps, reboot, wait, verify. A verdict, or what ran and the next decision."""
        suffix = "" if number == 1 else f"-{number}"
        summaries = self._execute_until_refused(decision.steps, suffix, self._round_probe, done)
        refused = [f"{s['script']} refused: {s['refused']}" for s in summaries if s.get("refused")]
        if not any(s["changed"] for s in summaries):
            # Nothing changed: no reboot, nothing to verify, and a refusal is never a reason to go further.
            return Outcome.FAILED, "; ".join(refused) or f"the repairs changed nothing: {decision.explain()}"
        self._changed = True
        if self._should_reboot(summaries):
            self._await_window(f"reboot{suffix}")
            self._step(f"reboot{suffix}", self._reboot)
            self._step(f"wait{suffix}", lambda: self._wait(f"reboot{suffix}"))
        after = self._probe(f"verify{suffix}", ip, wait=True)
        self.verification = after  # the verdict carries it even if the in-guest check then fails
        guest = self._script("diagnose", step_name=f"verify-guest{suffix}")
        ran = done | {step.key for step, s in zip(decision.steps, summaries, strict=False) if not s.get("refused")}
        following = self._plan(f"plan{suffix or '-1'}-after", guest, after, ran)
        self._round_probe = after
        if after in plans.PROBE_OK and following.clean:
            return Outcome.REMEDIATED, f"verified: RDP works again (probe {after}) and the in-guest check is clean"
        if after in plans.PROBE_NO_PATH and following.clean:
            return Outcome.UNVERIFIED, (
                f"repaired and the in-guest check is clean, but the probe cannot reach the "
                f"VM ({after}): give the function a network path (VNet integration) to "
                "verify from outside"
            )
        still = f"still broken after {', '.join(s.action.value for s in decision.steps)}: probe {after}"
        if refused or decision.refusals or self.request.options.plan is not Plan.AUTO or not following.steps:
            return Outcome.FAILED, "; ".join([still, *refused, following.explain()])
        return _NextRound(ran, following)

    def _execute_until_refused(
        self, steps: tuple[PlannedStep, ...], suffix: str, probe: str, done: frozenset[str]
    ) -> list[dict[str, Any]]:
        """The planned steps in order, stopping at the first a script refuses: its re-check found the facts
        changed (a session appeared, the listener moved on), so the steps planned after it rest on stale facts."""
        self._admit_change()
        summaries: list[dict[str, Any]] = []
        for step in steps:
            summaries.append(self._execute(step, suffix, probe, done))
            if summaries[-1].get("refused"):
                break
        return summaries

    def _execute(self, step: PlannedStep, suffix: str, probe: str, done: frozenset[str]) -> dict[str, Any]:
        """One planned step: its script on its named target. The journal keeps the target and the reason.

        `probe` and `done` are what the plan was decided from: a rerun whose earlier run may have made the
        change is resolved by deciding again from fresh facts (`_resolve_repair`)."""
        parameters = dict(step.parameters)
        if step.script == "renew-certificate" and self.request.options.force:
            parameters["Force"] = "true"  # sessions only; the store reset's Force comes from the plan's target
        return self._script(
            step.script,
            step_name=f"{step.action.value}{suffix}",
            parameters=parameters,
            planned=(step, probe, done),
        )

    def _proactive_renewal(self, ip: str | None, before: str) -> tuple[Outcome, str]:
        facts = self._script("diagnose")
        decision = self._plan("plan", facts, before, frozenset())
        if not decision.steps:
            if decision.refusals:
                return Outcome.SKIPPED, f"not renewed: {decision.explain()}"
            return Outcome.HEALTHY, "the certificate did not need renewal"
        self._require_approved(decision)
        summaries = self._execute_until_refused(decision.steps, "", before, frozenset())
        refused = [f"{s['script']} refused: {s['refused']}" for s in summaries if s.get("refused")]
        if not any(s["changed"] for s in summaries):
            return Outcome.SKIPPED, "; ".join(refused) or "the renewal changed nothing"
        self._changed = True
        self.verification = self._probe("verify", ip, wait=True)
        if self.verification in plans.PROBE_OK:
            return Outcome.REMEDIATED, f"certificate renewed without a reboot (probe {self.verification})"
        if self.verification in plans.PROBE_NO_PATH:
            return Outcome.UNVERIFIED, (
                f"certificate renewed without a reboot; the probe cannot reach the VM "
                f"({self.verification}) to confirm it"
            )
        return Outcome.FAILED, f"certificate renewed but the probe now says {self.verification}"

    # --- the actions behind the steps ---------------------------------------------------------------------

    def _script(
        self,
        name: str,
        step_name: str | None = None,
        parameters: dict[str, str] | None = None,
        planned: tuple[PlannedStep, str, frozenset[str]] | None = None,
    ) -> dict[str, Any]:
        from remediate.azure.runcommand import run_script

        holder: list[dict[str, Any]] = []
        repair = name != "diagnose"
        earlier = self._require_journal().find(step_name or name)
        # A repair that started before and has no recorded end: its script runs again (it is idempotent), and
        # what it reports is not trusted on its own (the earlier run may have made the change).
        posts = [1] if repair and earlier is not None and earlier.status in (STARTED, FAILED) else []

        def run() -> tuple[str, dict[str, Any] | None]:
            summary = run_script(
                self.clients,
                self.request.vm,
                name,
                parameters or {},
                self._deadline,
                agent_deadline=self._agent_deadline(),
                posted=lambda: posts.append(1),
                single_post=repair,
            )
            # Resumed: an earlier POST of this step (another delivery's, or this call's own retry after a lost
            # answer) may have run the script, so "no change" or "refused" may describe the change it made.
            if repair and len(posts) > 1:
                summary = self._resolve_repair(summary, planned)
            holder.append(summary)
            return _describe(summary), summary

        step = self._step(step_name or name, run)
        summary = holder[0] if holder else dict(step.summary or {})
        if name != "diagnose" and summary.get("changed"):
            self.actions.extend(a for a in summary.get("actions", []) if a not in self.actions)
        return summary

    def _resolve_repair(
        self, summary: dict[str, Any], planned: tuple[PlannedStep, str, frozenset[str]] | None
    ) -> dict[str, Any]:
        """A rerun repair, resolved from evidence: diagnose again (read-only) and decide again from the facts
        the plan was made from; the planned step no longer needed means the change was made."""
        from remediate.azure.runcommand import run_script

        if planned is None or not evidence.needs_resolving(summary):
            return evidence.mark_resumed(summary)
        step, probe, done = planned
        facts = run_script(self.clients, self.request.vm, "diagnose", {}, self._deadline)
        options = self.request.options
        context = Context(self._now(), self.settings.expiry_warning_days, options.plan, options.force, done)
        return evidence.resolve_repair(summary, step, decide(facts, probe, context))

    def _should_reboot(self, summaries: list[dict[str, Any]]) -> bool:
        if self.settings.reboot_policy == "always":
            return any(s["changed"] for s in summaries)
        return any(s["reboot_required"] for s in summaries)

    def _reboot(self) -> tuple[str, dict[str, Any] | None]:
        """Finishes as soon as Azure accepts: the step then holds the operation's continuation token, so a
        failure while polling (or a dead worker) is resumed by the wait step without a second restart.

        The POST is sent without transport retries. When its answer is lost (5xx, dropped connection, or a 409
        saying a restart is already running), the Activity Log decides: accepted means done; not accepted means
        one more attempt, up to RDPR_RETRY_TOTAL; unknown leaves the step open for the next delivery.
        """
        name = self._current_step or "reboot"
        current = self._require_journal().find(name)
        sent_after = current.started_at if current is not None else self._wall()
        correlation_id = restart_correlation_id(self.request.request_id, name)
        attempts = 0
        while True:
            attempts += 1
            if self._lease is not None:
                self._lease.check()  # journal.start's storage retries may have outlasted the lease
            try:
                self._restart_poller = azure_vm.begin_restart(self.clients, self.request.vm, correlation_id)
            except TransientError as exc:
                fate = self._restart_fate(sent_after, name)
                if fate.accepted:
                    return f"restart accepted by Azure ({fate.detail}; its answer was lost)", {"evidence": fate.detail}
                if fate.accepted is None or attempts > self.settings.retry_total:
                    raise TransientError(f"{exc.reason}; {fate.detail}") from exc
                self._sleep(min(self.settings.retry_backoff_seconds * 2**attempts, 30.0, self._remaining()))
                sent_after = self._wall()
                continue
            return "restart accepted by Azure", {
                "continuationToken": self._restart_poller.continuation_token(),
                "correlationId": correlation_id,
            }

    def _wait(self, reboot_step: str) -> tuple[str, dict[str, Any] | None]:
        """Azure's restart operation, then the VM's own readiness: both within one end time."""
        end = self._monotonic() + min(self.settings.boot_timeout_seconds, self._remaining())
        poller = self._restart_poller
        reboot = self._require_journal().find(reboot_step)
        token = (reboot.summary or {}).get("continuationToken") if reboot is not None else None
        if poller is None and token:
            poller = azure_vm.resume_restart(self.clients, self.request.vm, token)
        ended = ""
        if poller is not None:
            try:
                azure_vm.finish_restart(poller, self.request.vm, max(end - self._monotonic(), 0.0))
            except azure_vm.RestartFailed as exc:
                # Azure took the restart and its operation failed or was canceled: the VM may have restarted
                # anyway, so it is never sent again (that could reboot it twice). The VM's readiness and the
                # verify steps say whether it worked.
                ended = f"; the restart operation did not succeed ({exc.reason}), not sent again"
        self._restart_poller = None
        # When Azure accepted the restart (the reboot step's end, in the journal's clock): a status reported
        # before that is from before the reboot.
        asked = (reboot.finished_at or reboot.started_at) if reboot is not None else time.time()
        view = azure_vm.wait_until_ready(
            self.clients,
            self.request.vm,
            max(end - self._monotonic(), 0.0),
            since=dt.datetime.fromtimestamp(asked, dt.UTC),  # an agent Ready older than the restart is stale
            poll_seconds=Cadence.from_settings(self.settings).delay,
            clock=self._monotonic,
            sleep=self._sleep,
        )
        return "running, agent ready" + ended, {"powerState": view.power_state, "restartEnded": ended or "ok"}

    def _probe(self, step_name: str, ip: str | None, *, wait: bool) -> str:
        step = self._step(step_name, lambda: self._probe_action(ip, wait))
        self._probes[step_name] = dict(step.summary or {})
        return str((step.summary or {}).get("status", "unknown"))

    def _probe_action(self, ip: str | None, wait: bool) -> tuple[str, dict[str, Any] | None]:
        from remediate.probe import probe

        if ip is None:
            return "no private IP to probe", {"status": "no-address"}
        window = min(self.settings.boot_timeout_seconds, self._remaining()) if wait else 0.0
        give_up = self._monotonic() + window
        while True:
            result = probe(
                ip,
                self.settings.rdp_port,
                timeout=self.settings.probe_timeout_seconds,
                expiry_warning_days=self.settings.expiry_warning_days,
            )
            # A VM that just booted may take a while to start its listener: retry until the window closes.
            if result.status in plans.PROBE_OK or self._monotonic() >= give_up:
                return result.detail, result.to_json()
            self._sleep(min(self._poll_seconds(), max(give_up - self._monotonic(), 0.0)))

    # --- bookkeeping --------------------------------------------------------------------------------------

    def _record(self, outcome: Outcome, reason: str, duration: float) -> WorkflowResult:
        """The outcome (written once) and then, in one write, the VM row's cooldown and lock release."""
        journal = self._require_journal()
        steps = journal.steps
        # Rebooted means Azure accepted a restart, as the journal proves it (also for a restart an earlier
        # delivery of this request asked for); a restart whose fate is unknown is said so, not counted.
        self.rebooted = accepted_restarts(steps) > 0
        if any(is_reboot(s) and s.status == UNKNOWN for s in steps):
            reason += "; whether Azure accepted a restart could not be established (see the reboot step)"
        changed = self._changed or may_have_changed(steps)
        failed_step = self._current_step if outcome is Outcome.FAILED else None
        at = self._now()
        wrote = self.ledger.record_outcome(
            self.request.request_id,
            outcome,
            reason,
            failed_step=failed_step,
            rebooted=self.rebooted,
            changed=changed,
            at=at,
        )
        if not wrote:  # another execution's verdict came first and stands
            record = self.ledger.get(self.request.request_id)
            if record is not None:
                self.ledger.complete_finish(record)
                return _recorded_result(record)
        if not self._locked_out or changed:
            # Cooldown (only if the VM may have changed), last outcome and release: one conditional write.
            # Also frees a lock an earlier delivery of this request took and never gave back; a lock held by
            # another request is left alone (finish_vm releases only its own).
            self.ledger.finish_vm(self.request.vm, self.request.request_id, outcome.value, changed=changed, at=at)
        log.info("remediation finished", extra={**self._log_fields(), "outcome": outcome.value, "reason": reason})
        return WorkflowResult(
            self.request.request_id,
            str(self.request.vm),
            outcome,
            reason,
            failed_step,
            self.rebooted,
            self.findings,
            self.actions,
            self.verification,
            duration,
            steps,
            self.diagnosis.to_json() if self.diagnosis is not None else None,
        )

    def _check_deadline(self, step: str) -> None:
        if self._monotonic() >= self._deadline:
            raise PermanentError(
                f"workflow deadline ({self.settings.workflow_deadline_minutes} min) reached before step {step}"
            )

    def _remaining(self) -> float:
        return max(self._deadline - self._monotonic(), 0.0)

    def _agent_deadline(self) -> float | None:
        """Until when (monotonic) an unresponsive VM agent may still be coming back from this request's last
        reboot; None when the request has not rebooted the VM."""
        reboots = [s for s in self._require_journal().steps if s.name.startswith("reboot") and s.status != SKIPPED]
        if not reboots:
            return None
        since_reboot = time.time() - reboots[-1].started_at  # the journal's clock
        return self._monotonic() + self.settings.boot_timeout_seconds - since_reboot

    def _poll_seconds(self) -> float:
        return self.settings.poll_interval_seconds if self.settings.poll_interval_seconds is not None else 10.0

    def _require_journal(self) -> Journal:
        assert self._journal is not None, "run() creates the journal"
        return self._journal

    def _log_fields(self) -> dict[str, Any]:
        return {"vm": str(self.request.vm), "request_id": self.request.request_id, "step": self._current_step}


def _describe(summary: dict[str, Any]) -> str:
    if summary.get("refused"):
        return f"refused: {summary['refused']}"[:500]
    if summary["errors"]:
        return "; ".join(summary["errors"])[:500]
    if summary["actions"]:
        return "; ".join(summary["actions"])[:500]
    return "no change needed" if not summary["detect_only"] else "detect only"


def _no_progress(step: str, detail: str) -> None:
    """Default progress sink: the ledger and the logs already record every step."""


def _recorded_result(record: AuditRecord) -> WorkflowResult:
    """The verdict already in the ledger, for a request delivered again after it finished."""
    return WorkflowResult(
        record.request_id,
        record.vm,
        Outcome(record.outcome or Outcome.FAILED),
        record.outcome_reason,
        record.failed_step,
        record.rebooted,
        steps=record.steps,
    )
