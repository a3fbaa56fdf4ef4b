"""The engine on the emulator and Azurite: a fresh fleet and fresh tables per test."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from remediate.azure.clients import AzureClients
from remediate.engine.workflow import Progress, Workflow, WorkflowResult
from remediate.ledger import Ledger
from remediate.model import Plan, RemediationOptions, RemediationRequest, Trigger, VmId
from remediate.settings import Settings
from sim.fleet import VirtualMachine
from sim.server import Emulator, LoggedRequest


@dataclasses.dataclass
class Engine:
    emulator: Emulator
    settings: Settings
    ledger: Ledger
    clients: AzureClients

    def vm(self, scenario: str) -> VirtualMachine:
        return self.emulator.fleet.by_scenario(scenario)[0]

    def request(self, scenario: str, plan: Plan = Plan.AUTO, **options: Any) -> RemediationRequest:
        vm = VmId.parse(self.vm(scenario).resource_id)
        return RemediationRequest(vm, Trigger.CLI, "test", RemediationOptions(plan=plan, **options))

    def run(self, scenario: str, plan: Plan = Plan.AUTO, **options: Any) -> WorkflowResult:
        return self.workflow(self.request(scenario, plan, **options)).run()

    def workflow(
        self,
        request: RemediationRequest,
        progress: Progress | None = None,
        settings: Settings | None = None,
        clients: AzureClients | None = None,
        **kw: Any,
    ) -> Workflow:
        return Workflow(
            request,
            settings=settings or self.settings,
            ledger=self.ledger,
            clients=clients or self.clients,
            progress=progress,
            **kw,
        )

    def calls_to(self, scenario: str) -> list[LoggedRequest]:
        path = self.vm(scenario).resource_id.lower() + "/"
        return [e for e in self.emulator.log.entries() if (e.path.lower() + "/").startswith(path)]

    def posts_to(self, scenario: str) -> list[str]:
        """The operations of every POST that reached the VM, in order (runCommand, restart)."""
        return [e.operation for e in self.calls_to(scenario) if e.method == "POST"]

    def with_settings(self, **changes: Any) -> Settings:
        return dataclasses.replace(self.settings, **changes)


@pytest.fixture
def engine(
    emulator: Emulator, product_settings: Settings, product_ledger: Ledger, product_clients: AzureClients
) -> Engine:
    return Engine(emulator, product_settings, product_ledger, product_clients)
