"""Classify Azure SDK failures as permanent (never retried), transient (retried soon) or a conflict with another
operation on the resource (retried later), always within the caller's deadline.

ARM error bodies nest: `{"error": {"code", "message", "details": [{"code", "message", "details": [...]}]}}`, and
"the most inner level of error message is often the root cause of failure" (Microsoft Learn, "Azure Virtual
Machine error messages", MicrosoftDocs/azure-docs articles/virtual-machines/windows/error-messages.md, "Error
Response Format"). Compute's throttling answer is the case that matters: its top-level code is
`OperationNotAllowed` and only `details[].code` says `TooManyRequests`. So the innermost code found in `CODES`
decides; a body with no code we know falls back to the HTTP status.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from remediate.model import NotFound, PermanentError, TransientError


class ErrorKind(enum.Enum):
    TRANSIENT = "transient"  # a retry soon may work (throttling, a temporary platform fault)
    CONFLICT = "conflict"  # another operation on the resource is in progress: retry once it has ended
    PERMANENT = "permanent"  # the request itself cannot succeed as it is (VM state, quota, policy, rights)


@dataclass(frozen=True)
class CodeRule:
    kind: ErrorKind
    source: str  # the public source that says so


_DEPLOY_ERRORS = (
    'Microsoft Learn, "Troubleshoot common Azure deployment errors" (MicrosoftDocs/azure-docs '
    "articles/azure-resource-manager/troubleshooting/common-deployment-errors.md)"
)
_VM_ERRORS = (
    'Microsoft Learn, "Azure Virtual Machine error messages" (MicrosoftDocs/azure-docs '
    "articles/virtual-machines/windows/error-messages.md)"
)
_THROTTLING = (
    'Microsoft Learn, "Troubleshooting throttling errors in Azure" (MicrosoftDocs/azure-docs '
    'articles/virtual-machines/troubleshooting-throttling.md, "Throttling error details")'
)

# ARM / Compute error code (lower case) -> what it means for this request, with the source that says so.
CODES: dict[str, CodeRule] = {
    # 429 from Compute: {"code": "OperationNotAllowed", "details": [{"code": "TooManyRequests", ...}]}.
    "toomanyrequests": CodeRule(ErrorKind.TRANSIENT, _THROTTLING),
    # "Caused by a temporary problem. Retry the deployment."
    "internalservererror": CodeRule(ErrorKind.TRANSIENT, _DEPLOY_ERRORS),
    # "Allocation failed. Please ... retry later" / "The VM allocation failed due to an internal error. Please
    # retry later": both tables.
    "allocationfailed": CodeRule(ErrorKind.TRANSIENT, f"{_DEPLOY_ERRORS}; {_VM_ERRORS}"),
    # A long-running Compute operation that ended Failed with it is tried again by Azure PowerShell's own
    # Set-AzVMDscExtension (Azure/azure-powershell, src/Compute/Compute/Extension/DSC/
    # SetAzureVMDscExtensionCommand.cs: status Failed and code InternalExecutionError -> up to two more tries).
    "internalexecutionerror": CodeRule(
        ErrorKind.TRANSIENT, "Azure/azure-powershell SetAzureVMDscExtensionCommand.cs (retries it)"
    ),
    # "Wait for concurrent operation to complete."
    "anotheroperationinprogress": CodeRule(ErrorKind.CONFLICT, _DEPLOY_ERRORS),
    # "You're requesting an operation that isn't allowed in the resource's current state": a state conflict, not
    # worth retrying; only Run Command's own 409 "Run command extension execution is in progress" (Azure/azure-cli
    # issue 19137) ends by itself, so `classify` makes a conflict whose message says "in progress" retryable.
    "conflict": CodeRule(ErrorKind.PERMANENT, f"{_DEPLOY_ERRORS}; Azure/azure-cli issue 19137"),
    # A VM operation canceled because a newer one on the same VM took over: Code="OperationPreempted" Message=
    # "Operation execution has been preempted by a more recent operation." (kubernetes-sigs/cloud-provider-azure,
    # pkg/consts and its VM scale set VM client tests). Whatever preempted it has to end first.
    "operationpreempted": CodeRule(ErrorKind.CONFLICT, "kubernetes-sigs/cloud-provider-azure pkg/consts"),
    # Not allowed on the SKU or over a quota (deployment errors); not allowed in the VM's state: deallocated,
    # generalized, marked for deletion, an extension in a failed state (VM error messages). Not for this request.
    "operationnotallowed": CodeRule(ErrorKind.PERMANENT, f"{_DEPLOY_ERRORS}; {_VM_ERRORS}"),
    # "Find the policy that blocks the action."
    "requestdisallowedbypolicy": CodeRule(ErrorKind.PERMANENT, _DEPLOY_ERRORS),
    # "Your account or service principal doesn't have sufficient access"
    "authorizationfailed": CodeRule(ErrorKind.PERMANENT, _DEPLOY_ERRORS),
    # "VM '{0}' has not reported status for VM agent or extensions. Please verify the VM has a running VM agent";
    # right after a reboot remediate.azure.runcommand waits for the agent instead (until the boot deadline).
    "vmagentstatuscommunicationerror": CodeRule(ErrorKind.PERMANENT, _VM_ERRORS),
}

# `OperationNotAllowed` is also how Compute says another operation holds the VM. These are its documented
# messages for that (VM error messages): "Operation '{0}' is not allowed on VM '{1}' since another operation is
# in progress." and "An ongoing operation is changing power state of Virtual Machine {0} to {1}. Please perform
# operation {2} after some time."
IN_PROGRESS_MESSAGES = ("since another operation is in progress", "an ongoing operation is changing power state")

# Statuses that say "try again" when no code we know says more. A 409 is not among them: whether a conflict ends
# is for its code to say (above), and a 409 with a code we do not know is final rather than retried blind.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Verdict:
    kind: ErrorKind
    code: str | None  # the code that decided (None: the status did)
    message: str


def error_chain(error: Any) -> list[tuple[str, str]]:
    """(code, message) from the outermost error to the innermost, following the first of each `details`."""
    chain: list[tuple[str, str]] = []
    seen = 0
    while error is not None and seen < 16:  # bounded: a body is data from the network
        seen += 1
        code = getattr(error, "code", None)
        if code:
            chain.append((str(code), str(getattr(error, "message", "") or "")))
        details = getattr(error, "details", None) or []
        error = details[0] if details else None
    return chain


def classify(chain: list[tuple[str, str]], status: int | None) -> Verdict:
    """The kind of an ARM error: the innermost code in `CODES` decides, else the HTTP status."""
    for code, message in reversed(chain):
        rule = CODES.get(code.lower())
        if rule is None:
            continue
        kind = rule.kind
        if code.lower() == "operationnotallowed" and any(m in message.lower() for m in IN_PROGRESS_MESSAGES):
            kind = ErrorKind.CONFLICT
        if code.lower() == "conflict" and "in progress" in message.lower():
            kind = ErrorKind.CONFLICT
        return Verdict(kind, code, message)
    message = chain[-1][1] if chain else ""
    if status in TRANSIENT_STATUS:
        return Verdict(ErrorKind.TRANSIENT, None, message)
    return Verdict(ErrorKind.PERMANENT, None, message)


def classify_error(exc: BaseException) -> Verdict:
    """The kind of an azure-core HttpResponseError (its parsed ARM body and status)."""
    return classify(error_chain(getattr(exc, "error", None)), getattr(exc, "status_code", None))


def retryable(exc: BaseException) -> bool:
    """True when a failed operation (or a status read) is worth another attempt: transient or a conflict."""
    return classify_error(exc).kind is not ErrorKind.PERMANENT


class AzureConflict(TransientError):
    """Another operation on the resource is in progress (or just preempted ours): worth a retry once it ends,
    within the caller's deadline."""


def sdk_first_use_race(exc: BaseException) -> bool:
    """An AttributeError raised inside the Azure SDK itself: its models are set up lazily on first use, and
    concurrent first uses can race (seen once in 320 concurrent first calls). Retrying works."""
    if not isinstance(exc, AttributeError):
        return False
    frame = exc.__traceback__
    last = None
    while frame is not None:
        last = frame
        frame = frame.tb_next
    return last is not None and "/azure/" in last.tb_frame.f_code.co_filename.replace("\\", "/")


@contextmanager
def azure_errors(doing: str) -> Iterator[None]:
    """Re-raise SDK errors from the block as TransientError / AzureConflict / PermanentError with an
    admin-facing reason.

    azure-core has already retried 429/5xx by the time an error reaches us; what is left is either worth a
    later retry by our own (deadline-bounded) policy, or a fact to report.
    """
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    try:
        yield
    except ResourceNotFoundError as exc:
        raise NotFound(f"{doing}: not found ({_message(exc)})") from exc
    except ClientAuthenticationError as exc:
        raise PermanentError(
            f"{doing}: not authorized ({_message(exc)}); check the identity's role assignment "
            "(RDP Remediation Operator) at this scope"
        ) from exc
    except HttpResponseError as exc:
        status = exc.status_code or 0
        kind = classify_error(exc).kind
        if kind is ErrorKind.TRANSIENT:
            raise TransientError(f"{doing}: Azure answered {status} ({_message(exc)})") from exc
        if kind is ErrorKind.CONFLICT:
            raise AzureConflict(
                f"{doing}: another operation on the resource is in progress ({status} {_message(exc)}); "
                "worth a retry once it has ended"
            ) from exc
        if status == 403:
            raise PermanentError(
                f"{doing}: forbidden ({_message(exc)}); the identity lacks a permission at this scope"
            ) from exc
        raise PermanentError(f"{doing}: Azure answered {status} ({_message(exc)})") from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise TransientError(f"{doing}: Azure unreachable ({exc})") from exc
    except AttributeError as exc:
        if sdk_first_use_race(exc):
            raise TransientError(f"{doing}: the Azure SDK's first use raced ({exc}); worth a retry") from exc
        raise


def _message(exc: Exception) -> str:
    """Every level of the ARM error, outermost first ("OperationNotAllowed: ...; TooManyRequests: ...")."""
    chain = error_chain(getattr(exc, "error", None))
    if chain:
        return "; ".join(f"{code}: {message[:300]}" for code, message in chain[:3])
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
