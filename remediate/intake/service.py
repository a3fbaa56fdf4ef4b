"""The HTTP intake: decide which VMs a trigger is about, hand one request per VM to a sink, answer at once.

`AlertIntake` serves `POST /api/alerts` (Azure Monitor action groups) and `RunbookIntake` serves
`POST /api/remediations` (runbooks and operators). Both turn a body into an `IntakeAnswer` (status + JSON) and
never call Azure themselves: the only outside calls are the `ComputerResolver` (a log alert's `Computer`
dimension to VMs), the selector expansion for runbook selectors, and the sink (ledger + queue). Nothing in the
engine runs here: an action group waits at most 10 seconds and retries on 408/429/503/504.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from remediate.intake.alerts import (
    MAX_VMS_PER_ALERT,
    Alert,
    Condition,
    Ignored,
    Located,
    computer_lookup_name,
    locate,
    parse_alert,
)
from remediate.intake.claims import given_back_on_failure
from remediate.intake.requests import (
    MAX_VMS_PER_REQUEST,
    BadRequest,
    RunbookBody,
    Selector,
    clip,
    parse_runbook,
    printable,
)
from remediate.model import (
    PermanentError,
    Plan,
    RemediationOptions,
    RemediationRequest,
    Trigger,
    VmId,
    azure_key,
)
from remediate.settings import Settings

if TYPE_CHECKING:
    from remediate.ledger import VmState

logger = logging.getLogger(__name__)
# Distinct computer names one alert may have looked up: one Resource Graph query's worth (its name batch). An
# alert naming thousands would otherwise cost one tenant-scope query per hundred names, against Resource
# Graph's per-identity quota of about 15 queries per 5 seconds that every other lookup shares.
MAX_COMPUTERS_PER_ALERT = 100
_TOO_MANY_COMPUTERS = (
    f"not looked up: the alert names more than {MAX_COMPUTERS_PER_ALERT} computers; "
    "only the first are resolved (alert per machine, or by resource id)"
)
_A = TypeVar("_A")
_R = TypeVar("_R")

STATUS_ROUTE = "/api/remediations/"


class IntakeSink(Protocol):
    def claim(self, dedup_key: str) -> bool:
        """True the first time a key is seen (ledger-backed in the Function)."""
        ...

    def unclaim(self, dedup_key: str) -> None:
        """Give `dedup_key` back: its request could not be queued, so a retry must not be a duplicate."""
        ...

    def enqueue(self, request: RemediationRequest) -> None: ...

    def admit(self, request: RemediationRequest, pending_for: dt.timedelta) -> str | None:
        """Coalescing: None when `request` is now its VM's pending request, else the pending one's id."""
        ...

    def release(self, request: RemediationRequest) -> None:
        """Undo `admit` for a request that could not be queued."""
        ...

    def vm_state(self, vm: VmId) -> VmState | None:
        """The VM's ledger row (cooldown, attempts), or None where there is no ledger (what-if tools)."""
        ...


class ComputerResolver(Protocol):
    """Computer names -> the VMs in the scopes that carry them (an empty list for a name nobody has).

    Intake passes no scopes: every VM the identity can see, so that a name an out-of-scope machine shares
    with an in-scope one is recognised as ambiguous instead of being applied to the in-scope one.
    """

    def __call__(self, computers: list[str], scopes: tuple[str, ...], /) -> dict[str, list[VmId]]: ...


SelectorExpander = Callable[[Selector], list[VmId]]


@dataclass(frozen=True)
class IntakeAnswer:
    """What the HTTP trigger returns: a status and a JSON body."""

    status: int
    body: dict[str, Any]


class RecordingSink:
    """An in-process sink: keeps the requests instead of queueing them.

    With `deduplicate=False` every key is new (what-if tools); with True it remembers keys like the ledger.
    """

    def __init__(self, *, deduplicate: bool = False) -> None:
        self.deduplicate = deduplicate
        self.keys: set[str] = set()
        self.requests: list[RemediationRequest] = []

    def claim(self, dedup_key: str) -> bool:
        if not self.deduplicate:
            return True
        if dedup_key in self.keys:
            return False
        self.keys.add(dedup_key)
        return True

    def unclaim(self, dedup_key: str) -> None:
        self.keys.discard(dedup_key)

    def enqueue(self, request: RemediationRequest) -> None:
        self.requests.append(request)

    def admit(self, request: RemediationRequest, pending_for: dt.timedelta) -> str | None:
        """Nothing is ever pending here: coalescing is the ledger's (a recorder shows every request)."""
        del request, pending_for
        return None

    def release(self, request: RemediationRequest) -> None:
        del request

    def vm_state(self, vm: VmId) -> VmState | None:
        del vm
        return None


def error_answer(exc: BadRequest) -> IntakeAnswer:
    return IntakeAnswer(exc.status, exc.to_body())


class Unavailable(Exception):
    """A collaborator (lookup, inventory, ledger, queue) failed in a way a retry may fix: answer 503.

    Anything such a collaborator raises, other than a documented permanent refusal, lands here: they all
    talk to Azure, and an action group retries a 503 while it gives up on a 500.
    """

    def __init__(self, what: str, cause: Exception) -> None:
        super().__init__(f"{what} is unavailable right now; try again shortly")
        self.what = what
        # The cause goes to the log, not to the caller: Azure error texts can describe our internals.
        self.detail = f"{type(cause).__name__}: {clip(str(cause), 300)}"

    def answer(self) -> IntakeAnswer:
        logger.warning("intake unavailable: %s (%s)", self, self.detail, extra={"dependency": self.what})
        return IntakeAnswer(503, {"error": {"code": "ServiceUnavailable", "message": str(self), "field": None}})


def _sink_call(what: str, call: Callable[[_A], _R], argument: _A) -> _R:
    try:
        return call(argument)
    except UnicodeError as exc:
        # Text the ledger cannot encode is the caller's, not a failing dependency: a 503 would make an action
        # group retry the same poison forever. (The body walk refuses such text first; this is the backstop.)
        raise BadRequest("body", f"body contains text that cannot be stored ({type(exc).__name__})") from exc
    except BadRequest:
        raise
    except Exception as exc:
        raise Unavailable(what, exc) from exc


def _status_url(request: RemediationRequest) -> str:
    return STATUS_ROUTE + request.request_id


# --- Alerts --------------------------------------------------------------------------------------------


@dataclass
class AlertDecision:
    """Everything the alert endpoint decided about one delivery; `answer` is what goes back over HTTP."""

    answer: IntakeAnswer
    alert: Alert | None = None
    error: BadRequest | None = None
    accepted: list[RemediationRequest] = field(default_factory=list)
    duplicates: list[VmId] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)
    unresolved: list[dict[str, str]] = field(default_factory=list)
    absorbed: list[dict[str, str]] = field(default_factory=list)  # {"vm", "pendingRequestId", "statusUrl"}

    @property
    def reason(self) -> str:
        if self.error is not None:
            return self.error.reason
        return str(self.answer.body.get("reason", ""))


class AlertIntake:
    """`POST /api/alerts`: a common-schema alert in, one remediation request per (alert, VM) out."""

    def __init__(
        self,
        sink: IntakeSink,
        settings: Settings,
        resolve_computers: ComputerResolver | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._settings = settings
        self._resolve = resolve_computers
        self._clock = clock

    def handle(self, body: bytes) -> IntakeAnswer:
        return self.decide(body).answer

    def decide(self, body: bytes) -> AlertDecision:
        started = self._clock()
        try:
            decision = self._decide(body)
        except BadRequest as exc:
            decision = AlertDecision(error_answer(exc), error=exc)
        self._log(decision, self._clock() - started)
        return decision

    def _decide(self, body: bytes) -> AlertDecision:
        alert = parse_alert(body)
        if alert.condition is Condition.RESOLVED:
            reason = f"monitorCondition is Resolved: nothing to do for the {alert.family.value} {clip(alert.rule)!r}"
            return AlertDecision(IntakeAnswer(200, {"reason": reason, "alertId": alert.alert_id}), alert)
        located = locate(alert)
        ignored = list(located.ignored)
        if located.overflow:
            ignored.append(
                Ignored(f"{located.overflow} more VMs", f"the alert names more than {MAX_VMS_PER_ALERT} VMs")
            )
        try:
            unresolved = self._resolve_computers(located)
            submitted = self._submit(alert, located)
        except Unavailable as exc:
            # The dedup keys make the action group's retry safe: what was enqueued stays enqueued once.
            return AlertDecision(exc.answer(), alert)
        ignored += submitted.ignored
        answer = _alert_answer(alert, submitted, ignored, unresolved)
        return AlertDecision(
            answer, alert, None, submitted.accepted, submitted.duplicates, ignored, unresolved, submitted.absorbed
        )

    def _resolve_computers(self, located: Located) -> list[dict[str, str]]:
        """Map `Computer` names to VMs (adding them to `located`); return the names left unresolved."""
        if not located.computers:
            return []
        unresolved: list[dict[str, str]] = []
        lookup: dict[str, str] = {}  # computer name to look up -> name as the alert gave it
        skipped: list[str] = []
        for given in located.computers.values():
            name = computer_lookup_name(given)
            if name is None:
                unresolved.append({"computer": clip(given), "reason": "not a Windows computer name"})
            elif len(lookup) >= MAX_COMPUTERS_PER_ALERT and name not in lookup:
                skipped.append(given)
            else:
                lookup.setdefault(name, given)
        if skipped:  # one entry for all of them: the answer stays small however many the alert names
            shown = f"{clip(skipped[0])} and {len(skipped) - 1} more" if len(skipped) > 1 else clip(skipped[0])
            unresolved.append({"computer": shown, "reason": _TOO_MANY_COMPUTERS})
        if not lookup:
            return unresolved
        found = self._lookup(lookup, unresolved)
        if found is None:
            return unresolved
        folded = {azure_key(key): vms for key, vms in found.items()}
        for name, given in lookup.items():
            vms = list(dict.fromkeys(folded.get(azure_key(name), [])))
            reason = self._computer_refusal(vms)
            if reason is None:
                located.add_vm(vms[0], f"Computer dimension {clip(given)!r}")
            else:
                unresolved.append({"computer": clip(given), "reason": reason})
        return unresolved

    def _computer_refusal(self, visible: list[VmId]) -> str | None:
        """None when exactly one visible VM has the name and it is in scope; else why not."""
        in_scope = [vm for vm in visible if vm.in_scope(self._settings.scopes)]
        if len(visible) > 1:
            # Computer names are not unique across groups and subscriptions: never guess, not even when only
            # one of them is in scope (the alert may well be about the other one).
            return f"{len(visible)} VMs have this computer name ({len(in_scope)} in scope); not guessing which one"
        if visible and not in_scope:
            return "the only VM with this computer name is outside the configured scope (RDPR_SCOPES)"
        if not visible:
            return "no VM visible to this identity has this computer name"
        return None

    def _lookup(self, lookup: dict[str, str], unresolved: list[dict[str, str]]) -> dict[str, list[VmId]] | None:
        """Call the resolver for the names in `lookup`; None (names added to `unresolved`) when we cannot."""
        resolve = self._resolve
        reason = ""
        if resolve is None:
            reason = "computer names are not looked up here (offline)"
        elif not self._settings.scopes:
            reason = "RDPR_SCOPES is empty: there is no scope to look the computer name up in"
        else:
            try:
                return resolve(list(lookup), ())  # everything visible; scope is applied afterwards
            except PermanentError as exc:  # e.g. a name the lookup refuses: retrying would not help
                reason = f"the lookup failed: {clip(exc.reason, 300)}"
            except Exception as exc:
                raise Unavailable("the computer-name lookup", exc) from exc
        unresolved.extend({"computer": clip(given), "reason": reason} for given in lookup.values())
        return None

    def _submit(self, alert: Alert, located: Located) -> _Submitted:
        """Per VM, cheapest check first: the ledger's cooldown (a read, no Azure call), the alert's dedup key,
        then coalescing (one pending request per VM absorbs the rest), and only then a new request."""
        options = RemediationOptions(Plan.AUTO, dry_run=self._settings.dry_run)
        pending_for = dt.timedelta(minutes=self._settings.lock_minutes)
        done = _Submitted()
        for vm, source in located.vms.items():
            key = f"alert:{alert.alert_id}:{vm.key}"
            reason = f"Azure Monitor {alert.family.value} {clip(alert.rule)!r} fired (VM from the {source})"
            request = RemediationRequest(vm, Trigger.ALERT, reason, options, key)
            refusal = self._history_refusal(request)
            if refusal is not None:
                done.ignored.append(Ignored(str(vm), refusal))
            elif not _sink_call("the ledger", self._sink.claim, key):
                done.duplicates.append(vm)
            else:
                with given_back_on_failure(self._sink.unclaim, key):  # a 503 now must not make the retry a duplicate
                    self._admit_and_enqueue(request, pending_for, done)
        return done

    def _admit_and_enqueue(self, request: RemediationRequest, pending_for: dt.timedelta, done: _Submitted) -> None:
        vm = request.vm
        pending = _sink_call("the ledger", lambda r: self._sink.admit(r, pending_for), request)
        if pending is not None:
            done.duplicates.append(vm)
            done.absorbed.append({"vm": str(vm), "pendingRequestId": pending, "statusUrl": STATUS_ROUTE + pending})
            logger.info("alert absorbed by a pending request", extra={"vm": str(vm), "request_id": pending})
        else:
            self._enqueue(request)
            done.accepted.append(request)

    def _history_refusal(self, request: RemediationRequest) -> str | None:
        from remediate.engine.policy import history_refusal  # lazy: the engine is not needed to refuse bad input

        state = _sink_call("the ledger", self._sink.vm_state, request.vm)
        if state is None:
            return None
        return history_refusal(self._settings, state, request, dt.datetime.now(dt.UTC))

    def _enqueue(self, request: RemediationRequest) -> None:
        try:
            _sink_call("the request queue", self._sink.enqueue, request)
        except Exception:
            try:
                self._sink.release(request)
            except Exception:  # the ledger may be what failed; the pending slot then expires on its own
                logger.warning("could not release a pending slot", exc_info=True, extra={"vm": str(request.vm)})
            raise

    def _log(self, decision: AlertDecision, seconds: float) -> None:
        extra = {
            "status": decision.answer.status,
            "alert_id": decision.alert.alert_id if decision.alert else None,
            "request_ids": [r.request_id for r in decision.accepted],
            "vm_ids": [str(r.vm) for r in decision.accepted],
            "duration_ms": round(seconds * 1000, 3),
        }
        if decision.error is not None:
            logger.warning("alert refused: %s", decision.error.reason, extra=extra)
        else:
            logger.info("alert handled: %s", decision.reason or "accepted", extra=extra)


@dataclass
class _Submitted:
    accepted: list[RemediationRequest] = field(default_factory=list)
    duplicates: list[VmId] = field(default_factory=list)
    absorbed: list[dict[str, str]] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)


def _alert_answer(
    alert: Alert,
    submitted: _Submitted,
    ignored: list[Ignored],
    unresolved: list[dict[str, str]],
) -> IntakeAnswer:
    accepted, duplicates = submitted.accepted, submitted.duplicates
    lists: dict[str, Any] = {
        "vms": [str(r.vm) for r in accepted],
        "ignored": [item.to_json() for item in ignored],
        "unresolved": unresolved,
        "duplicates": [str(vm) for vm in duplicates],
        "pending": submitted.absorbed,
    }
    if accepted:
        body = {
            "requestIds": [r.request_id for r in accepted],
            "statusUrls": [_status_url(r) for r in accepted],
            **lists,
        }
        return IntakeAnswer(202, body)
    if submitted.absorbed and len(submitted.absorbed) == len(duplicates):
        reason = "a remediation of this VM is already pending; this alert is recorded as its duplicate"
    elif duplicates:
        reason = "already accepted for this alert: a repeated delivery of the same alert changes nothing"
    elif unresolved:
        reason = "no computer name in the alert could be mapped to exactly one VM in scope"
    elif ignored:
        reason = f"the {alert.family.value} names no virtual machine we can act on"
    else:
        reason = f"the {alert.family.value} names no resource at all"
    return IntakeAnswer(200, {"reason": reason, "alertId": alert.alert_id, **lists})


# --- Runbook -------------------------------------------------------------------------------------------


class RunbookIntake:
    """`POST /api/remediations`: explicit VM ids or a selector in, one request per VM out, no dedup."""

    def __init__(self, sink: IntakeSink, settings: Settings, expand_selector: SelectorExpander | None) -> None:
        self._sink = sink
        self._settings = settings
        self._expand = expand_selector

    def handle(self, body: bytes, caller: str | None) -> IntakeAnswer:
        try:
            request = parse_runbook(body, dry_run_default=self._settings.dry_run)
            vms = request.vms if request.selector is None else self._expand_selector(request.selector)
        except BadRequest as exc:
            logger.warning("runbook request refused: %s", exc.reason, extra={"status": exc.status, "caller": caller})
            return error_answer(exc)
        except Unavailable as exc:
            return exc.answer()
        if not vms:
            assert request.selector is not None
            reason = f"no VM matches {request.selector.describe()}"
            return IntakeAnswer(200, {"reason": reason, "requestIds": [], "statusUrls": [], "vms": []})
        try:
            accepted = self._submit(request, vms, caller)
        except BadRequest as exc:
            return error_answer(exc)
        except Unavailable as exc:
            return exc.answer()
        logger.info(
            "runbook request accepted",
            extra={"caller": caller, "request_ids": [r.request_id for r in accepted], "vm_count": len(accepted)},
        )
        return IntakeAnswer(
            202,
            {
                "requestIds": [r.request_id for r in accepted],
                "statusUrls": [_status_url(r) for r in accepted],
                "vms": [str(r.vm) for r in accepted],
            },
        )

    def _expand_selector(self, selector: Selector) -> tuple[VmId, ...]:
        field_name = "tag" if selector.tag_name else "resourceGroup" if selector.resource_group else "subscription"
        if not self._settings.scopes:
            raise BadRequest(
                field_name,
                f"{field_name}: nothing is in scope (RDPR_SCOPES is empty), so no selector can match",
                code="OutOfScope",
                status=403,
            )
        if not selector.overlaps(self._settings.scopes):
            raise BadRequest(
                field_name,
                f"{field_name}: {selector.describe()} is outside the configured scope (RDPR_SCOPES)",
                code="OutOfScope",
                status=403,
            )
        if self._expand is None:
            raise BadRequest(
                "subscription",
                "subscription selectors are not available on this endpoint; list the VMs in vms instead",
                code="SelectorUnavailable",
            )
        try:
            found = self._expand(selector)
        except PermanentError as exc:
            raise BadRequest(field_name, f"{field_name}: {exc.reason}", code="SelectorFailed") from None
        except Exception as exc:
            raise Unavailable("the VM inventory", exc) from exc
        unique = tuple(dict.fromkeys(found))
        if len(unique) > MAX_VMS_PER_REQUEST:
            raise BadRequest(
                field_name,
                f"{field_name}: {selector.describe()} matches {len(unique)} VMs; at most "
                f"{MAX_VMS_PER_REQUEST} per call (narrow it with resourceGroup or tag)",
                code="TooManyVms",
            )
        return unique

    def _submit(self, request: RunbookBody, vms: tuple[VmId, ...], caller: str | None) -> list[RemediationRequest]:
        reason = "runbook request" + (f" by {printable(clip(caller, 200))}" if caller else "")
        if request.reason:
            reason += f": {request.reason}"
        accepted = []
        for vm in vms:
            remediation = RemediationRequest(vm, Trigger.RUNBOOK, reason, request.options)
            _sink_call("the request queue", self._sink.enqueue, remediation)
            accepted.append(remediation)
        return accepted
