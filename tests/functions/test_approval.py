"""Approval mode through the real handlers: diagnose, wait, then approve, reject or expire; each decision recorded
with the principal App Service authentication vouches for, and bad decisions refused with nothing changed."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import time
from typing import Any

import azure.functions as func
import pytest

from remediate.intake import approval
from remediate.intake.app import reset_app
from remediate.model import RemediationRequest, StepResult, Trigger, VmId
from sim.appservice import client_principal as principal
from tests.functions.conftest import Functions, body
from tests.functions.test_function_app import metric_alert

APPROVER = "Remediation.Approver"


def decide(functions: Functions, verb: str, request_id: str, payload: Any, header: str | None) -> func.HttpResponse:
    headers = {"x-ms-client-principal": header} if header else {}
    request = func.HttpRequest(
        "POST",
        f"https://localhost/api/remediations/{request_id}/{verb}",
        headers=headers,
        params={},
        route_params={"request_id": request_id},
        body=payload if isinstance(payload, bytes) else json.dumps(payload).encode(),
    )
    handler = functions.module.remediation_approve if verb == "approve" else functions.module.remediation_reject
    response: func.HttpResponse = handler(request)
    return response


@pytest.fixture(autouse=True)
def platform_authentication(monkeypatch: pytest.MonkeyPatch) -> None:
    """App Service authentication is on (the platform sets WEBSITE_AUTH_ENABLED): the principal header is its."""
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")


@pytest.fixture
def approving(functions: Functions) -> Functions:
    functions.app = reset_app(dataclasses.replace(functions.app.settings, approval_triggers=("alert",)))
    return functions


def _awaiting(functions: Functions, scenario: str) -> tuple[str, str]:
    vm = functions.emulator.fleet.by_scenario(scenario)[0].resource_id
    request_id = body(functions.post("alerts", metric_alert(vm)))["requestIds"][0]
    functions.host.drain(timeout=60)
    status = body(functions.get_status(request_id))
    assert status["state"] == "awaiting-approval", status
    return vm, request_id


def _count(functions: Functions, operation: str, vm: str) -> int:
    return sum(
        1
        for e in functions.emulator.log.entries()
        if e.operation == operation and e.path.lower().startswith(vm.lower())
    )


def test_a_diagnosed_plan_waits_and_runs_once_approved(approving: Functions) -> None:
    functions = approving
    vm, request_id = _awaiting(functions, "expired-certificate")
    status = body(functions.get_status(request_id))
    plan = status["approval"]
    assert "renew" in plan["Plan"] and "awaiting approval until" in status["outcomeReason"]
    evidence = body(functions.get_status(plan["PlanRequest"]))  # the diagnosis and its journal
    assert evidence["outcome"] == "planned" and {"diagnose", "plan"} <= {s["name"] for s in evidence["steps"]}
    assert _count(functions, "restart", vm) == 0 and _count(functions, "runCommand", vm) == 1  # diagnose only

    # Refused, nothing changed: no principal, a principal without the role, no reason, an unknown request.
    anonymous = decide(functions, "approve", request_id, {"reason": "ok"}, None)
    assert anonymous.status_code == 401 and body(anonymous)["error"]["field"] == "caller"
    outsider = decide(functions, "approve", request_id, {"reason": "ok"}, principal("mallory@contoso.com", "Reader"))
    assert outsider.status_code == 403 and body(outsider)["error"]["field"] == "caller"
    unexplained = decide(functions, "approve", request_id, {}, principal("alice@contoso.com", APPROVER))
    assert unexplained.status_code == 400 and body(unexplained)["error"]["field"] == "reason"
    unknown = decide(functions, "approve", "f" * 32, {"reason": "ok"}, principal("alice@contoso.com", APPROVER))
    assert unknown.status_code == 404 and body(unknown)["error"]["field"] == "request_id"
    assert body(functions.get_status(request_id))["state"] == "awaiting-approval"

    approved = decide(functions, "approve", request_id, {"reason": "CHG0042"}, principal("alice@contoso.com", APPROVER))
    assert approved.status_code == 200 and body(approved)["by"] == "alice@contoso.com (aad)"
    functions.host.drain(timeout=60)
    done = body(functions.get_status(request_id))
    assert done["outcome"] == "remediated" and done["approval"]["ApprovedBy"] == "alice@contoso.com (aad)"
    assert done["approval"]["DecisionReason"] == "CHG0042"
    assert _count(functions, "restart", vm) == 1
    assert {"diagnose", "plan"} <= {s["name"] for s in done["steps"]}  # diagnosed again before acting

    again = decide(functions, "approve", request_id, {"reason": "again"}, principal("alice@contoso.com", APPROVER))
    assert again.status_code == 409 and "finished (remediated)" in body(again)["error"]["message"]


def test_a_rejected_plan_ends_unchanged_with_who_and_why(approving: Functions) -> None:
    functions = approving
    vm, request_id = _awaiting(functions, "keystore-acl")
    rejected = decide(
        functions, "reject", request_id, {"reason": "owner fixes it"}, principal("bob@contoso.com", APPROVER)
    )
    assert rejected.status_code == 200
    status = body(functions.get_status(request_id))
    assert status["outcome"] == "skipped" and "rejected by bob@contoso.com (aad)" in status["outcomeReason"]
    assert status["approval"]["RejectedBy"] == "bob@contoso.com (aad)"
    assert _count(functions, "restart", vm) == 0 and _count(functions, "runCommand", vm) == 1


def test_an_undecided_plan_expires_and_an_expired_one_cannot_be_approved(approving: Functions) -> None:
    functions = approving
    vm, request_id = _awaiting(functions, "expired-certificate")
    # Time passes (Azurite cannot fast-forward): the recorded expiry moves into the past.
    functions.app.ledger.note(request_id, ApprovalExpires=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    late = decide(functions, "approve", request_id, {"reason": "late"}, principal("alice@contoso.com", APPROVER))
    assert late.status_code == 409 and body(late)["error"]["code"] == "ApprovalExpired"
    assert body(functions.get_status(request_id))["state"] == "awaiting-approval"  # nothing changed
    message = functions.app.ledger.request_fields(request_id, "MessageId", "PopReceipt")
    functions.app.queue.queue.update_message(
        message["MessageId"], pop_receipt=message["PopReceipt"], visibility_timeout=0
    )
    functions.host.drain(timeout=60)
    status = body(functions.get_status(request_id))
    assert status["outcome"] == "skipped" and "approval expired" in status["outcomeReason"]
    assert _count(functions, "restart", vm) == 0


def test_requests_of_other_triggers_need_no_approval(approving: Functions) -> None:
    functions = approving
    vm = functions.emulator.fleet.by_scenario("expired-certificate")[0].resource_id
    request_id = body(functions.post("remediations", {"vms": [vm]}))["requestIds"][0]
    functions.host.drain(timeout=60)
    assert body(functions.get_status(request_id))["outcome"] == "remediated"


def test_without_app_service_authentication_a_principal_header_is_no_identity(
    approving: Functions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client can send any X-MS-CLIENT-PRINCIPAL: only the platform's authentication makes it true."""
    functions = approving
    _, request_id = _awaiting(functions, "expired-certificate")
    monkeypatch.delenv("WEBSITE_AUTH_ENABLED")
    forged = decide(functions, "approve", request_id, {"reason": "ok"}, principal("mallory@contoso.com", APPROVER))
    assert forged.status_code == 401 and body(forged)["error"]["field"] == "caller"
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")  # the status read is an authenticated operator's
    assert body(functions.get_status(request_id))["state"] == "awaiting-approval"  # nothing changed


def _race(functions: Functions, request_id: str, deciders: list[tuple[str, str]]) -> dict[str, func.HttpResponse]:
    """Every decider calls the handler at the same moment (a barrier), each on its own thread."""
    start = threading.Barrier(len(deciders))
    answers: dict[str, func.HttpResponse] = {}

    def one(verb: str, who: str) -> None:
        start.wait()
        answers[who] = decide(functions, verb, request_id, {"reason": f"{verb} by {who}"}, principal(who, APPROVER))

    threads = [threading.Thread(target=one, args=decider) for decider in deciders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_of_decisions_made_at_once_exactly_one_wins(approving: Functions) -> None:
    """Approvers racing on the same requests (threads against Azurite through the real handler): one decision per
    request stands, every other caller gets 409 naming the state the winner left, and the record names only the
    winner."""
    functions = approving
    vm = VmId.parse(functions.emulator.fleet.by_scenario("expired-certificate")[0].resource_id)
    ids = []
    for _ in range(8):
        request = RemediationRequest(vm, Trigger.ALERT, "test")
        functions.app.ledger.record_accepted(request)
        functions.app.ledger.mark_waiting(request.request_id, "awaiting-approval", "awaiting approval", Plan="renew")
        ids.append(request.request_id)
    deciders = [("approve", f"alice{i}@contoso.com") for i in range(3)] + [
        ("reject", f"bob{i}@contoso.com") for i in range(3)
    ]
    for request_id in ids:
        answers = _race(functions, request_id, deciders)
        winners = [who for who, answer in answers.items() if answer.status_code == 200]
        assert len(winners) == 1, {who: a.status_code for who, a in answers.items()}
        winner = winners[0]
        status = body(functions.get_status(request_id))
        found = "in state queued" if winner.startswith("alice") else "finished (skipped)"
        for who, answer in answers.items():
            if who != winner:
                assert answer.status_code == 409 and found in body(answer)["error"]["message"], body(answer)
        recorded = status["approval"]
        if winner.startswith("alice"):
            assert status["state"] == "queued" and recorded["ApprovedBy"] == f"{winner} (aad)"
            assert "RejectedBy" not in recorded and recorded["DecisionReason"] == f"approve by {winner}"
        else:
            assert status["outcome"] == "skipped" and recorded["RejectedBy"] == f"{winner} (aad)"
            assert "ApprovedBy" not in recorded and recorded["DecisionReason"] == f"reject by {winner}"


def test_a_run_whose_fresh_plan_goes_beyond_the_approved_one_changes_nothing(approving: Functions) -> None:
    """The approval binds the exact steps approved: between approval and run the VM's key file lost NETWORK
    SERVICE's read, so the fresh plan adds a step on that key file. The run stops before any change, recorded."""
    functions = approving
    vm, request_id = _awaiting(functions, "expired-certificate")
    waiting = body(functions.get_status(request_id))["approval"]
    assert [step[0] for step in json.loads(waiting["PlanSteps"])] == ["renew-certificate"]
    approved = decide(functions, "approve", request_id, {"reason": "CHG7"}, principal("alice@contoso.com", APPROVER))
    assert approved.status_code == 200 and body(approved)["planFingerprint"] == waiting["PlanFingerprint"]
    machine = functions.emulator.fleet.get(vm)
    assert machine is not None and machine.guest.key is not None
    machine.guest.key.readers.discard("S-1-5-20")  # NETWORK SERVICE lost its read on the listener's key file
    functions.host.drain(timeout=60)
    status = body(functions.get_status(request_id))
    assert status["outcome"] == "skipped", status["outcomeReason"]
    assert "the plan changed since it was approved" in status["outcomeReason"]
    assert "grant-key-read was not approved" in status["outcomeReason"]
    assert status["approval"]["ApprovedPlanFingerprint"] == waiting["PlanFingerprint"]
    fresh = next(s for s in status["steps"] if s["name"] == "plan")["summary"]["steps"]
    assert [s["action"] for s in fresh][:1] == ["grant-key-read"]  # the new plan is in the journal
    assert _count(functions, "restart", vm) == 0 and _count(functions, "runCommand", vm) == 2  # two diagnoses


def test_an_approval_gone_stale_before_its_run_starts_is_diagnosed_again_and_re_awaited(approving: Functions) -> None:
    """Approved, then the run waited (slots, a hold, a window) past RDPR_APPROVAL_EXPIRY_MINUTES: the facts may
    have changed, so the approval is withdrawn (recorded), the VM diagnosed again, and a new approval awaited."""
    functions = approving
    vm, request_id = _awaiting(functions, "expired-certificate")
    first = decide(functions, "approve", request_id, {"reason": "CHG8"}, principal("alice@contoso.com", APPROVER))
    assert first.status_code == 200
    # Time passes (Azurite cannot fast-forward): the approval is recorded as given longer ago than the expiry.
    minutes = functions.app.settings.approval_expiry_minutes
    functions.app.ledger.note(request_id, ApprovedAt=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes + 1))
    functions.host.drain(timeout=60)
    status = body(functions.get_status(request_id))
    assert status["state"] == "awaiting-approval", status
    assert status["approval"]["PlanRequest"] == f"{request_id}plan2"  # a fresh diagnosis, with its own journal
    assert "alice@contoso.com (aad)" in status["approval"]["StaleApproval"]
    assert body(functions.get_status(f"{request_id}plan2"))["outcome"] == "planned"
    assert _count(functions, "restart", vm) == 0 and _count(functions, "runCommand", vm) == 2
    again = decide(functions, "approve", request_id, {"reason": "CHG9"}, principal("carol@contoso.com", APPROVER))
    assert again.status_code == 200
    functions.host.drain(timeout=60)
    done = body(functions.get_status(request_id))
    assert done["outcome"] == "remediated" and done["approval"]["ApprovedBy"] == "carol@contoso.com (aad)"
    assert _count(functions, "restart", vm) == 1


@pytest.mark.parametrize("parked", ["held", "waiting"])
def test_an_approval_that_went_stale_while_its_run_had_only_read_is_withdrawn(
    approving: Functions, parked: str
) -> None:
    """The run journaled its preflight and diagnosis, then was held by the storm guard (or waited for its window)
    past the expiry before changing anything: the approval was not used yet, so it is withdrawn and awaited again."""
    functions = approving
    vm, request_id = _awaiting(functions, "expired-certificate")
    assert decide(functions, "approve", request_id, {"reason": "CHG11"}, principal("alice@contoso.com", APPROVER))
    ledger = functions.app.ledger
    now = time.time()
    for index, name in enumerate(("preflight", "probe", "diagnose")):  # read-only steps, nothing changed
        ledger.record_step(request_id, index, StepResult(name, "ok", now, now, "read", {"changed": False}))
    ledger.mark_waiting(request_id, parked, "parked before its first change")
    minutes = functions.app.settings.approval_expiry_minutes
    ledger.note(request_id, ApprovedAt=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes + 1))
    functions.host.drain(timeout=60)
    status = body(functions.get_status(request_id))
    assert status["state"] == "awaiting-approval", status
    assert "alice@contoso.com (aad)" in status["approval"]["StaleApproval"]
    assert _count(functions, "restart", vm) == 0


def test_an_approval_given_just_before_the_expiry_is_not_overwritten_by_it(approving: Functions) -> None:
    """The expiry closes a request only while it still awaits approval, by a write conditional on that: the
    message that comes back at the expiry finds the approval and runs it."""
    functions = approving
    vm, request_id = _awaiting(functions, "expired-certificate")
    assert decide(functions, "approve", request_id, {"reason": "CHG10"}, principal("alice@contoso.com", APPROVER))
    functions.app.ledger.note(request_id, ApprovalExpires=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    assert not approval.close_expired(functions.app.ledger, request_id)
    status = body(functions.get_status(request_id))
    assert status["state"] == "queued" and status["approval"]["ApprovedBy"] == "alice@contoso.com (aad)"
    functions.host.drain(timeout=60)
    assert body(functions.get_status(request_id))["outcome"] == "remediated"
    assert _count(functions, "restart", vm) == 1
