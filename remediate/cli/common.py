"""What the subcommands share: settings, the ledger and clients (checked before use), VM id arguments, output.

One JSON style on every command: camelCase keys, times in ISO 8601 UTC. Progress goes to stderr (stdout stays
for the answer): a live line on a terminal, plain lines when stderr is piped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from remediate.cli.errors import NotSignedIn, StorageUnreachable
from remediate.model import InvalidResourceId, VmId
from remediate.settings import Settings, get_settings

if TYPE_CHECKING:
    from remediate.azure.clients import AzureClients
    from remediate.fleet import FleetStore
    from remediate.ledger import Ledger

ARM_SCOPE = "https://management.azure.com/.default"
_UTC_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?\+00:00")


def vm_id(text: str) -> VmId:
    """argparse type: a VM resource id, with the parser's usage error (exit 2) when it is not one."""
    try:
        return VmId.parse(text)
    except InvalidResourceId as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object for scripts (camelCase, UTC)")


def settings_epilog(*names: str, examples: tuple[str, ...] = ()) -> str:
    """A command's help footer: examples, then the settings it reads."""
    lines = []
    if examples:
        lines += ["examples:", *(f"  {example}" for example in examples), ""]
    lines += ['settings read (environment; README "Configuration"):', "  " + ", ".join(names)]
    return "\n".join(lines)


STORAGE_SETTINGS = ("RDPR_STORAGE_CONNECTION", "AzureWebJobsStorage__accountName", "RDPR_TABLE_PREFIX")
AZURE_SETTINGS = ("RDPR_SCOPES", "RDPR_ARM_URL", "RDPR_MANAGED_IDENTITY_CLIENT_ID", "AZURE_CLIENT_ID")


# --- services, checked before use ---------------------------------------------------------------------------


def services(settings: Settings | None = None) -> tuple[Settings, Ledger, AzureClients]:
    """Settings, the ledger and the Azure clients; storage and sign-in are checked first, so that a wrong
    connection or a missing `az login` ends in one line with the fix instead of minutes of retries."""
    from remediate.azure.clients import get_clients

    settings = settings or get_settings()
    ledger = ledger_only(settings)
    clients = get_clients(settings)
    check_signed_in(clients)
    return settings, ledger, clients


def ledger_only(settings: Settings) -> Ledger:
    from remediate.ledger import Ledger

    check_storage(settings)
    ledger = Ledger.from_settings(settings)
    if settings.emulator:
        ledger.create_tables()  # in Azure the Bicep creates them; the identity needs no table-create right
    return ledger


def fleet_store(settings: Settings) -> FleetStore:
    from remediate.fleet import FleetStore

    check_storage(settings)
    store = FleetStore.from_settings(settings)
    if settings.emulator:
        store.create_tables()
    return store


def storage_configured(settings: Settings) -> bool:
    return bool(settings.storage_connection or settings.storage_account)


def storage_where(settings: Settings) -> str:
    if settings.storage_connection:
        parts = dict(p.split("=", 1) for p in settings.storage_connection.split(";") if "=" in p)
        endpoint = parts.get("TableEndpoint") or parts.get("QueueEndpoint")
        if endpoint:
            return f"RDPR_STORAGE_CONNECTION, {urlparse(endpoint).netloc}"
        if "UseDevelopmentStorage" in settings.storage_connection:
            return "RDPR_STORAGE_CONNECTION, the local development storage (Azurite)"
        return f"RDPR_STORAGE_CONNECTION, account {parts.get('AccountName', '?')}"
    return f"account {settings.storage_account} (AzureWebJobsStorage__accountName)"


def check_storage(settings: Settings) -> None:
    """One cheap request with no retries: the account answers, or the command stops with the fix."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    from remediate.ledger import table_service

    service = table_service(settings)
    try:
        next(iter(service.list_tables(results_per_page=1, retry_total=0, connection_timeout=5)), None)
    except ClientAuthenticationError as exc:
        if exc.status_code is None:
            raise NotSignedIn(_short(exc)) from exc
        raise StorageUnreachable(storage_where(settings), f"access denied ({exc.status_code})") from exc
    except ServiceRequestError as exc:
        raise StorageUnreachable(storage_where(settings), _short(exc)) from exc
    except HttpResponseError as exc:
        if exc.status_code in (401, 403):
            raise StorageUnreachable(
                storage_where(settings),
                f"access denied ({exc.status_code}): the identity needs Storage Table Data Contributor",
            ) from exc
        raise
    finally:
        service.close()


def check_signed_in(clients: AzureClients) -> None:
    """A token for Azure Resource Manager, or the one-line answer to `not signed in`."""
    from azure.core.exceptions import ClientAuthenticationError

    try:
        clients.credential.get_token(ARM_SCOPE)
    except ClientAuthenticationError as exc:
        raise NotSignedIn(_short(exc)) from exc


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return re.sub(r"\s+", " ", first)[:200]


# --- one JSON style -------------------------------------------------------------------------------------------


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def json_style(data: Any) -> Any:
    """camelCase keys and ISO 8601 UTC times, whatever the source object used."""
    if isinstance(data, dict):
        return {camel(str(key)): json_style(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [json_style(value) for value in data]
    if isinstance(data, dt.datetime):
        moment = data if data.tzinfo else data.replace(tzinfo=dt.UTC)
        return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(data, dt.date):
        return data.isoformat()
    if isinstance(data, str) and _UTC_TIME.fullmatch(data):
        return data.removesuffix("+00:00") + "Z"  # one spelling of UTC, whichever the source used
    return data


def print_json(data: Any) -> None:
    json.dump(json_style(data), sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


# --- progress -----------------------------------------------------------------------------------------------


class Progress:
    """Live progress on stderr: a spinner line with the elapsed time on a terminal, plain lines when piped."""

    def __init__(self, title: str, *, live: bool | None = None) -> None:
        self.title = title
        self.live = sys.stderr.isatty() if live is None else live
        self._started = time.monotonic()
        self._status: Any = None
        self._console: Any = None

    def __enter__(self) -> Progress:
        if self.live:
            from rich.console import Console

            self._console = Console(stderr=True)
            self._status = self._console.status(self.title)
            self._status.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._status is not None:
            self._status.stop()

    def elapsed(self) -> str:
        return f"{time.monotonic() - self._started:5.1f} s"

    def step(self, step: str, detail: str) -> None:
        """A workflow step's news: 'started' updates the live line, anything else is printed as done."""
        if self.live and self._status is not None:
            if detail == "started":
                self._status.update(f"{self.title}: {step} ({self.elapsed()})")
            else:
                self._console.print(f"  [bold]{step:<22}[/bold] {_escape(detail)}", highlight=False)
            return
        if detail != "started":
            print(f"  {step:<22} {detail}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if self.live and self._status is not None:
            self._status.update(f"{self.title}: {text} ({self.elapsed()})")
        else:
            print(f"  {text}", file=sys.stderr, flush=True)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@contextmanager
def progress(title: str) -> Iterator[Progress]:
    with Progress(title) as reporter:
        yield reporter


def progress_line(step: str, detail: str) -> None:
    """Plain progress on stderr (kept for callers that want lines only)."""
    print(f"  {step:<22} {detail}", file=sys.stderr, flush=True)
