"""Every error a command can end with, as one line that says what to do, and its exit code.

Checked in order on the exception and its causes: not signed in to Azure, storage unreachable, Azure
unreachable, a setting that is wrong, the product's own errors; anything else is an unexpected error.
"""

from __future__ import annotations

from collections.abc import Iterator

from remediate.model import ConfigurationError, RemediationError

EXIT_PROBLEM, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 4

NOT_SIGNED_IN = (
    "not signed in to Azure: run `az login` (and `az account set --subscription ID`), or on an Azure host set "
    "RDPR_MANAGED_IDENTITY_CLIENT_ID (or AZURE_CLIENT_ID) to the managed identity's client id"
)


class StorageUnreachable(RemediationError):
    """The ledger's Table storage (or its queue) could not be reached; `where` names the account."""

    def __init__(self, where: str, cause: str) -> None:
        super().__init__(
            f"storage unreachable ({where}): {cause}; check RDPR_STORAGE_CONNECTION or the storage account "
            "name (AzureWebJobsStorage__accountName) and that this machine can reach it"
        )


class NotSignedIn(RemediationError):
    def __init__(self, cause: str) -> None:
        super().__init__(f"{NOT_SIGNED_IN} ({cause})")


def explain(exc: BaseException) -> tuple[int, str]:
    for cause in _chain(exc):
        if isinstance(cause, NotSignedIn | StorageUnreachable):
            return EXIT_UNAVAILABLE, cause.reason
        if _is_credential_failure(cause):
            return EXIT_UNAVAILABLE, f"{NOT_SIGNED_IN} ({_first_line(cause)})"
    if isinstance(exc, ConfigurationError):
        return EXIT_USAGE, f"configuration error: {exc.reason}"
    if isinstance(exc, RemediationError):
        unreachable = "unreachable" in exc.reason
        return (EXIT_UNAVAILABLE if unreachable else EXIT_PROBLEM), exc.reason
    return EXIT_PROBLEM, f"unexpected error: {type(exc).__name__}: {_first_line(exc)} (rerun with --debug for details)"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_credential_failure(exc: BaseException) -> bool:
    # Token acquisition failed before any request reached Azure (no az login, no managed identity here).
    # A 401/403 from Azure itself is a permission problem instead, and has a status code.
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "CredentialUnavailableError" in names:
        return True
    return "ClientAuthenticationError" in names and getattr(exc, "status_code", None) is None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
