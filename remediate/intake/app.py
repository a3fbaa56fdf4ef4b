"""The Function's composition root: settings, ledger, queue, clients and intakes, built once per process.

Everything is created on first use, so a cold start that only answers an alert never imports the
Compute SDK; `function_app.py` stays a thin map from triggers to these objects.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING

from remediate import telemetry
from remediate.model import VmId, azure_equal, azure_key, find_tag
from remediate.settings import Settings, get_settings

if TYPE_CHECKING:
    from remediate.azure.clients import AzureClients
    from remediate.engine.slots import Slots
    from remediate.engine.storm import StormGuard
    from remediate.fleet import FleetStore
    from remediate.intake.gate import Gate
    from remediate.intake.queue import RequestQueue
    from remediate.intake.requests import Selector
    from remediate.intake.service import AlertIntake, RunbookIntake
    from remediate.ledger import Ledger


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Here, on the first invocation, not at import: the OpenTelemetry SDK stays out of the cold start.
        telemetry.configure()

    @cached_property
    def clients(self) -> AzureClients:
        # The App is the process's composition root, so it owns its clients: replacing the App (a settings
        # reload, a test) replaces them too.
        from remediate.azure.clients import AzureClients

        return AzureClients(self.settings)

    @cached_property
    def ledger(self) -> Ledger:
        from remediate.ledger import Ledger

        ledger = Ledger.from_settings(self.settings)
        if self.settings.emulator:
            ledger.create_tables()  # in Azure the Bicep creates them; the identity needs no table-create right
        return ledger

    @cached_property
    def fleet(self) -> FleetStore:
        from remediate.fleet import FleetStore

        store = FleetStore.from_settings(self.settings)
        if self.settings.emulator:
            store.create_tables()
        return store

    @cached_property
    def queue(self) -> RequestQueue:
        from remediate.intake.queue import RequestQueue

        queue = RequestQueue.from_settings(self.settings, self.ledger)
        if self.settings.emulator:
            queue.create()
        return queue

    @cached_property
    def slots(self) -> Slots:
        from remediate.engine.slots import Slots

        slots = Slots.from_settings(self.settings)
        if self.settings.emulator:
            slots.create_table()
        return slots

    @cached_property
    def storm(self) -> StormGuard:
        guard = self.queue.guard
        assert guard is not None, "RequestQueue.from_settings gives every queue its storm guard"
        return guard

    @cached_property
    def gate(self) -> Gate:
        from remediate.intake.gate import Gate

        return Gate(self.settings, self.ledger, self.clients, self.queue.queue, self.slots, self.storm)

    @cached_property
    def alerts(self) -> AlertIntake:
        from remediate.intake.service import AlertIntake

        return AlertIntake(self.queue, self.settings, self.resolve_computers)

    @cached_property
    def runbook(self) -> RunbookIntake:
        from remediate.intake.service import RunbookIntake

        return RunbookIntake(self.queue, self.settings, self.expand_selector)

    def resolve_computers(self, computers: list[str], scopes: tuple[str, ...]) -> dict[str, list[VmId]]:
        from remediate.azure.inventory import find_vms_by_computer_name

        return find_vms_by_computer_name(self.clients, computers, scopes)

    def expand_selector(self, selector: Selector) -> list[VmId]:
        """The Windows VMs a runbook selector names, limited to the configured scope."""
        from remediate.azure.inventory import list_windows_vms

        scope = selector.scope_id
        in_scope = tuple(s for s in self.settings.scopes if _contains(s, scope) or _contains(scope, s))
        records = list_windows_vms(self.clients, in_scope)
        return [r.vm for r in records if r.vm.in_scope((scope,)) and _tag_matches(r.tags, selector)]


def _contains(outer: str, inner: str) -> bool:
    """True when scope `inner` is `outer` or lies inside it (whole segments: `rg-1` does not contain `rg-10`)."""
    outer, inner = azure_key(outer), azure_key(inner)
    return inner == outer or inner.startswith(outer + "/")


def _tag_matches(tags: dict[str, str], selector: Selector) -> bool:
    if selector.tag_name is None:
        return True
    value = find_tag(tags, selector.tag_name)
    return value is not None and (selector.tag_value is None or azure_equal(value, selector.tag_value))


_lock = threading.Lock()
_app: App | None = None


def get_app() -> App:
    global _app  # noqa: PLW0603 - one composition root per process, as the Functions host expects
    with _lock:
        if _app is None:
            _app = App(get_settings())
        return _app


def reset_app(settings: Settings | None = None) -> App:
    """Replace the process-wide app (tests and the demo point it at the emulator)."""
    global _app  # noqa: PLW0603
    with _lock:
        _app = App(settings or get_settings())
        return _app
