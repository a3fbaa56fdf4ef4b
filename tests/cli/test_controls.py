"""`rdp-remediate release` and `approve|reject`: an operator's decisions on one request, recorded with who and
why; refused, with nothing changed, for a request in the wrong state. And the per-subscription slots."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from remediate.azure.clients import EMULATOR_CLAIMS, EMULATOR_TENANT, AzureClients, StaticTokenCredential
from remediate.cli import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, main
from remediate.engine.slots import Slots
from remediate.engine.storm import Hold
from remediate.intake.app import App
from remediate.intake.gate import hold_request
from remediate.ledger import AWAITING_APPROVAL, utcnow
from remediate.model import RemediationRequest, Trigger, VmId
from remediate.settings import Settings, get_settings

VM = VmId.parse(
    "/subscriptions/00000000-0000-4000-8000-000000000001/resourceGroups/rg-prod"
    "/providers/Microsoft.Compute/virtualMachines/vm-expired-certificate"
)
OTHER_SUB = VmId.parse(
    "/subscriptions/00000000-0000-4000-8000-000000000002/resourceGroups/rg-prod"
    "/providers/Microsoft.Compute/virtualMachines/vm-2"
)


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, storage_env: dict[str, str]) -> Iterator[App]:
    for name, value in storage_env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    current = App(get_settings())
    current.queue.create()
    yield current
    get_settings.cache_clear()


def _held(app: App) -> str:
    request = RemediationRequest(VM, Trigger.ALERT, "test")
    app.ledger.record_accepted(request)
    hold = Hold("held by the storm guard: test", utcnow())
    hold_request(app.queue.queue, app.ledger, request.request_id, json.dumps(request.to_message()), hold)
    return request.request_id


def test_release_runs_a_held_request_and_records_who(app: App, capsys: pytest.CaptureFixture[str]) -> None:
    request_id = _held(app)
    code = main(["release", request_id, "--reason", "storm checked", "--by", "ops@contoso", "--json"])
    assert code == EXIT_OK and json.loads(capsys.readouterr().out)["releasedBy"] == "ops@contoso"
    record = app.ledger.get(request_id)
    assert record is not None and record.state == "queued"
    assert record.outcome_reason.startswith("released by ops@contoso at ") and "storm checked" in record.outcome_reason
    # Counted against the budget when it reaches its first change, and never refused there: the row says who.
    assert app.ledger.request_fields(request_id, "StormReleased") == {"StormReleased": "ops@contoso"}
    assert app.storm.started_last_hour() == 0
    # Released twice: refused, nothing changed.
    assert main(["release", request_id, "--reason", "again"]) == EXIT_REFUSED
    assert "is not held (state queued)" in capsys.readouterr().err
    assert main(["release", "0" * 32, "--reason", "x"]) == EXIT_USAGE


def _awaiting(app: App) -> str:
    request = RemediationRequest(VM, Trigger.ALERT, "test")
    app.ledger.record_accepted(request)
    app.ledger.mark_waiting(request.request_id, AWAITING_APPROVAL, "awaiting approval", Plan="renew")
    return request.request_id


def test_approve_and_reject_from_the_command_line_record_the_signed_in_identity(
    app: App, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The approver is who the operator's Azure credential says (the token's claims); `--by` is only a labelled
    note. Here the emulator's credential: a user signed in with the Azure CLI, then a service principal."""
    ids = [_awaiting(app), _awaiting(app)]
    assert main(["approve", ids[0], "--reason", "CHG1", "--by", "alice"]) == EXIT_OK
    approved = app.ledger.get(ids[0])
    fields = app.ledger.request_fields(ids[0], "ApprovedBy", "OnBehalfOf")
    user = f"operator@contoso.example (Entra ID user, object id {EMULATOR_CLAIMS['oid']}, tenant {EMULATOR_TENANT})"
    assert approved is not None and approved.state == "queued" and f"approved by {user}" in approved.outcome_reason
    assert fields["ApprovedBy"] == user and "alice" not in fields["ApprovedBy"]
    assert fields["OnBehalfOf"] == f"on behalf of alice (stated by {user}, not verified)"
    # A service principal (client credentials): no user claims, `idtyp` app; the record names its application.
    for claim in ("upn", "unique_name", "name", "scp"):
        monkeypatch.delitem(EMULATOR_CLAIMS, claim)
    monkeypatch.setitem(EMULATOR_CLAIMS, "idtyp", "app")
    monkeypatch.setitem(EMULATOR_CLAIMS, "appid", "3c6e1b5a-8f2d-4a7c-9b0e-5d4f3a2c1b0e")
    monkeypatch.setitem(EMULATOR_CLAIMS, "oid", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")
    assert main(["reject", ids[1], "--reason", "owner does it"]) == EXIT_OK
    rejected = app.ledger.get(ids[1])
    service = (
        "3c6e1b5a-8f2d-4a7c-9b0e-5d4f3a2c1b0e (Entra ID application, object id 9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
    )
    assert (
        rejected is not None and rejected.outcome == "skipped" and f"rejected by {service}" in rejected.outcome_reason
    )
    assert not app.ledger.request_fields(ids[1], "OnBehalfOf")["OnBehalfOf"]  # no note given, none recorded
    assert main(["approve", ids[1], "--reason", "late"]) == EXIT_REFUSED
    assert "finished (skipped)" in capsys.readouterr().err


def test_a_credential_whose_token_names_nobody_decides_nothing(
    app: App, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    request_id = _awaiting(app)
    monkeypatch.setattr(AzureClients, "_build_credential", lambda self: StaticTokenCredential(token="opaque"))
    assert main(["approve", request_id, "--reason", "CHG1", "--by", "alice"]) == EXIT_REFUSED
    assert "not a JWT" in capsys.readouterr().err
    record = app.ledger.get(request_id)
    assert record is not None and record.state == AWAITING_APPROVAL  # nothing changed
    assert not app.ledger.request_fields(request_id, "ApprovedBy")["ApprovedBy"]


def test_per_subscription_slots_bound_each_subscription_within_the_global_bound(storage_env: dict[str, str]) -> None:
    settings = Settings.from_env({**storage_env, "RDPR_MAX_ACTIVE": "3", "RDPR_MAX_ACTIVE_PER_SUBSCRIPTION": "2"})
    slots = Slots.from_settings(settings)
    slots.create_table()
    first = [slots.try_acquire(VM, f"a{i}") for i in range(3)]
    assert first[0] is not None and first[1] is not None and first[2] is None  # the subscription is full
    other = slots.try_acquire(OTHER_SUB, "b0")
    assert other is not None  # another subscription still has room in the global bound
    assert slots.try_acquire(OTHER_SUB, "b1") is None  # now the global bound (3) is full
    assert len(slots.active()) == 3
    slots.release(first[0])
    assert slots.try_acquire(OTHER_SUB, "b1") is not None
    # A second delivery of a request that holds a slot is another holder: the bound is full, so it gets none.
    assert slots.try_acquire(OTHER_SUB, "b1") is None
    assert len(slots.active()) == 3
