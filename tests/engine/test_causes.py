"""Causes no repair fixes, through the real workflow, the real SDK and the emulator: the request log shows no Run
Command but diagnose and no restart, the guest is untouched, no attempt is spent, and the outcome names the cause
and the next step."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from remediate.guest.contract import script_text
from remediate.model import Outcome, VmId
from tests.engine.conftest import Engine

RC, RESTART = "runCommand", "restart"
NETWORK_READS = ["effectiveNsgs", "networkOperationResult", "listJitPolicies"]


@pytest.mark.parametrize(
    ("scenario", "cause", "disposition", "outcome", "next_step", "run_commands"),
    [
        ("nsg-no-path", "no-network-path", "unknown", Outcome.SKIPPED, "allows TCP to the RDP port", []),
        ("jit-no-path", "no-network-path", "unknown", Outcome.SKIPPED, "request just-in-time access", []),
        ("brute-force-storm", "brute-force-storm", "under-attack", Outcome.SKIPPED, "restrict the source", [RC]),
        ("port-taken", "port-taken", "report-to-owner", Outcome.SKIPPED, "moves javaw off TCP 3389", [RC]),
        (
            "listener-one-adapter",
            "listener-bound-to-one-adapter",
            "report-to-owner",
            Outcome.SKIPPED,
            "LanAdapter",
            [RC],
        ),
        ("clock-skew", "clock-skew", "report-to-owner", Outcome.SKIPPED, "time source", [RC]),
        ("security-layer-policy", "security-layer-policy", "report-to-owner", Outcome.SKIPPED, "SecurityLayer 2", [RC]),
        ("cipher-policy", "crypto-policy", "report-to-owner", Outcome.SKIPPED, "Cipher Suite Order", [RC]),
        ("policy-certificate", "policy-certificate", "report-to-owner", Outcome.SKIPPED, "its owner renews it", [RC]),
        ("client-credssp", "not-server-side", "not-server-side", Outcome.HEALTHY, "CredSSP", [RC]),
    ],
)
def test_a_cause_no_repair_fixes_ends_without_a_change(
    engine: Engine,
    scenario: str,
    cause: str,
    disposition: str,
    outcome: Outcome,
    next_step: str,
    run_commands: list[str],
) -> None:
    vm = engine.vm(scenario)
    with engine.emulator.fleet.lock:
        before = dataclasses.asdict(vm.guest)
    result = engine.run(scenario)

    assert result.outcome is outcome, result.reason
    assert result.diagnosis is not None
    assert (result.diagnosis["cause"], result.diagnosis["disposition"]) == (cause, disposition)
    assert next_step in result.diagnosis["nextStep"] and f"cause {cause}" in result.reason
    # The request log: at most the read-only diagnose, never a restart.
    assert engine.posts_to(scenario) == run_commands
    scripts = [op.script.strip() for op in engine.emulator.operations._operations.values() if op.vm is vm]
    assert scripts == [script_text("diagnose").strip()] * len(run_commands)  # the script Run Command received
    assert not result.rebooted and result.actions == []
    with engine.emulator.fleet.lock:
        assert dataclasses.asdict(vm.guest) == before
    # No attempt spent, and the audit trail keeps the cause and the next step.
    state = engine.ledger.vm_state(VmId.parse(vm.resource_id))
    assert state.attempts_since(dt.datetime.now(dt.UTC) - dt.timedelta(days=1)) == 0
    record = engine.ledger.get(result.request_id)
    assert record is not None and f"cause {cause}" in record.outcome_reason
    (named,) = [step for step in record.steps if step.name == "classify"]
    assert named.summary is not None and named.summary["nextStep"] == result.diagnosis["nextStep"]


def test_the_path_is_read_through_the_network_apis_only_when_the_probe_fails(engine: Engine) -> None:
    engine.run("nsg-no-path")
    engine.run("client-credssp")
    operations = [e.operation for e in engine.emulator.log.entries()]
    # For the failing VM only: the LRO's POST, its Location polled until done (202, then 200), the JIT policies.
    assert [op for op in operations if op in NETWORK_READS] == [
        NETWORK_READS[0],
        *NETWORK_READS[1:2] * 2,
        NETWORK_READS[2],
    ]
    result_step = engine.ledger.get(engine.run("jit-no-path").request_id)
    assert result_step is not None
    path = next(step for step in result_step.steps if step.name == "network-path")
    assert path.summary is not None and path.summary["jit"] is True and path.summary["open"] is False
    assert path.summary["rule"] == "securityRules/SecurityCenter-JITRule_-1785712236_A45E8A95"
    assert path.summary["source"] == "127.0.0.1"


def test_a_blocked_vm_with_an_expired_certificate_is_never_repaired(engine: Engine) -> None:
    """nsg-no-path also has an expired certificate: without a path from here it is unknown, not broken."""
    result = engine.run("nsg-no-path")
    assert "DenyRdpInbound in" in result.reason and "expired" not in result.reason
    assert engine.posts_to("nsg-no-path") == []


def test_where_the_rules_allow_the_path_the_ladder_still_repairs(engine: Engine) -> None:
    result = engine.run("expired-certificate")
    assert result.outcome is Outcome.REMEDIATED, result.reason
    assert result.diagnosis is not None and result.diagnosis["disposition"] == "repair"
    assert result.diagnosis["cause"] == "listener-certificate"
