"""What the subcommands share: settings, the ledger and clients, VM id arguments, output."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from remediate.model import InvalidResourceId, VmId
from remediate.settings import Settings, get_settings

if TYPE_CHECKING:
    from remediate.azure.clients import AzureClients
    from remediate.ledger import Ledger


def vm_id(text: str) -> VmId:
    """argparse type: a VM resource id, with the parser's usage error (exit 2) when it is not one."""
    try:
        return VmId.parse(text)
    except InvalidResourceId as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object for scripts")


def services(settings: Settings | None = None) -> tuple[Settings, Ledger, AzureClients]:
    from remediate.azure.clients import get_clients
    from remediate.ledger import Ledger

    settings = settings or get_settings()
    ledger = Ledger.from_settings(settings)
    if settings.emulator:
        ledger.create_tables()  # in Azure the Bicep creates them; the identity needs no table-create right
    return settings, ledger, get_clients(settings)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def progress_line(step: str, detail: str) -> None:
    """Progress goes to stderr so that `--json` output on stdout stays machine-readable."""
    print(f"  {step:<22} {detail}", file=sys.stderr, flush=True)
