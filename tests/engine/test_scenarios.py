"""Machines where the right repair is none: through the real workflow, the real SDK and the emulator, the request
log shows exactly one Run Command (diagnose) and no restart, the guest is untouched, and the outcome says why."""

from __future__ import annotations

import dataclasses

import pytest

from remediate.model import Outcome
from tests.engine.conftest import Engine

RC, RESTART = "runCommand", "restart"


@pytest.mark.parametrize(
    ("scenario", "outcome", "why"),
    [
        ("policy-certificate", Outcome.SKIPPED, "Group Policy certificate template (HashType 2)"),
        ("firewall-policy", Outcome.SKIPPED, "a Group Policy copy of RemoteDesktop-UserMode-In-TCP governs"),
        ("firewall-custom-allow", Outcome.HEALTHY, "RDP works"),
        ("cached-session", Outcome.FAILED, "logon types 10 and 12"),
        ("wmi-hung", Outcome.SKIPPED, "could not be read"),
    ],
)
def test_nothing_is_changed_where_nothing_should_be(engine: Engine, scenario: str, outcome: Outcome, why: str) -> None:
    guest = engine.vm(scenario).guest
    before = dataclasses.asdict(guest)
    result = engine.run(scenario)
    assert result.outcome is outcome and why in result.reason, result.reason
    assert engine.posts_to(scenario) == [RC]
    assert not result.rebooted and result.actions == []
    with engine.emulator.fleet.lock:
        assert dataclasses.asdict(guest) == before


def test_a_policy_certificate_is_reported_with_its_event_evidence(engine: Engine) -> None:
    result = engine.run("policy-certificate")
    assert "events 1058 x1" in result.reason and "never touches it" in result.reason
    record = engine.ledger.get(result.request_id)
    assert record is not None
    (named,) = [step for step in record.steps if step.name == "classify"]
    assert named.summary is not None and named.summary["cause"] == "policy-certificate"
    assert named.summary["disposition"] == "report-to-owner" and "never touches it" in named.summary["nextStep"]
    assert not any(step.name == "plan" for step in record.steps)  # no plan: nothing the product would change


def test_with_force_a_session_does_not_stop_the_renewal(engine: Engine) -> None:
    result = engine.run("cached-session", force=True)
    assert result.outcome is Outcome.REMEDIATED, result.reason
    assert engine.posts_to("cached-session") == [RC, RC, RESTART, RC]


def test_the_plan_and_each_step_record_target_and_reason(engine: Engine) -> None:
    result = engine.run("key-deny")
    record = engine.ledger.get(result.request_id)
    assert record is not None
    plan = next(step for step in record.steps if step.name == "plan")
    assert plan.summary is not None
    (step,) = plan.summary["steps"]
    assert step["action"] == "remove-key-deny" and step["target"]["KeyFile"].startswith("f686aace")
    assert "a grant cannot undo a deny" in step["reason"]
    repair = next(s for s in record.steps if s.name == "remove-key-deny")
    assert repair.summary is not None and repair.summary["findings"]["removed_denies"] == ["S-1-1-0"]


def test_a_problem_the_ladder_cannot_fix_reboots_once_at_most(engine: Engine) -> None:
    """The firewall repair 'works' but a policy closes the rule again at every boot: one reboot, then the same
    step is refused rather than repeated."""
    vm = engine.vm("firewall-closed")

    def policy_reapplies(step: str, detail: str) -> None:
        if step == "reboot" and detail != "started":
            vm.guest.firewall = dict.fromkeys(vm.guest.firewall, False)

    result = engine.workflow(engine.request("firewall-closed"), progress=policy_reapplies).run()
    assert result.outcome is Outcome.FAILED and "repeating it would not help" in result.reason
    assert engine.posts_to("firewall-closed") == [RC, RC, RESTART, RC]
