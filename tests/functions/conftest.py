"""The decorated Function handlers, called the way the Functions host calls them, on the emulator and Azurite."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

from remediate.intake.app import App, reset_app
from remediate.settings import Settings
from sim.appservice import PLATFORM_SETTING, operator_headers
from sim.host import LocalQueueHost
from sim.server import Emulator


@pytest.fixture(scope="session")
def function_app_module() -> ModuleType:
    import function_app

    return function_app


@pytest.fixture(scope="session")
def declared_functions(function_app_module: ModuleType) -> dict[str, Any]:
    # get_functions() may be called only once per FunctionApp object: once per session.
    return {f.get_function_name(): f for f in function_app_module.app.get_functions()}


@dataclasses.dataclass
class Functions:
    module: ModuleType
    app: App
    emulator: Emulator
    host: LocalQueueHost

    def post(
        self,
        route: str,
        body: bytes | dict[str, Any] | list[Any],
        headers: dict[str, str] | None = None,
        *,
        forged: bool = False,
    ) -> func.HttpResponse:
        """POST to a route; the runbook route's caller is an operator App Service authenticated unless `headers`
        says otherwise (the alert route carries only the function key, which the host checked). An alert is one
        Azure Monitor raised (the emulator can read it back), unless `forged`."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        handler = self.module.alerts if route == "alerts" else self.module.remediations
        if route == "alerts" and not forged:
            self._fire(data)
        if headers is None:
            headers = {} if route == "alerts" else operator_headers()
        request = func.HttpRequest(
            "POST", f"https://localhost/api/{route}", headers=headers, params={}, route_params={}, body=data
        )
        response: func.HttpResponse = handler(request)
        return response

    def _fire(self, data: bytes) -> None:
        try:
            essentials = json.loads(data)["data"]["essentials"]
            alert_id, targets = essentials["alertId"], essentials.get("alertTargetIDs") or [""]
        except (ValueError, KeyError, TypeError):
            return  # not an alert Azure Monitor could have raised: the intake answers it
        if isinstance(alert_id, str) and isinstance(targets, list) and targets and isinstance(targets[0], str):
            self.emulator.alerts.fire(alert_id, _target_of(targets))

    def get_status(self, request_id: str) -> func.HttpResponse:
        request = func.HttpRequest(
            "GET",
            f"https://localhost/api/remediations/{request_id}",
            headers=operator_headers(),
            params={},
            route_params={"request_id": request_id},
            body=b"",
        )
        response: func.HttpResponse = self.module.remediation_status(request)
        return response

    def sweep(self) -> None:
        self.module.sweep(TimerRequest(past_due=False))

    def queued(self) -> int:
        props = self.app.queue.queue.get_queue_properties()
        return int(props.approximate_message_count or 0)


def _target_of(targets: list[Any]) -> str:
    """The alert's target as Azure Monitor records it: the one resource, or for several their common scope (the
    resource group they share, else the subscription)."""
    names = [t for t in targets if isinstance(t, str)]
    if len(names) == 1:
        return names[0]
    groups = {"/".join(t.split("/")[:5]).lower() for t in names}
    return groups.pop() if len(groups) == 1 else "/".join(names[0].split("/")[:3])


@pytest.fixture(autouse=True)
def platform_authentication(monkeypatch: pytest.MonkeyPatch) -> None:
    """App Service authentication is on, as in Azure: the platform sets WEBSITE_AUTH_ENABLED, and the principal
    header the requests carry is its."""
    monkeypatch.setenv(*PLATFORM_SETTING)


def body(response: func.HttpResponse) -> Any:
    return json.loads(response.get_body())


@pytest.fixture
def functions(function_app_module: ModuleType, emulator: Emulator, product_settings: Settings) -> Iterator[Functions]:
    app = reset_app(product_settings)
    app.queue.create()
    host = LocalQueueHost(
        function_app_module.worker,
        app.queue.queue,
        app.queue.poison,  # type: ignore[arg-type]
        max_dequeue_count=product_settings.max_dequeue_count,
        retry_visibility_seconds=0,
    )
    yield Functions(function_app_module, app, emulator, host)
    app.clients.close()
