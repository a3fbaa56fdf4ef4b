"""The approved plan binds what runs: the same steps on the same targets in the same order, or fewer; never
another step, another target or another order."""

from __future__ import annotations

from remediate.engine import approved
from remediate.engine.decide import Action, Step

RENEW = Step(Action.RENEW_CERTIFICATE, (("Thumbprint", "AB12"),), "expired")
GRANT = Step(Action.GRANT_KEY_READ, (("KeyFile", "f686_1"), ("Mode", "grant"), ("Thumbprint", "AB12")), "acl")
RESET = Step(Action.RESET_MACHINEKEYS, (("Force", "false"),), "store broken")


def test_the_same_plan_or_less_of_it_runs() -> None:
    plan = approved.of_steps([GRANT, RENEW])
    assert approved.before_any_change([GRANT, RENEW], plan) is None
    assert approved.before_any_change([RENEW], plan) is None  # a step the facts no longer call for dropped out
    assert approved.before_any_change([], plan) is None


def test_another_step_target_or_order_is_refused_naming_both_plans() -> None:
    plan = approved.of_steps([RENEW])
    why = approved.before_any_change([RESET], plan)
    assert why is not None and "reset-machinekeys was not approved" in why
    assert "approved renew-certificate (Thumbprint=AB12)" in why and approved.fingerprint(plan) in why
    other_key = Step(Action.GRANT_KEY_READ, (("KeyFile", "f686_2"), ("Mode", "grant"), ("Thumbprint", "AB12")), "")
    assert approved.before_any_change([other_key], approved.of_steps([GRANT])) is not None
    assert approved.before_any_change([RENEW, GRANT], approved.of_steps([GRANT, RENEW])) is not None
    assert approved.before_round(2, [RESET], plan) is not None and "round 2" in str(
        approved.before_round(2, [RESET], plan)
    )


def test_no_approval_binds_a_request_outside_approval_mode_and_an_empty_approval_allows_nothing() -> None:
    assert approved.before_any_change([RESET], None) is None
    assert approved.before_any_change([RENEW], approved.canonical([])) is not None


def test_the_recorded_decision_and_the_live_steps_give_the_same_plan() -> None:
    recorded = {"steps": [GRANT.to_json(), RENEW.to_json()]}
    assert approved.of_decision_json(recorded) == approved.of_steps([GRANT, RENEW])
