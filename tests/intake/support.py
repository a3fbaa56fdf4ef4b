"""Sample payloads, settings and in-memory collaborators shared by the intake tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from remediate.intake.service import RecordingSink
from remediate.model import RemediationRequest, VmId
from remediate.settings import Settings

PAYLOADS = Path(__file__).parent / "payloads"
SUBSCRIPTION = "3f9b1c2e-7a4d-4e8b-9c61-2d5e8f0a4b17"
RESOURCE_GROUP = "rg-prod"
ALERT_FILES = sorted(p.name for p in PAYLOADS.glob("*.json") if not p.name.startswith("runbook"))
RUNBOOK_FILES = sorted(p.name for p in PAYLOADS.glob("runbook-*.json"))


def payload(name: str) -> dict[str, Any]:
    """A fresh copy of a sample payload (tests mutate it freely)."""
    return copy.deepcopy(_cache(name))


_LOADED: dict[str, dict[str, Any]] = {}


def _cache(name: str) -> dict[str, Any]:
    if name not in _LOADED:
        _LOADED[name] = json.loads((PAYLOADS / name).read_text(encoding="utf-8"))
    return _LOADED[name]


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode("utf-8")


def vm(name: str, group: str = RESOURCE_GROUP, subscription: str = SUBSCRIPTION) -> VmId:
    return VmId.parse(
        f"/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{name}"
    )


def settings(scopes: str = f"/subscriptions/{SUBSCRIPTION}", **env: str) -> Settings:
    return Settings.from_env({"RDPR_SCOPES": scopes, **env})


class LedgerSink(RecordingSink):
    """Remembers claimed keys like the ledger does, keeps what would have been queued, and counts claims."""

    def __init__(self) -> None:
        super().__init__(deduplicate=True)
        self.claims = 0

    def claim(self, dedup_key: str) -> bool:
        self.claims += 1
        return super().claim(dedup_key)


class FailingSink(LedgerSink):
    """A sink whose queue is down."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def enqueue(self, request: RemediationRequest) -> None:
        raise self.error


class FakeResolver:
    """Computer name -> VMs, as Resource Graph would answer within the scopes; records every call."""

    def __init__(self, table: dict[str, list[VmId]] | None = None, error: Exception | None = None) -> None:
        self.table = {key.lower(): value for key, value in (table or {}).items()}
        self.error = error
        self.calls: list[tuple[list[str], tuple[str, ...]]] = []

    def __call__(self, computers: list[str], scopes: tuple[str, ...]) -> dict[str, list[VmId]]:
        self.calls.append((list(computers), scopes))
        if self.error is not None:
            raise self.error
        return {name: list(self.table.get(name.lower(), [])) for name in computers}


def sized_alert(size: int) -> bytes:
    """An older log alert whose embedded search results make the body exactly `size` bytes.

    The rows cycle over ten VMs, the way a workspace alert over a busy fleet looks when Azure Monitor
    embeds its results.
    """
    doc = payload("log-v1-search-results.json")
    table = doc["data"]["alertContext"]["SearchResults"]["tables"][0]
    template = table["rows"][0]
    table["rows"] = []
    used = len(encode(doc))
    rows: list[list[object]] = []
    while used < size - 400:
        index = len(rows)
        name = f"vm-web-{index % 10:02d}"
        row = [template[0], name.upper(), 1058, f"2026-11-02T07:{index % 60:02d}:12.431Z", str(vm(name)).lower()]
        used += len(json.dumps(row)) + 2  # the row and its ", " separator
        rows.append(row)
    table["rows"] = rows[:-1]  # the estimate may overshoot by a row; the padding below makes it exact
    doc["data"]["essentials"]["description"] = ""
    padding = size - len(encode(doc))
    assert padding >= 0
    doc["data"]["essentials"]["description"] = "x" * padding
    body = encode(doc)
    assert len(body) == size
    return body
