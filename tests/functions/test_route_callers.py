"""Who may call which route. The action group's function key is a host key (it opens every function-level
route), so it must buy nothing but /api/alerts: every other route needs a caller App Service authentication
vouches for, with the route's app role. A refused call changes nothing."""

from __future__ import annotations

import azure.functions as func
import pytest

from sim.appservice import APPROVER, OPERATOR, client_principal
from tests.functions.conftest import Functions, body
from tests.functions.test_function_app import metric_alert, vm_id


def _status(functions: Functions, request_id: str, headers: dict[str, str]) -> func.HttpResponse:
    request = func.HttpRequest(
        "GET",
        f"https://localhost/api/remediations/{request_id}",
        headers=headers,
        params={},
        route_params={"request_id": request_id},
        body=b"",
    )
    response: func.HttpResponse = functions.module.remediation_status(request)
    return response


def test_the_function_key_alone_posts_alerts_and_nothing_else(
    functions: Functions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WEBSITE_AUTH_ENABLED")  # deployed without App Service authentication
    vm = vm_id(functions, "expired-certificate")
    alert = functions.post("alerts", metric_alert(vm))
    assert alert.status_code == 202, alert.get_body()
    request_id = body(alert)["requestIds"][0]
    queued = functions.queued()

    # A client-set principal header is not an identity while the platform does not authenticate.
    forged = {"x-ms-client-principal": client_principal("mallory@contoso.com", OPERATOR, APPROVER)}
    runbook = functions.post("remediations", {"vms": [vm], "reason": "x"}, headers=forged)
    assert runbook.status_code == 401 and body(runbook)["error"]["field"] == "caller"
    assert "App Service authentication is off" in body(runbook)["error"]["message"]
    assert functions.queued() == queued  # nothing accepted
    assert _status(functions, request_id, forged).status_code == 401


def test_each_route_wants_its_app_role(functions: Functions) -> None:
    vm = vm_id(functions, "expired-certificate")
    no_role = {"x-ms-client-principal": client_principal("reader@contoso.com")}
    refused = functions.post("remediations", {"vms": [vm]}, headers=no_role)
    assert refused.status_code == 403 and body(refused)["error"]["code"] == "MissingAppRole"
    assert "Remediation.Operator" in body(refused)["error"]["message"]
    assert functions.queued() == 0

    operator = {
        "x-ms-client-principal": client_principal("runbook@contoso.com", OPERATOR),
        "user-agent": "Mozilla/5.0 (spoofed)",
    }
    accepted = functions.post("remediations", {"vms": [vm], "reason": "ticket 4711"}, headers=operator)
    assert accepted.status_code == 202, accepted.get_body()
    request_id = body(accepted)["requestIds"][0]
    record = functions.app.ledger.get(request_id)
    assert record is not None and "runbook@contoso.com (aad)" in record.reason  # the principal, not a User-Agent
    assert "Mozilla" not in record.reason

    assert _status(functions, request_id, no_role).status_code == 403
    approver = {"x-ms-client-principal": client_principal("lead@contoso.com", APPROVER)}
    assert _status(functions, request_id, approver).status_code == 200
    assert body(_status(functions, request_id, operator))["requestId"] == request_id
