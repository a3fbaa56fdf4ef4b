"""Run a guest script on a VM through the action Run Command and return its validated JSON summary.

The script text goes as `RunPowerShellScript` lines and its parameters as `RunCommandInputParameter`s (never
interpolated into the text). Azure runs one Run Command per VM at a time and needs the VM agent: a 409
"execution is in progress" and a 409 about the agent not being ready are transient and retried with
exponential backoff and jitter until the caller's deadline. A failed operation, output without a summary, or a
summary that breaks the contract is permanent, and the error quotes the end of StdOut/StdErr.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential

from remediate.guest.contract import PARAMETERS, parse_output, script_text
from remediate.model import PermanentError, TransientError, VmId

if TYPE_CHECKING:
    from azure.core.exceptions import HttpResponseError
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.compute.models import RunCommandInput, RunCommandResult

log = logging.getLogger(__name__)

COMMAND_ID = "RunPowerShellScript"
# Backoff between attempts: full jitter over 1 s .. 5 s * 2^n, at most 60 s, never past the deadline.
RETRY_MIN_SECONDS = 1.0
RETRY_MULTIPLIER_SECONDS = 5.0
RETRY_MAX_SECONDS = 60.0
# Statuses left after azure-core's own retries that are still worth another attempt later.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class ComputeClients(Protocol):
    """What this module needs from `remediate.azure.clients.AzureClients`."""

    def compute(self, subscription_id: str) -> ComputeManagementClient: ...


def run_script(
    clients: ComputeClients,
    vm: VmId,
    script: str,
    parameters: Mapping[str, str],
    deadline: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    posted: Callable[[], None] | None = None,
    single_post: bool = False,
) -> dict[str, Any]:
    """Run guest script `script` on `vm` and return its summary, validated against the contract.

    `deadline` is a `clock()` time: no attempt starts, and no wait lasts, beyond it. Raises TransientError when
    the VM stayed busy or its agent stayed not ready until the deadline, PermanentError otherwise.
    `posted` is called before every Run Command POST, so a caller can tell that an earlier POST of this call
    may have been accepted (its script then ran, whatever this attempt reports). `single_post=True` sends each
    POST without transport retries: azure-core re-sends a POST after a 500/503/504, which for a repair would
    run it again unseen; only this module's own retries (counted through `posted`) send it again.
    """
    command = _command(script, parameters)
    compute = clients.compute(vm.subscription)
    post = _Post(posted, single_post, clients)
    retrying = Retrying(
        retry=retry_if_exception_type(TransientError),
        wait=wait_random_exponential(multiplier=RETRY_MULTIPLIER_SECONDS, max=RETRY_MAX_SECONDS, min=RETRY_MIN_SECONDS),
        stop=_until(deadline, clock),
        sleep=sleep,
        before_sleep=_log_retry(vm, script),
        reraise=True,
    )
    stdout, stderr = retrying(_run_once, compute, vm, script, command, deadline, clock, post)
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


def _run_once(
    compute: ComputeManagementClient,
    vm: VmId,
    script: str,
    command: RunCommandInput,
    deadline: float,
    clock: Callable[[], float],
    post: _Post,
) -> tuple[str, str]:
    """One Run Command: (StdOut, StdErr) of a completed operation, or a classified error."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    if clock() >= deadline:
        raise TransientError(f"no time left to run {script} on {vm.name} before the deadline")
    try:
        if post.posted is not None:
            post.posted()
        poller = compute.virtual_machines.begin_run_command(vm.resource_group, vm.name, command, **post.options())
    except HttpResponseError as exc:
        raise _refusal(exc, vm, script) from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise TransientError(f"Run Command of {script} on {vm.name}: Azure unreachable ({exc})") from exc
    try:
        poller.wait(timeout=max(deadline - clock(), 0.0))
        if not poller.done():
            # The script keeps running in the VM; a later attempt would get 409 until it ends.
            raise TransientError(f"{script} on {vm.name} was still running at the deadline")
        result = poller.result()
    except HttpResponseError as exc:
        raise _failure(exc, vm, script) from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise TransientError(f"lost track of {script} on {vm.name}: Azure unreachable ({exc})") from exc
    return _streams(result)


class _Post:
    """How each Run Command POST of one `run_script` call is sent."""

    def __init__(self, posted: Callable[[], None] | None, single: bool, clients: ComputeClients) -> None:
        self.posted = posted
        self.single = single
        self.interval = getattr(getattr(clients, "settings", None), "poll_interval_seconds", None)

    def options(self) -> dict[str, Any]:
        if not self.single:
            return {}
        from azure.mgmt.core.polling.arm_polling import ARMPolling  # lazy: cold start

        # The polling method is built here so that the per-call retry_total=0 reaches only the POST; polling
        # the operation keeps the clients' normal retries (a GET repeated is harmless).
        return {"retry_total": 0, "polling": ARMPolling(30 if self.interval is None else self.interval)}


def _refusal(exc: HttpResponseError, vm: VmId, script: str) -> Exception:
    """Azure would not start the Run Command: busy or agent not ready are worth waiting for."""
    status = exc.status_code or 0
    code, message = _error_detail(exc)
    text = f"Run Command of {script} on {vm.name} refused ({status} {code}: {message})"
    if status == 409 and ("in progress" in message.lower() or code == "Conflict"):
        return TransientError(f"{text}; another Run Command is still executing")
    if status == 409 and code == "OperationNotAllowed" and "agent" in message.lower():
        return TransientError(f"{text}; waiting for the VM agent")
    if status in TRANSIENT_STATUS:
        return TransientError(text)
    return PermanentError(text)


def _failure(exc: HttpResponseError, vm: VmId, script: str) -> Exception:
    """The operation was accepted and then failed (or its status could not be read)."""
    from remediate.azure.errors import retryable_operation_error

    status = exc.status_code or 0
    code, message = _error_detail(exc)
    if retryable_operation_error(code, status):
        # A retry-later code, or a status read that kept failing: the script is idempotent, run it again.
        return TransientError(f"{script} on {vm.name} did not complete ({status} {code}: {message}); worth a retry")
    return PermanentError(f"Run Command of {script} on {vm.name} failed ({code}: {message}); no script output")


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
