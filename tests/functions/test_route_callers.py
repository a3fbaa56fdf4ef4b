"""Who may call which route. The action group's function key is a host key (it opens every function-level
route), so it must buy nothing but /api/alerts: every other route needs a caller App Service authentication
vouches for, with the route's app role. A refused call changes nothing."""

from __future__ import annotations

import datetime as dt
import json

import azure.functions as func
import pytest

from remediate.model import RemediationRequest, Trigger, VmId
from sim.appservice import APPROVER, OPERATOR, app_principal, client_principal
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


def test_an_application_caller_is_recorded_by_client_and_object_id(functions: Functions) -> None:
    """A runbook's managed identity signs in with an app-only token: no user name, its client id in `azp`, its app
    role in `roles`. The record names it by both ids (a name can be reused; the object id cannot)."""
    vm = vm_id(functions, "expired-certificate")
    client_id, object_id = "6f1e0c2b-3d4a-4b5c-8d6e-7f8091a2b3c4", "0a1b2c3d-4e5f-4061-8172-93a4b5c6d7e8"
    headers = {"x-ms-client-principal": app_principal(client_id, object_id, OPERATOR)}
    accepted = functions.post("remediations", {"vms": [vm], "reason": "nightly runbook"}, headers=headers)
    assert accepted.status_code == 202, accepted.get_body()
    record = functions.app.ledger.get(body(accepted)["requestIds"][0])
    assert record is not None and f"{client_id} (aad, oid {object_id})" in record.reason


def test_a_message_the_intake_did_not_write_runs_nothing(functions: Functions) -> None:
    """Write access to the queue is not a way around the routes' roles, the storm guard or approval: a message
    with no accepted request, or one that differs from its accepted request, is dropped unrun."""
    vm = functions.emulator.fleet.by_scenario("expired-certificate")[0]
    forged = RemediationRequest(VmId.parse(vm.resource_id), Trigger.SWEEP, "forged")
    functions.app.queue.queue.send_message(json.dumps(forged.to_message()))
    accepted = functions.post("remediations", {"vms": [vm.resource_id], "reason": "look only", "dryRun": True})
    request_id = body(accepted)["requestIds"][0]
    # The same request id and VM, but no longer a dry run:
    altered = {**forged.to_message(), "requestId": request_id, "trigger": "runbook"}
    functions.app.queue.queue.send_message(json.dumps(altered))
    functions.host.drain(timeout=60)

    assert functions.app.ledger.get(forged.request_id) is None  # nothing recorded for it, nothing run
    assert not [e for e in functions.emulator.log.entries() if e.operation == "restart"]
    assert vm.guest.certificate is not None and vm.guest.certificate.not_after < dt.datetime.now(dt.UTC)
    done = functions.app.ledger.get(request_id)
    assert done is not None and done.options.get("dryRun") is True and done.outcome is not None
    refused = functions.app.ledger.request_fields(request_id, "RefusedMessage")["RefusedMessage"]
    assert refused == "the message differs from the accepted request in options"


def test_an_alert_azure_monitor_did_not_raise_or_raised_for_another_vm_runs_nothing(functions: Functions) -> None:
    """The action group's key lets anyone who can read the action group post alerts: the worker reads each alert
    back from Alerts Management before touching the VM."""
    fleet = functions.emulator.fleet
    broken = [fleet.by_scenario(s)[0] for s in ("expired-certificate", "firewall-closed", "key-corrupt")]
    forged = functions.post("alerts", metric_alert(broken[0].resource_id), forged=True)
    real = metric_alert(broken[1].resource_id)
    assert functions.post("alerts", real).status_code == 202  # raised by Azure Monitor for broken[1]
    borrowed = metric_alert(broken[2].resource_id, alert_id=real["data"]["essentials"]["alertId"])
    borrowed_answer = functions.post("alerts", borrowed, forged=True)  # a real alert id, another VM
    functions.host.drain(timeout=60)

    forged_record = functions.app.ledger.get(body(forged)["requestIds"][0])
    assert forged_record is not None and forged_record.outcome == "skipped"
    assert "Azure Monitor has no alert" in forged_record.outcome_reason
    borrowed_record = functions.app.ledger.get(body(borrowed_answer)["requestIds"][0])
    assert borrowed_record is not None and borrowed_record.outcome == "skipped"
    assert "not this VM" in borrowed_record.outcome_reason
    acted = [e.path.lower() for e in functions.emulator.log.entries() if e.operation in ("runCommand", "restart")]
    assert not [p for p in acted for vm in (broken[0], broken[2]) if f"/virtualmachines/{vm.name.lower()}/" in p]
    assert any(f"/virtualmachines/{broken[1].name.lower()}/" in p for p in acted)  # the real one was remediated
