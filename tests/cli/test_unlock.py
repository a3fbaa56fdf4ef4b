"""`rdp-remediate unlock`: frees a lock a stopped run left, with who and why on the record; never while the
holder's restart may still be under way."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from remediate.cli import EXIT_OK, EXIT_REFUSED, main
from remediate.ledger import Ledger
from remediate.model import RemediationRequest, StepResult, Trigger, VmId
from remediate.settings import get_settings

VM = VmId.parse(
    "/subscriptions/00000000-0000-4000-8000-000000000001/resourceGroups/rg-prod"
    "/providers/Microsoft.Compute/virtualMachines/vm-expired-certificate"
)


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch, storage_env: dict[str, str], ledger: Ledger) -> Iterator[str]:
    for name, value in storage_env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    request = RemediationRequest(VM, Trigger.CLI, "test")
    ledger.record_accepted(request)
    assert ledger.acquire(VM, request.request_id, 60)[0]
    yield request.request_id
    get_settings.cache_clear()


def step(name: str, status: str) -> StepResult:
    return StepResult(name, status, time.time(), time.time(), "")


def test_unlock_releases_and_records_who_and_why(held: str, ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    ledger.record_step(held, 0, step("diagnose", "started"))
    code = main(["unlock", "--vm", str(VM), "--reason", "run killed; VM checked", "--by", "ops@contoso", "--json"])
    assert code == EXIT_OK and json.loads(capsys.readouterr().out)["heldBy"] == held
    assert ledger.vm_state(VM).owner is None
    record = ledger.get(held)
    assert record is not None and record.state == "interrupted"
    assert record.outcome_reason == "lock released by ops@contoso: run killed; VM checked"


def test_unlock_is_refused_while_a_restart_is_in_flight(
    held: str, ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger.record_step(held, 0, step("diagnose", "ok"))
    ledger.record_step(held, 1, step("reboot", "ok"))
    code = main(["unlock", "--vm", str(VM), "--reason", "impatient"])
    err = capsys.readouterr().err
    assert code == EXIT_REFUSED and err.count("\n") == 1 and "sent a restart" in err
    assert ledger.vm_state(VM).owner == held  # still locked
    ledger.record_step(held, 2, step("wait", "ok"))  # the VM came back: now it may go
    assert main(["unlock", "--vm", str(VM), "--reason", "after the restart"]) == EXIT_OK
    assert ledger.vm_state(VM).owner is None
