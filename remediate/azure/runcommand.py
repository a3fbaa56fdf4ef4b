"""Run a guest script on a VM through the action Run Command and return its validated JSON summary.

The script text goes as `RunPowerShellScript` lines and its parameters as `RunCommandInputParameter`s (never
interpolated into the text). Azure runs one Run Command per VM at a time, and answers 409 "execution is in
progress" for a while even after a command has just succeeded: that is transient and retried with exponential
backoff and jitter until the caller's deadline. A Run Command needs the VM agent; sent while the agent is
down, it waits for it and may end `Failed` with `VMAgentStatusCommunicationError`: right after a reboot that is
transient until the caller's agent deadline (the boot deadline). Any other failed operation, output without a
summary, or a summary that breaks the contract is permanent, and the error quotes the end of StdOut/StdErr.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential

from remediate.azure.errors import ErrorKind, classify_error
from remediate.azure.polling import cadence_polling
from remediate.guest.contract import PARAMETERS, parse_output, script_text
from remediate.model import PermanentError, TransientError, VmId

if TYPE_CHECKING:
    from azure.core.exceptions import HttpResponseError
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.compute.models import RunCommandInput, RunCommandResult

    from remediate.settings import Settings

log = logging.getLogger(__name__)

COMMAND_ID = "RunPowerShellScript"
# Backoff between attempts: full jitter over 1 s .. 2 s * 2^n, at most 60 s, never past the deadline. The first
# retry comes soon: the usual 409 is the short "in progress" that follows a command that has just finished.
RETRY_MIN_SECONDS = 1.0
RETRY_MULTIPLIER_SECONDS = 2.0
RETRY_MAX_SECONDS = 60.0
# The operation failed because the VM agent did not answer (Microsoft Learn, "Understand common error messages
# when you manage virtual machines": VMAgentStatusCommunicationError).
AGENT_UNRESPONSIVE = "VMAgentStatusCommunicationError"


class ComputeClients(Protocol):
    """What this module needs from `remediate.azure.clients.AzureClients`."""

    @property
    def settings(self) -> Settings: ...

    def compute(self, subscription_id: str) -> ComputeManagementClient: ...


def run_script(
    clients: ComputeClients,
    vm: VmId,
    script: str,
    parameters: Mapping[str, str],
    deadline: float,
    *,
    agent_deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    posted: Callable[[], None] | None = None,
    single_post: bool = False,
) -> dict[str, Any]:
    """Run guest script `script` on `vm` and return its summary, validated against the contract.

    `deadline` is a `clock()` time: no attempt starts, and no wait lasts, beyond it. `agent_deadline` (a
    `clock()` time, after a reboot) is until when an agent that does not answer is still expected back.
    Raises TransientError when the VM stayed busy or its agent stayed away until the deadline, PermanentError
    otherwise. `posted` is called before every Run Command POST, so a caller can tell that an earlier POST of
    this call may have been accepted (its script then ran, whatever this attempt reports). `single_post=True`
    sends each POST without transport retries: azure-core re-sends a POST after a 500/503/504, which for a
    repair would run it again unseen; only this module's own retries (counted through `posted`) send it again.
    """
    command = _command(script, parameters)
    compute = clients.compute(vm.subscription)
    polling = cadence_polling(clients.settings)
    retrying = Retrying(
        retry=retry_if_exception_type(TransientError),
        wait=wait_random_exponential(multiplier=RETRY_MULTIPLIER_SECONDS, max=RETRY_MAX_SECONDS, min=RETRY_MIN_SECONDS),
        stop=_until(deadline, clock),
        sleep=sleep,
        before_sleep=_log_retry(vm, script),
        reraise=True,
    )
    attempt = _Attempt(compute, vm, script, command, polling, deadline, agent_deadline, clock, posted, single_post)
    stdout, stderr = retrying(attempt.run)
    summary = parse_output(stdout, stderr, script)
    log.info(
        "guest script finished",
        extra={
            "vm": str(vm),
            "script": script,
            "detect_only": summary["detect_only"],
            "changed": summary["changed"],
            "reboot_required": summary["reboot_required"],
            "errors": len(summary["errors"]),
        },
    )
    return summary


def _command(script: str, parameters: Mapping[str, str]) -> RunCommandInput:
    from azure.mgmt.compute.models import RunCommandInput, RunCommandInputParameter

    if script not in PARAMETERS:
        raise PermanentError(f"there is no guest script named {script!r}")
    unknown = sorted(set(parameters) - PARAMETERS[script])
    if unknown:
        raise PermanentError(
            f"{script} takes no parameter {', '.join(unknown)} (it takes {', '.join(sorted(PARAMETERS[script]))})"
        )
    bad = sorted(name for name, value in parameters.items() if not isinstance(value, str))
    if bad:
        raise PermanentError(f"Run Command parameters are text: {', '.join(bad)} of {script} must be strings")
    return RunCommandInput(
        command_id=COMMAND_ID,
        script=script_text(script).splitlines(),
        parameters=[RunCommandInputParameter(name=name, value=value) for name, value in parameters.items()],
    )


@dataclass(frozen=True)
class _Attempt:
    """One Run Command: (StdOut, StdErr) of a completed operation, or a classified error."""

    compute: ComputeManagementClient
    vm: VmId
    script: str
    command: RunCommandInput
    polling: Any
    deadline: float
    agent_deadline: float | None
    clock: Callable[[], float]
    posted: Callable[[], None] | None = None
    single_post: bool = False

    def run(self) -> tuple[str, str]:
        from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

        vm, script = self.vm, self.script
        if self.clock() >= self.deadline:
            raise TransientError(f"no time left to run {script} on {vm.name} before the deadline")
        try:
            if self.posted is not None:
                self.posted()
            # A prebuilt polling method keeps the clients' retries for the polls; retry_total=0 reaches the POST.
            once: dict[str, Any] = {"retry_total": 0} if self.single_post else {}
            poller = self.compute.virtual_machines.begin_run_command(
                vm.resource_group, vm.name, self.command, polling=self.polling, **once
            )
        except HttpResponseError as exc:
            # A synchronous answer (200 at once) carries the operation's failure on the POST itself.
            raise (self._agent_failure(exc) or _refusal(exc, vm, script)) from exc
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise TransientError(f"Run Command of {script} on {vm.name}: Azure unreachable ({exc})") from exc
        try:
            poller.wait(timeout=max(self.deadline - self.clock(), 0.0))
            if not poller.done():
                # The script keeps running in the VM; a later attempt would get 409 until it ends.
                raise TransientError(f"{script} on {vm.name} was still running at the deadline")
            result = poller.result()
        except HttpResponseError as exc:
            raise self._failure(exc) from exc
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise TransientError(f"lost track of {script} on {vm.name}: Azure unreachable ({exc})") from exc
        return _streams(result)

    def _failure(self, exc: HttpResponseError) -> Exception:
        """The operation was accepted and then failed (or its status could not be read)."""
        vm, script = self.vm, self.script
        from remediate.azure.errors import retryable

        status = exc.status_code or 0
        code, message = _error_detail(exc)
        agent = self._agent_failure(exc)
        if agent is not None:
            return agent
        if retryable(exc):
            # A retry-later code (the innermost ARM error code decides), a conflict with another operation, or a
            # status read that kept failing: the script is idempotent, run it again.
            return TransientError(f"{script} on {vm.name} did not complete ({status} {code}: {message}); worth a retry")
        return PermanentError(f"Run Command of {script} on {vm.name} failed ({code}: {message}); no script output")

    def _agent_failure(self, exc: HttpResponseError) -> Exception | None:
        """The agent did not answer: transient right after a reboot (until the agent deadline), else None."""
        code, message = _error_detail(exc)
        if code != AGENT_UNRESPONSIVE or self.agent_deadline is None or self.clock() >= self.agent_deadline:
            return None
        # Right after a reboot the agent may simply not be back yet: worth another try until the boot deadline.
        return TransientError(
            f"Run Command of {self.script} on {self.vm.name} failed ({code}: {message}); "
            "the VM agent is not back from the reboot yet"
        )


def _refusal(exc: HttpResponseError, vm: VmId, script: str) -> Exception:
    """Azure would not start the Run Command: busy or agent not ready are worth waiting for."""
    status = exc.status_code or 0
    code, message = _error_detail(exc)
    text = f"Run Command of {script} on {vm.name} refused ({status} {code}: {message})"
    verdict = classify_error(exc)  # the innermost code decides (remediate.azure.errors)
    if verdict.kind is ErrorKind.CONFLICT:
        return TransientError(f"{text}; another operation on the VM is still executing")
    if verdict.kind is ErrorKind.TRANSIENT:
        return TransientError(text)
    return PermanentError(text)


def _error_detail(exc: HttpResponseError) -> tuple[str, str]:
    error = exc.error
    if error is not None and error.code:
        return str(error.code), str(error.message or "")[:300]
    lines = str(exc.message or exc).strip().splitlines()
    return type(exc).__name__, (lines[0][:300] if lines else "")


def _streams(result: RunCommandResult | None) -> tuple[str, str]:
    """(StdOut, StdErr): `value[0]` and `value[1]`, recognised by their codes when Azure labels them."""
    statuses = list(result.value or []) if result is not None else []
    stdout = next((s.message or "" for s in statuses if "StdOut" in (s.code or "")), None)
    stderr = next((s.message or "" for s in statuses if "StdErr" in (s.code or "")), None)
    if stdout is None:
        stdout = (statuses[0].message or "") if statuses else ""
    if stderr is None:
        stderr = (statuses[1].message or "") if len(statuses) > 1 else ""
    return stdout, stderr


def _until(deadline: float, clock: Callable[[], float]) -> Callable[[RetryCallState], bool]:
    """Stop retrying when the next wait would end at or after the deadline."""

    def stop(state: RetryCallState) -> bool:
        return clock() + state.upcoming_sleep >= deadline

    return stop


def _log_retry(vm: VmId, script: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "Run Command will be retried",
            extra={
                "vm": str(vm),
                "script": script,
                "attempt": state.attempt_number,
                "wait_seconds": round(state.upcoming_sleep, 1),
                "reason": str(error),
            },
        )

    return before_sleep
