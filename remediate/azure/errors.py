"""Classify Azure SDK failures as permanent (never retried) or transient (retried with backoff)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from remediate.model import NotFound, PermanentError, TransientError

TRANSIENT_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})

# Error codes with which a Compute long-running operation (Run Command, restart) can end `Failed` and that
# Azure itself says are worth another attempt:
# * InternalExecutionError "An internal execution error occurred. Please retry later." and
#   InternalOperationError: Microsoft Learn, "Understand common error messages when you manage virtual
#   machines in Azure" (troubleshoot/azure/virtual-machines/windows/error-messages); Azure PowerShell's
#   Invoke-AzVMRunCommand retries a Failed operation with InternalExecutionError.
# * OperationPreempted "Operation execution has been preempted by a more recent operation": same article;
#   for Run Command it means the VM restarted under it.
# * TooManyRequests, RetryableError, ServerTimeout, ServiceUnavailable, InternalServerError, GatewayTimeout:
#   ARM's throttling and availability codes (Microsoft Learn, "Troubleshoot API throttling errors" and
#   "Azure Resource Manager: common deployment errors").
RETRYABLE_OPERATION_CODES = frozenset(
    {
        "internalexecutionerror",
        "internaloperationerror",
        "operationpreempted",
        "toomanyrequests",
        "retryableerror",
        "servertimeout",
        "serviceunavailable",
        "internalservererror",
        "gatewaytimeout",
    }
)


def retryable_operation_error(code: str | None, status: int | None = None) -> bool:
    """True when a failed operation (or a status read) is worth another attempt: by Azure's error code
    first, by the HTTP status when the code says nothing we know."""
    if code and code.lower() in RETRYABLE_OPERATION_CODES:
        return True
    return status in (408, 429, 500, 502, 503, 504)


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
    """Re-raise SDK errors from the block as TransientError / PermanentError with an admin-facing reason.

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
        code = getattr(getattr(exc, "error", None), "code", None)
        if status in TRANSIENT_STATUS or retryable_operation_error(code):
            raise TransientError(f"{doing}: Azure answered {status} ({_message(exc)})") from exc
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
    error = getattr(exc, "error", None)
    if error is not None and getattr(error, "code", None):
        return f"{error.code}: {error.message}"
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
