"""The bearer token goes only to the configured ARM and Log Analytics endpoints.

A second loopback HTTPS server, trusted by the product's TLS settings, stands in for the attacker. Whatever
names it (a tampered continuation token in the ledger, a polling header, a hand-made request), it must see
zero connections, and the request must end `failed` with the reason.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import urlparse

import pytest
from azure.core.credentials import AccessToken
from azure.core.rest import HttpRequest

from remediate.azure.clients import AzureClients, StaticTokenCredential
from remediate.engine.workflow import Workflow
from remediate.model import Outcome, UntrustedHost
from remediate.settings import Settings
from tests.engine.conftest import Engine
from tests.trust.attacker import Attacker, reachable

RESTART, RUN_COMMAND = "restart", "runCommand"


class Killed(BaseException):
    """The worker process dying right after a step: nothing in the workflow catches it."""


def _assert_untouched(attacker: Attacker) -> None:
    assert attacker.connections == 0 and attacker.tokens == []
    assert reachable(attacker.url)  # it was listening all along, and counts what reaches it:
    deadline = time.monotonic() + 5
    while attacker.connections == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert attacker.connections == 1


def _tamper(token: str, arm_url: str, attacker_url: str) -> str:
    state = json.loads(base64.b64decode(token))
    text = json.dumps(state).replace(arm_url, attacker_url)
    assert text != json.dumps(state)
    return base64.b64encode(text.encode()).decode()


def test_a_tampered_continuation_token_in_the_ledger_sends_nothing_to_its_host(
    engine: Engine, attacker: Attacker
) -> None:
    request = engine.request("expired-certificate")

    def die_after_reboot(step: str, detail: str) -> None:
        if step == "reboot" and detail != "started":
            raise Killed

    with pytest.raises(Killed):
        engine.workflow(request, progress=die_after_reboot).run()
    # Whoever can write the ledger's table rewrites the stored operation to point at their host.
    rows = list(engine.ledger.audit.query_entities("PartitionKey eq @pk", parameters={"pk": request.request_id}))
    reboot = next(row for row in rows if row.get("Name") == "reboot")
    summary = json.loads(reboot["Summary"])
    summary["continuationToken"] = _tamper(summary["continuationToken"], engine.settings.arm_url, attacker.url)
    reboot["Summary"] = json.dumps(summary)
    engine.ledger.audit.upsert_entity(reboot)

    result = engine.workflow(request).run()  # the redelivery resumes the wait from the stored token

    assert result.outcome is Outcome.FAILED and result.failed_step == "wait"
    assert "refused to send the Azure credential with a stored continuation token" in result.reason
    assert attacker.url in result.reason
    assert engine.posts_to("expired-certificate").count(RESTART) == 1  # and no second restart either
    _assert_untouched(attacker)


def test_a_token_that_is_not_azure_cores_is_refused(engine: Engine) -> None:
    request = engine.request("expired-certificate")

    def die_after_reboot(step: str, detail: str) -> None:
        if step == "reboot" and detail != "started":
            raise Killed

    with pytest.raises(Killed):
        engine.workflow(request, progress=die_after_reboot).run()
    rows = list(engine.ledger.audit.query_entities("PartitionKey eq @pk", parameters={"pk": request.request_id}))
    reboot = next(row for row in rows if row.get("Name") == "reboot")
    reboot["Summary"] = json.dumps({"continuationToken": "gASVKAAAAAAAAAB9lC4="})  # a pickle, not JSON
    engine.ledger.audit.upsert_entity(reboot)

    result = engine.workflow(request).run()
    assert result.outcome is Outcome.FAILED and "not one azure-core made" in result.reason


@pytest.mark.parametrize("operation", [RESTART, RUN_COMMAND])
def test_a_polling_header_naming_another_host_is_never_followed(
    engine: Engine, attacker: Attacker, operation: str
) -> None:
    vm = engine.vm("expired-certificate")
    engine.emulator.foreign_polling_url = attacker.url
    engine.emulator.faults.add(operation, "foreign-polling-host", count=1, vm=vm.resource_id)

    result = engine.run("expired-certificate")

    assert result.outcome is Outcome.FAILED, result.reason
    assert "refused to send the Azure credential" in result.reason and attacker.url in result.reason
    assert engine.emulator.faults.pending() == []  # the hostile answer was really given
    record = engine.ledger.get(result.request_id)
    assert record is not None and record.outcome == "failed" and "refused" in record.outcome_reason
    _assert_untouched(attacker)


def test_real_mode_clients_refuse_other_hosts_before_asking_for_a_token(attacker: Attacker) -> None:
    settings = Settings.from_env({"RDPR_SCOPES": ""})  # management.azure.com, api.loganalytics.io
    clients = AzureClients(settings)
    asked: list[tuple[str, ...]] = []

    class Counting(StaticTokenCredential):
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            asked.append(scopes)
            return super().get_token(*scopes)

    clients._credential = Counting()  # no managed identity here; counts whether a token is ever wanted
    try:
        for client in (clients.compute("00000000-0000-4000-8000-000000000001"), clients.resource_graph()):
            with pytest.raises(UntrustedHost, match=r"management\.azure\.com"):
                client._client.send_request(HttpRequest("GET", f"{attacker.url}/subscriptions"))
        with pytest.raises(UntrustedHost):
            clients.logs()._client.send_request(HttpRequest("POST", f"{attacker.url}/v1/workspaces/x/query"))
        # Same host, other port or scheme: refused too.
        with pytest.raises(UntrustedHost):
            clients.resource_graph()._client.send_request(HttpRequest("GET", "https://management.azure.com:8443/x"))
    finally:
        clients.close()
    assert asked == []
    _assert_untouched(attacker)


def test_emulator_mode_refuses_another_loopback_port(engine: Engine, attacker: Attacker) -> None:
    workflow = Workflow(
        engine.request("healthy"), settings=engine.settings, ledger=engine.ledger, clients=engine.clients
    )
    with pytest.raises(UntrustedHost):
        workflow.clients.compute(engine.vm("healthy").subscription_id).send_request(
            HttpRequest("GET", f"{attacker.url}/subscriptions")
        )
    _assert_untouched(attacker)


def _behind_a_backslash(attacker: Attacker, arm_url: str) -> str:
    """`attacker\\@arm`: urlparse reads the ARM host, urllib3 (the transport) the attacker's."""
    arm = urlparse(arm_url)
    return f"{attacker.url}\\@{arm.hostname}:{arm.port}"


@pytest.mark.parametrize("operation", [RESTART, RUN_COMMAND])
def test_a_polling_header_hiding_another_host_behind_a_backslash_is_never_followed(
    engine: Engine, attacker: Attacker, operation: str
) -> None:
    vm = engine.vm("expired-certificate")
    engine.emulator.foreign_polling_url = _behind_a_backslash(attacker, engine.settings.arm_url)
    engine.emulator.faults.add(operation, "foreign-polling-host", count=1, vm=vm.resource_id)

    result = engine.run("expired-certificate")

    assert result.outcome is Outcome.FAILED, result.reason
    assert "refused to send the Azure credential" in result.reason
    assert engine.emulator.faults.pending() == []
    _assert_untouched(attacker)


def test_a_continuation_token_hiding_another_host_behind_a_backslash_is_refused(
    engine: Engine, attacker: Attacker
) -> None:
    request = engine.request("expired-certificate")

    def die_after_reboot(step: str, detail: str) -> None:
        if step == "reboot" and detail != "started":
            raise Killed

    with pytest.raises(Killed):
        engine.workflow(request, progress=die_after_reboot).run()
    rows = list(engine.ledger.audit.query_entities("PartitionKey eq @pk", parameters={"pk": request.request_id}))
    reboot = next(row for row in rows if row.get("Name") == "reboot")
    summary = json.loads(reboot["Summary"])
    hidden = _behind_a_backslash(attacker, engine.settings.arm_url).replace("\\", "\\\\")  # JSON-escaped
    summary["continuationToken"] = _tamper(summary["continuationToken"], engine.settings.arm_url, hidden)
    reboot["Summary"] = json.dumps(summary)
    engine.ledger.audit.upsert_entity(reboot)

    result = engine.workflow(request).run()

    assert result.outcome is Outcome.FAILED and result.failed_step == "wait"
    assert "refused to send the Azure credential with a stored continuation token" in result.reason
    assert engine.posts_to("expired-certificate").count(RESTART) == 1
    _assert_untouched(attacker)


def test_real_mode_refuses_a_backslash_url_before_asking_for_a_token(attacker: Attacker) -> None:
    settings = Settings.from_env({"RDPR_SCOPES": ""})
    clients = AzureClients(settings)
    asked: list[tuple[str, ...]] = []

    class Counting(StaticTokenCredential):
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            asked.append(scopes)
            return super().get_token(*scopes)

    clients._credential = Counting()
    try:
        with pytest.raises(UntrustedHost):
            clients.resource_graph()._client.send_request(
                HttpRequest("GET", f"{attacker.url}\\@management.azure.com/subscriptions")
            )
    finally:
        clients.close()
    assert asked == []
    _assert_untouched(attacker)
