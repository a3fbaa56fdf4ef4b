"""Classify Azure SDK failures as permanent (never retried) or transient (retried with backoff)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from remediate.model import NotFound, PermanentError, TransientError

TRANSIENT_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


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
        if status in TRANSIENT_STATUS:
            raise TransientError(f"{doing}: Azure answered {status} ({_message(exc)})") from exc
        if status == 403:
            raise PermanentError(
                f"{doing}: forbidden ({_message(exc)}); the identity lacks a permission at this scope"
            ) from exc
        raise PermanentError(f"{doing}: Azure answered {status} ({_message(exc)})") from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise TransientError(f"{doing}: Azure unreachable ({exc})") from exc


def _message(exc: Exception) -> str:
    error = getattr(exc, "error", None)
    if error is not None and getattr(error, "code", None):
        return f"{error.code}: {error.message}"
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
