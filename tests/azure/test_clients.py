"""The credential and client factory: built once, lazily, never leaking the emulator token, Retry-After capped."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.pipeline import PipelineResponse
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest
from azure.identity import DefaultAzureCredential

from remediate.azure.clients import (
    AzureClients,
    StaticTokenCredential,
    capped_retry_policy,
    get_clients,
    reset_clients,
)
from remediate.model import ConfigurationError, UntrustedHost
from remediate.settings import Settings, is_loopback_host
from sim.fleet import RESOURCE_GROUP, SUBSCRIPTION
from sim.server import Emulator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_process_wide_clients() -> Iterator[None]:
    reset_clients()
    yield
    reset_clients()


def emulator_settings(arm_url: str = "https://127.0.0.1:8443", ca_cert: str = "ca.pem") -> Settings:
    return Settings.from_env(
        {
            "RDPR_EMULATOR": "true",
            "RDPR_ARM_URL": arm_url,
            "RDPR_LOGS_URL": "https://127.0.0.1:8443/v1",
            "RDPR_EMULATOR_CA_CERT": ca_cert,
        }
    )


# --- Emulator mode never leaves loopback -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["https://management.azure.com", "https://127.0.0.1.attacker.example", "https://10.0.0.4:8443"]
)
def test_emulator_mode_refuses_a_url_that_is_not_loopback(url: str) -> None:
    settings = dataclasses.replace(emulator_settings(), arm_url=url)  # as if Settings.check had been fooled

    with pytest.raises(ConfigurationError, match="loopback"):
        AzureClients(settings)


def test_loopback_hosts_are_literal_addresses_or_localhost() -> None:
    assert [is_loopback_host(h) for h in ("127.0.0.1", "127.0.3.9", "::1", "[::1]", "localhost")] == [True] * 5
    assert [is_loopback_host(h) for h in ("127.0.0.1.nip.io", "10.0.0.1", "example.com", "")] == [False] * 4


def test_emulator_mode_needs_the_emulator_ca() -> None:
    with pytest.raises(ConfigurationError, match="RDPR_EMULATOR_CA_CERT"):
        AzureClients(dataclasses.replace(emulator_settings(), emulator_ca_cert=""))


def test_emulator_clients_refuse_to_send_the_token_anywhere_else(emulator: Emulator, azure_settings: Settings) -> None:
    clients = AzureClients(azure_settings)
    try:
        compute = clients.compute(SUBSCRIPTION)
        with pytest.raises(UntrustedHost, match="refused to send the Azure credential"):
            compute.send_request(
                HttpRequest("GET", "https://management.azure.com/subscriptions?api-version=2022-12-01")
            )
        vm = compute.virtual_machines.get(RESOURCE_GROUP, "vm-healthy")
    finally:
        clients.close()

    assert vm.name == "vm-healthy"
    assert len(emulator.log.entries()) == 1


def test_the_static_credential_gives_a_token_for_any_scope() -> None:
    credential = StaticTokenCredential()

    token = credential.get_token("https://management.azure.com/.default")
    info = credential.get_token_info("https://api.loganalytics.io/.default")

    assert token.token == info.token
    assert token.token
    assert info.expires_on > token.expires_on - 5


# --- Built once, lazily -----------------------------------------------------------------------------------


def test_each_client_is_built_once_and_shared(azure_settings: Settings) -> None:
    clients = AzureClients(azure_settings)
    built: list[Any] = []
    barrier = threading.Barrier(8)

    def build() -> None:
        barrier.wait()
        built.append(clients.compute(SUBSCRIPTION.upper()))

    threads = [threading.Thread(target=build) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len({id(client) for client in built}) == 1
        assert clients.compute(SUBSCRIPTION) is built[0]
        assert clients.network(SUBSCRIPTION) is clients.network(SUBSCRIPTION)
        assert clients.resource_graph() is clients.resource_graph()
        assert clients.logs() is clients.logs()
        assert clients.credential is clients.credential
        assert clients.compute("00000000-0000-4000-8000-000000000002") is not built[0]
    finally:
        clients.close()


def test_get_clients_returns_the_process_wide_instance(azure_settings: Settings) -> None:
    first = get_clients(azure_settings)

    assert get_clients() is first
    assert get_clients(azure_settings) is first
    with pytest.raises(ConfigurationError, match="reset_clients"):
        get_clients(dataclasses.replace(azure_settings, retry_after_cap_seconds=1.0))


def test_importing_the_module_imports_no_azure_sdk() -> None:
    code = "import sys, remediate.azure.clients; print(sorted(m for m in sys.modules if m.split('.')[0] == 'azure'))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]"


# --- Real mode ------------------------------------------------------------------------------------------


def test_real_mode_uses_default_azure_credential_with_the_managed_identity() -> None:
    clients = AzureClients(Settings.from_env({"AZURE_CLIENT_ID": "11111111-1111-4111-8111-111111111111"}))
    try:
        credential = clients.credential
        compute = clients.compute(SUBSCRIPTION)
    finally:
        clients.close()

    assert isinstance(credential, DefaultAzureCredential)
    assert compute._config.base_url == "https://management.azure.com"
    assert compute._config.credential_scopes == ["https://management.azure.com/.default"]


@pytest.mark.parametrize("endpoint", ["https://api.loganalytics.io/v1", "https://api.loganalytics.azure.com/v1"])
def test_real_mode_logs_client_asks_for_log_analytics_tokens(endpoint: str) -> None:
    clients = AzureClients(Settings.from_env({"RDPR_LOGS_URL": endpoint}))
    try:
        logs = clients.logs()
    finally:
        clients.close()

    assert logs._config.credential_scopes == ["https://api.loganalytics.io/.default"]


# --- Retry-After is capped --------------------------------------------------------------------------------


class _FakeHttpResponse:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


def _response(headers: dict[str, str]) -> PipelineResponse[Any, Any]:
    return PipelineResponse(None, _FakeHttpResponse(headers), None)  # type: ignore[arg-type]


def test_the_retry_policy_caps_retry_after() -> None:
    policy = capped_retry_policy(2.5)

    assert policy.get_retry_after(_response({"Retry-After": "3600"})) == 2.5
    assert policy.get_retry_after(_response({"Retry-After": "1"})) == 1
    assert policy.get_retry_after(_response({})) is None


def test_a_429_asking_for_an_hour_is_retried_after_the_cap(
    emulator: Emulator, azure_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(RequestsTransport, "sleep", lambda self, duration: slept.append(duration))
    emulator.faults.add("getVm", "429", retry_after=3600)
    clients = AzureClients(azure_settings)
    try:
        vm = clients.compute(SUBSCRIPTION).virtual_machines.get(RESOURCE_GROUP, "vm-healthy")
    finally:
        clients.close()

    assert vm.name == "vm-healthy"
    assert slept == [azure_settings.retry_after_cap_seconds]
    assert [entry.status for entry in emulator.log.entries()] == [429, 200]


def test_the_poll_interval_setting_reaches_the_mgmt_clients(azure_settings: Settings) -> None:
    clients = AzureClients(azure_settings)
    try:
        compute = clients.compute(SUBSCRIPTION)
    finally:
        clients.close()

    assert compute._config.polling_interval == azure_settings.poll_interval_seconds
