"""The safety rules on their own: scope, tags, power state, cooldown, attempts, blast radius, circuit breaker."""

from __future__ import annotations

import datetime as dt

import pytest

from remediate.azure.vm import VmView
from remediate.engine import policy
from remediate.ledger import Decision, VmState
from remediate.model import RemediationRequest, Trigger, VmId
from remediate.settings import Settings

SUB = "00000000-0000-4000-8000-000000000001"
VM = VmId.parse(f"/subscriptions/{SUB}/resourceGroups/rg-prod/providers/Microsoft.Compute/virtualMachines/vm01")
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def settings(**env: str) -> Settings:
    return Settings.from_env({"RDPR_SCOPES": f"/subscriptions/{SUB}/resourceGroups/rg-prod", **env})


def view(**kw: object) -> VmView:
    fields: dict[str, object] = {
        "vm": VM,
        "os_type": "Windows",
        "power_state": "running",
        "agent_ready": True,
        "computer_name": "VM01",
        "tags": {},
    }
    fields.update(kw)
    return VmView(**fields)  # type: ignore[arg-type]


def test_empty_scope_means_nothing_is_in_scope() -> None:
    reason = policy.scope_refusal(Settings.from_env({}), VM)
    assert reason is not None and "RDPR_SCOPES is empty" in reason


@pytest.mark.parametrize(
    ("scopes", "allowed"),
    [
        (f"/subscriptions/{SUB}", True),
        (f"/subscriptions/{SUB}/resourceGroups/RG-PROD", True),
        (f"/subscriptions/{SUB}/resourceGroups/rg-sandbox", False),
        ("/subscriptions/00000000-0000-4000-8000-000000000009", False),
    ],
)
def test_scope_allowlist_compares_case_insensitively(scopes: str, allowed: bool) -> None:
    assert (policy.scope_refusal(Settings.from_env({"RDPR_SCOPES": scopes}), VM) is None) is allowed


@pytest.mark.parametrize(
    ("changes", "reason_part"),
    [
        ({"os_type": "Linux"}, "not a Windows VM"),
        ({"tags": {"RDP-Remediate": "OFF"}}, "opted out"),
        ({"power_state": "deallocated"}, "deallocated"),
        ({"agent_ready": False}, "agent is not ready"),
    ],
)
def test_vm_refusals_name_the_reason(changes: dict[str, object], reason_part: str) -> None:
    reason = policy.vm_refusal(settings(), view(**changes))
    assert reason is not None and reason_part in reason


def test_opt_in_mode_requires_the_tag() -> None:
    strict = settings(RDPR_REQUIRE_OPT_IN="true")
    assert "not opted in" in (policy.vm_refusal(strict, view()) or "")
    assert policy.vm_refusal(strict, view(tags={"rdp-remediate": "on"})) is None


def test_cooldown_then_attempt_limit() -> None:
    rules = settings(RDPR_COOLDOWN_MINUTES="30", RDPR_MAX_ATTEMPTS="2")
    request = RemediationRequest(VM, Trigger.ALERT, "alert")
    recent = VmState(VM, last_finished=NOW - dt.timedelta(minutes=10))
    assert "cooldown" in (policy.history_refusal(rules, recent, request, NOW) or "")
    two = {"a": (NOW - dt.timedelta(hours=2)).isoformat(), "b": (NOW - dt.timedelta(hours=1)).isoformat()}
    tired = VmState(VM, attempts=two, last_finished=NOW - dt.timedelta(hours=1))
    assert "attempt limit" in (policy.history_refusal(rules, tired, request, NOW) or "")
    old = {"a": (NOW - dt.timedelta(days=3)).isoformat(), "b": (NOW - dt.timedelta(days=2)).isoformat()}
    assert policy.history_refusal(rules, VmState(VM, attempts=old), request, NOW) is None


def test_a_redelivered_request_is_let_through() -> None:
    request = RemediationRequest(VM, Trigger.ALERT, "alert")
    state = VmState(VM, attempts={request.request_id: NOW.isoformat()}, last_finished=NOW)
    assert policy.history_refusal(settings(RDPR_MAX_ATTEMPTS="1"), state, request, NOW) is None


@pytest.mark.parametrize(
    ("fleet", "max_vms", "percent", "limit"),
    [
        (1000, "20", "10", 20),
        (100, "20", "10", 10),
        (5, "20", "10", 1),
        (0, "20", "10", 0),
        (10000, "50", "1", 50),
    ],
)
def test_blast_radius_is_the_smaller_bound(fleet: int, max_vms: str, percent: str, limit: int) -> None:
    rules = settings(RDPR_SWEEP_MAX_VMS=max_vms, RDPR_SWEEP_MAX_PERCENT=percent)
    assert policy.blast_radius(rules, fleet) == limit


def _decisions(*outcomes: str, vms: int = 0, changed: bool = True) -> list[Decision]:
    """One decision per outcome, each on its own VM unless `vms` folds them onto that many."""
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return [
        Decision(
            f"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm{i % (vms or 999)}",
            outcome,
            changed,
            start + dt.timedelta(minutes=i),
        )
        for i, outcome in enumerate(outcomes)
    ]


def test_circuit_breaker_opens_on_mostly_failures() -> None:
    rules = settings(RDPR_CIRCUIT_MIN_OUTCOMES="4", RDPR_CIRCUIT_FAILURE_RATIO="0.5")
    assert policy.circuit_refusal(rules, _decisions("failed", "failed", "failed")) is None  # too few to judge
    mostly_fine = _decisions("failed", "remediated", "remediated", "remediated", "skipped")
    assert policy.circuit_refusal(rules, mostly_fine) is None
    reason = policy.circuit_refusal(rules, _decisions("failed", "failed", "remediated", "unverified", "healthy"))
    assert reason is not None and "circuit breaker open" in reason


def test_circuit_breaker_counts_vms_not_outcomes() -> None:
    rules = settings(RDPR_CIRCUIT_MIN_OUTCOMES="4", RDPR_CIRCUIT_FAILURE_RATIO="0.5")
    assert policy.circuit_refusal(rules, _decisions(*["failed"] * 20, vms=1)) is None  # one VM, failed 20 times
    assert policy.circuit_refusal(rules, _decisions(*["failed"] * 20, vms=3)) is None  # three VMs: too few
    assert policy.circuit_refusal(rules, _decisions(*["failed"] * 20, vms=4)) is not None
    # A VM's latest outcome is what counts: four VMs failed once, then were repaired.
    recovered = _decisions(*["failed"] * 4, *["remediated"] * 4, vms=4)
    assert policy.circuit_refusal(rules, recovered) is None


def test_failures_that_changed_nothing_never_open_the_circuit() -> None:
    rules = settings(RDPR_CIRCUIT_MIN_OUTCOMES="4", RDPR_CIRCUIT_FAILURE_RATIO="0.5")
    assert policy.circuit_refusal(rules, _decisions(*["failed"] * 10, changed=False)) is None
