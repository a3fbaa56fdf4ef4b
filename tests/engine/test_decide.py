"""The decision function: facts + probe + options in, a plan with a reason per step and per refusal out.

Unit cases pin what a Windows admin expects for each kind of machine; property tests over generated fact sets
pin the rules for every machine: no step whose precondition the facts contradict, no escalation past a refusal,
and no step again once the facts after it are clean.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remediate.engine.decide import (
    BUILTIN_RULE,
    CERTIFICATE_CHAIN,
    NETWORK_SERVICE,
    Action,
    Context,
    Decision,
    decide,
)
from remediate.model import Plan

NOW = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)
THUMB = "A" * 40
SUCCESSOR = "B" * 40
KEY_FILE = "f686aace6942fb7f7ceb231212eef4a4_0f8fad5b-d9cb-469f-a165-70867728950e"
EVERYONE = "S-1-1-0"


def iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def healthy_facts() -> dict[str, Any]:
    """What diagnose reports on a healthy Azure VM (the CRP transport certificate keeps a key in MachineKeys)."""
    return {
        "os_build": "10.0.20348.2700",
        "dotnet_release": 528449,
        "rdp_config": {"port": 3389, "deny_connections": False, "security_layer": 2, "user_authentication": 1},
        "listener": {
            "thumbprint": THUMB,
            "hash_type": 1,
            "pin": "none",
            "store": "Cert:\\LocalMachine\\Remote Desktop",
            "not_before": iso(NOW - dt.timedelta(days=10)),
            "not_after": iso(NOW + dt.timedelta(days=170)),
            "subject": "CN=VM1",
            "issuer": "CN=VM1",
            "self_signed": True,
            "successors": [],
        },
        "key": {
            "provider": "csp",
            "container": "TSSecKeySet1",
            "file": KEY_FILE,
            "exists": True,
            "system_read": True,
            "network_service_read": True,
            "denies": [],
            "sddl": "O:SYD:P(A;;FA;;;SY)(A;;GR;;;S-1-5-20)",
        },
        "machinekeys": {"exists": True, "acl_ok": True, "sddl": "O:SYD:PAI(A;;FA;;;BA)", "backup_age_hours": None},
        "other_keys": {"count": 0, "names": []},  # the CRP transport key is not counted
        "roles": [],
        "services": None,
        "firewall": {
            "profiles": {
                "Domain": {"enabled": True, "active": False},
                "Private": {"enabled": True, "active": False},
                "Public": {"enabled": True, "active": True},
            },
            "allow_paths": [{"rule": BUILTIN_RULE, "profiles": "Any", "remote": "Any", "policy": False}],
            "builtin_rule": {"enabled": True, "profiles": "Any", "port": 3389},
            "policy_copies": 0,
        },
        "port_owner": "TermService",
        "sessions": {"remote": 0, "cached": 0},
        "tls": {"tls12_server": True, "tls13_server": True},
        "events": {n: {"count": 0, "last": None} for n in ("1057", "1058", "36870", "36871")},
    }


def summary_of(facts: dict[str, Any], errors: list[str] | None = None) -> dict[str, Any]:
    return {"findings": facts, "errors": errors or []}


def plan(facts: dict[str, Any], probe: str = "healthy", errors: list[str] | None = None, **context: Any) -> Decision:
    return decide(summary_of(facts, errors), probe, Context(NOW, **context))


def actions(decision: Decision) -> list[Action]:
    return [step.action for step in decision.steps]


def expired(facts: dict[str, Any]) -> dict[str, Any]:
    facts["listener"]["not_after"] = iso(NOW - dt.timedelta(days=3))
    return facts


# --- what an admin expects, case by case ------------------------------------------------------------------------


def test_a_healthy_machine_needs_nothing() -> None:
    decision = plan(healthy_facts())
    assert decision.clean and decision.steps == () and decision.refusals == ()


def test_windows_own_expired_certificate_is_renewed_by_its_thumbprint() -> None:
    decision = plan(expired(healthy_facts()), "certificate-expired")
    (step,) = decision.steps
    assert step.action is Action.RENEW_CERTIFICATE and dict(step.parameters) == {"Thumbprint": THUMB}
    assert "SessionEnv" in step.reason


def test_a_ca_certificate_whose_key_system_cannot_open_is_never_a_store_reset() -> None:
    """The first defect: a CA certificate (HashType 3) in My, its CNG key in Crypto\\Keys, ACLs fine, the key
    not opening as SYSTEM. Nothing in MachineKeys is touched: the facts do not show the store broken."""
    facts = healthy_facts()
    facts["listener"].update(hash_type=3, pin="registry", store="Cert:\\LocalMachine\\My", issuer="CN=Contoso CA")
    facts["key"].update(provider="cng", container=None, file=None, exists=None, system_read=None)
    for probe in ("healthy", "no-certificate"):
        decision = plan(facts, probe, done=frozenset({"renew-certificate:"}))
        assert Action.RESET_MACHINEKEYS not in actions(decision)


def test_an_admin_pinned_certificate_close_to_expiry_is_reported_not_renewed() -> None:
    facts = healthy_facts()
    facts["listener"].update(hash_type=3, pin="registry", store="Cert:\\LocalMachine\\My")
    facts["listener"]["not_after"] = iso(NOW + dt.timedelta(days=5))
    decision = plan(facts)
    assert decision.steps == () and any("its owner replaces it" in r for r in decision.reports)


@pytest.mark.parametrize("probe", ["certificate-expired", "healthy", "no-certificate"])
def test_a_group_policy_certificate_is_never_touched(probe: str) -> None:
    facts = expired(healthy_facts())
    facts["listener"].update(hash_type=2, pin="policy", store="Cert:\\LocalMachine\\My")
    facts["events"]["1058"] = {"count": 2, "last": "failed to replace"}
    decision = plan(facts, probe, done=frozenset({"renew-certificate:"}))
    assert decision.steps == () and decision.refusals == ()
    assert not decision.clean and "1058 x2" in decision.explain()


def test_an_expired_custom_certificate_is_re_pinned_to_its_successor_or_reported() -> None:
    facts = expired(healthy_facts())
    facts["listener"].update(hash_type=3, pin="registry", store="Cert:\\LocalMachine\\My")
    assert plan(facts).steps == () and "no valid successor" in plan(facts).explain()
    facts["listener"]["successors"] = [{"thumbprint": SUCCESSOR, "not_after": iso(NOW + dt.timedelta(days=300))}]
    (step,) = plan(facts).steps
    assert step.action is Action.REPIN_CERTIFICATE
    assert dict(step.parameters) == {"Thumbprint": THUMB, "Successor": SUCCESSOR}


def test_a_deny_entry_is_removed_on_that_one_file_because_a_grant_cannot_undo_it() -> None:
    facts = healthy_facts()
    facts["key"].update(denies=[EVERYONE], network_service_read=False, system_read=False)
    (step,) = plan(facts, "no-certificate").steps
    assert step.action is Action.REMOVE_KEY_DENY
    assert dict(step.parameters) == {"Mode": "remove-deny", "Thumbprint": THUMB, "KeyFile": KEY_FILE}


def test_a_missing_read_for_network_service_is_granted_on_that_one_file() -> None:
    facts = healthy_facts()
    facts["key"]["network_service_read"] = False
    (step,) = plan(facts, "no-certificate").steps
    assert step.action is Action.GRANT_KEY_READ and dict(step.parameters)["KeyFile"] == KEY_FILE


def key_failing(facts: dict[str, Any]) -> dict[str, Any]:
    """The System log shows the key failing: events 1057 and 36870 in the last day."""
    facts["events"]["1057"] = {"count": 2, "last": "failed to create a new self signed certificate"}
    facts["events"]["36870"] = {"count": 5, "last": "A fatal error occurred when attempting to access"}
    return facts


def test_a_key_that_does_not_open_although_readable_is_set_aside_by_the_renewal_itself() -> None:
    """One Run Command sets the key aside after its own session check: never a set-aside left without renewal."""
    decision = plan(healthy_facts(), "no-certificate")
    (step,) = decision.steps
    assert step.action is Action.RENEW_CERTIFICATE
    assert dict(step.parameters) == {"Thumbprint": THUMB, "KeyFile": KEY_FILE}


def test_the_store_reset_comes_last_and_only_with_force_keystore_while_other_keys_live_there() -> None:
    facts = key_failing(healthy_facts())
    facts["listener"] = None
    facts["key"] = None
    facts["other_keys"].update(count=1, names=["iisConfigurationKey"])
    done = frozenset({f"renew-certificate:{KEY_FILE}"})
    refused = plan(facts, "no-certificate", done=done)
    assert refused.steps == ()
    (refusal,) = refused.refusals
    assert refusal.action is Action.RESET_MACHINEKEYS and "iisConfigurationKey" in refusal.reason
    # force overrides sessions only, never the key store's guard
    assert actions(plan(facts, "no-certificate", done=done, force=True)) == []
    forced = plan(facts, "no-certificate", done=done, force_keystore=True)
    assert actions(forced) == [Action.RESET_MACHINEKEYS]
    assert dict(forced.steps[0].parameters) == {"Force": "true", "AllowSessions": "false"}


def test_the_crp_transport_key_alone_does_not_block_the_store_reset() -> None:
    facts = key_failing(healthy_facts())
    facts.update(listener=None, key=None)
    decision = plan(facts, "no-certificate", done=frozenset({"renew-certificate:"}))
    assert actions(decision) == [Action.RESET_MACHINEKEYS]
    assert dict(decision.steps[0].parameters) == {"Force": "false", "AllowSessions": "false"}


@pytest.mark.parametrize("probe", ["healthy", "expiring-soon", "timeout", "certificate-expired"])
def test_the_store_is_never_called_broken_unless_the_probe_says_no_certificate(probe: str) -> None:
    """A renewal already ran and the key file is missing, but the probe does not show a keyless listener."""
    facts = key_failing(healthy_facts())
    facts["key"]["exists"] = False
    decision = plan(facts, probe, done=frozenset({f"renew-certificate:{KEY_FILE}"}))
    assert Action.RESET_MACHINEKEYS not in actions(decision)
    assert Action.RESET_MACHINEKEYS not in [r.action for r in decision.refusals]


def test_the_store_is_not_called_broken_without_event_evidence() -> None:
    facts = healthy_facts()
    facts.update(listener=None, key=None)
    decision = plan(facts, "no-certificate", done=frozenset({"renew-certificate:"}))
    assert Action.RESET_MACHINEKEYS not in actions(decision) + [r.action for r in decision.refusals]


def test_no_certificate_reported_while_the_probe_works_is_a_contradiction_not_a_repair() -> None:
    facts = healthy_facts()
    facts.update(listener=None, key=None)
    decision = plan(facts, "healthy")
    assert decision.steps == () and not decision.clean and "disagree" in decision.explain()


@pytest.mark.parametrize("probe", ["healthy", "no-certificate"])
def test_the_full_plan_resets_only_with_evidence(probe: str) -> None:
    healthy = plan(healthy_facts(), probe, plan=Plan.FULL, force=True, force_keystore=True)
    assert Action.RESET_MACHINEKEYS not in actions(healthy)
    shown = plan(key_failing(healthy_facts()), "no-certificate", plan=Plan.FULL)
    assert actions(shown) == [Action.RESET_MACHINEKEYS]


@pytest.mark.parametrize("role", ["domain-controller", "ad-cs"])
def test_the_store_is_never_reset_on_a_domain_controller_or_a_ca(role: str) -> None:
    facts = key_failing(healthy_facts())
    facts.update(listener=None, key=None, roles=[role])
    decision = plan(facts, "no-certificate", done=frozenset({"renew-certificate:"}), force=True, force_keystore=True)
    assert decision.steps == () and "never set aside" in decision.refusals[0].reason


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"roles": ["ad-cs"]}, "ad-cs"),
        ({"other_keys": None}, "unknown"),
        ({"machinekeys": {"exists": True, "acl_ok": True, "sddl": None, "backup_age_hours": 3.0}}, "3.0 hours"),
    ],
)
def test_the_store_reset_is_refused_for_roles_unknowns_and_a_fresh_backup(change: dict[str, Any], why: str) -> None:
    facts = key_failing(healthy_facts())
    facts.update(listener=None, key=None, other_keys={"count": 0, "names": []})
    facts.update(change)
    decision = plan(facts, "no-certificate", done=frozenset({"renew-certificate:"}), force_keystore=why == "3.0 hours")
    assert decision.steps == () and why in decision.refusals[0].reason


def test_without_a_failed_renewal_in_this_request_there_is_no_store_reset() -> None:
    facts = healthy_facts()
    facts.update(listener=None, key=None, other_keys={"count": 0, "names": []})
    assert actions(plan(facts, "no-certificate")) == [Action.RENEW_CERTIFICATE]


def test_the_folder_acl_is_repaired_before_any_certificate_work() -> None:
    facts = expired(healthy_facts())
    facts["machinekeys"]["acl_ok"] = False
    assert actions(plan(facts, "certificate-expired")) == [Action.REPAIR_FOLDER_ACL]


@pytest.mark.parametrize(
    ("change", "report"),
    [
        (
            {"allow_paths": [{"rule": "RDP jump hosts", "profiles": "Any", "remote": "10.0.9.0/24", "policy": False}]},
            "",
        ),
        ({"policy_copies": 1}, "Group Policy copy"),
        ({"builtin_rule": {"enabled": False, "profiles": "Any", "port": 3390}}, "allows 3390"),
        ({"builtin_rule": {"enabled": False, "profiles": "Domain", "port": 3389}}, "not widened"),
    ],
)
def test_the_firewall_is_changed_only_when_nothing_else_lets_rdp_in(change: dict[str, Any], report: str) -> None:
    facts = healthy_facts()
    facts["firewall"].update(allow_paths=[], builtin_rule={"enabled": False, "profiles": "Any", "port": 3389})
    assert actions(plan(facts, "refused")) == [Action.ENABLE_FIREWALL_RULE]
    facts["firewall"].update(change)
    decision = plan(facts, "refused")
    assert decision.steps == ()
    assert report in decision.explain()


def test_a_firewall_that_is_off_on_the_active_profile_needs_no_rule() -> None:
    facts = healthy_facts()
    facts["firewall"].update(allow_paths=[])
    facts["firewall"]["profiles"]["Public"]["enabled"] = False
    assert plan(facts).clean


def test_a_listener_on_another_port_is_judged_by_that_port() -> None:
    facts = healthy_facts()
    facts["rdp_config"]["port"] = 3390
    facts["firewall"].update(allow_paths=[], builtin_rule={"enabled": False, "profiles": "Any", "port": 3389})
    decision = plan(facts, "refused")
    assert decision.steps == () and "TCP 3390" in decision.explain()


def test_sessions_refuse_every_step_that_restarts_a_service_or_leads_to_a_reboot() -> None:
    facts = expired(healthy_facts())
    facts["sessions"] = {"remote": 0, "cached": 1}
    facts["key"]["network_service_read"] = False
    facts["tls"]["tls12_server"] = False
    facts["events"]["36871"] = {"count": 1, "last": "A fatal error occurred while creating a TLS server credential"}
    decision = plan(facts, "certificate-expired")
    assert actions(decision) == []
    refused = [r.action for r in decision.refusals]
    assert Action.GRANT_KEY_READ in refused and Action.ENABLE_TLS12 in refused and Action.RENEW_CERTIFICATE in refused
    assert all("logon types 10 and 12" in r.reason or "not tried" in r.reason for r in decision.refusals)
    assert actions(plan(facts, "certificate-expired", force=True)) == [
        Action.GRANT_KEY_READ,
        Action.RENEW_CERTIFICATE,
        Action.ENABLE_TLS12,
    ]


def test_a_deny_entry_with_two_sessions_plans_no_repair_that_reboots() -> None:
    facts = healthy_facts()
    facts["key"].update(denies=[EVERYONE], network_service_read=False, system_read=False)
    facts["sessions"] = {"remote": 2, "cached": 0}
    decision = plan(facts, "no-certificate")
    assert decision.steps == ()
    assert (
        decision.refusals[0].action is Action.REMOVE_KEY_DENY and "2 remote session(s)" in decision.refusals[0].reason
    )


def test_under_the_always_reboot_policy_sessions_refuse_the_firewall_step_too() -> None:
    facts = healthy_facts()
    facts["firewall"].update(allow_paths=[], builtin_rule={"enabled": False, "profiles": "Any", "port": 3389})
    facts["sessions"] = {"remote": 1, "cached": 0}
    assert actions(plan(facts, "refused")) == [Action.ENABLE_FIREWALL_RULE]
    assert actions(plan(facts, "refused", reboot_always=True)) == []


def test_a_refused_renewal_refuses_its_set_aside_with_it() -> None:
    facts = healthy_facts()
    facts["sessions"] = {"remote": 1, "cached": 0}
    decision = plan(facts, "no-certificate")
    assert decision.steps == ()
    assert [r.action for r in decision.refusals] == [Action.RENEW_CERTIFICATE]


@pytest.mark.parametrize("probe", ["healthy", "no-certificate", "tls-handshake-failed", "certificate-expired"])
def test_the_firewall_is_changed_only_when_the_probe_shows_the_port_blocked(probe: str) -> None:
    facts = healthy_facts()
    facts["firewall"].update(allow_paths=[], builtin_rule={"enabled": False, "profiles": "Any", "port": 3389})
    assert Action.ENABLE_FIREWALL_RULE not in actions(plan(facts, probe))
    assert actions(plan(facts, "timeout")) == [Action.ENABLE_FIREWALL_RULE]


def test_tls12_is_enabled_only_when_a_handshake_is_shown_failing() -> None:
    facts = healthy_facts()
    facts["tls"] = {"tls12_server": False, "tls13_server": True}  # hardened to TLS 1.3 only
    hardened = plan(facts, "healthy")
    assert hardened.steps == () and hardened.clean
    assert actions(plan(facts, "tls-handshake-failed")) == [Action.ENABLE_TLS12]
    facts["events"]["36871"] = {"count": 3, "last": "A fatal error occurred while creating a TLS server credential"}
    assert actions(plan(facts, "timeout")) == [Action.ENABLE_TLS12]


def test_unknown_facts_change_nothing_and_are_never_clean() -> None:
    facts = expired(healthy_facts())
    facts.update(listener=None, key=None, sessions=None)
    errors = ["listener: timed out", "key: timed out", "sessions: timed out"]
    decision = plan(facts, "certificate-expired", errors)
    assert decision.steps == () and not decision.clean and "could not be read" in decision.explain()


def test_a_step_that_already_ran_is_refused_not_repeated() -> None:
    facts = healthy_facts()
    facts["firewall"].update(allow_paths=[], builtin_rule={"enabled": False, "profiles": "Any", "port": 3389})
    decision = plan(facts, "refused", done=frozenset({f"enable-firewall-rule:{BUILTIN_RULE}"}))
    assert decision.steps == () and "repeating it would not help" in decision.refusals[0].reason


def test_renew_only_does_not_touch_the_firewall() -> None:
    facts = healthy_facts()
    facts["listener"]["not_after"] = iso(NOW + dt.timedelta(days=3))
    facts["firewall"].update(allow_paths=[])
    assert actions(plan(facts, plan=Plan.RENEW_ONLY)) == [Action.RENEW_CERTIFICATE]


# --- properties over generated fact sets -------------------------------------------------------------------------

SIDS = st.sampled_from(["S-1-1-0", "S-1-5-11", NETWORK_SERVICE, "S-1-5-18", "S-1-5-6"])
maybe_bool = st.sampled_from([True, False, None])


@st.composite
def fact_sets(draw: st.DrawFn) -> tuple[dict[str, Any], list[str], str, Context]:
    facts = healthy_facts()
    listener, key = facts["listener"], facts["key"]
    listener["hash_type"] = draw(st.sampled_from([0, 1, 1, 2, 3, None]))
    listener["pin"] = draw(st.sampled_from(["none", "registry", "policy"]))
    listener["not_after"] = iso(NOW + dt.timedelta(days=draw(st.integers(-60, 400))))
    listener["store"] = draw(st.sampled_from([listener["store"], "Cert:\\LocalMachine\\My", None]))
    if draw(st.booleans()):
        listener["successors"] = [{"thumbprint": SUCCESSOR, "not_after": iso(NOW + dt.timedelta(days=300))}]
    key.update(
        provider=draw(st.sampled_from(["csp", "cng", "none", None])),
        exists=draw(maybe_bool),
        system_read=draw(maybe_bool),
        network_service_read=draw(maybe_bool),
        denies=draw(st.lists(SIDS, max_size=2, unique=True)),
    )
    if draw(st.integers(0, 5)) == 0:
        facts["listener"] = facts["key"] = None
    facts["machinekeys"].update(
        exists=draw(st.sampled_from([True, True, False])),
        acl_ok=draw(maybe_bool),
        backup_age_hours=draw(st.sampled_from([None, 2.0, 30.0])),
    )
    facts["other_keys"] = draw(st.sampled_from([None, {"count": 0, "names": []}, facts["other_keys"]]))
    facts["roles"] = draw(st.sampled_from([[], ["iis"], None]))
    facts["sessions"] = draw(st.sampled_from([None, {"remote": 0, "cached": 0}, {"remote": 0, "cached": 2}]))
    facts["tls"]["tls12_server"] = draw(maybe_bool)
    firewall = facts["firewall"]
    if draw(st.booleans()):
        firewall["allow_paths"] = []
    firewall["policy_copies"] = draw(st.integers(0, 1))
    firewall["builtin_rule"] = draw(
        st.sampled_from(
            [
                None,
                {"enabled": False, "profiles": "Any", "port": 3389},
                {"enabled": False, "profiles": "Domain", "port": 3389},
            ]
        )
    )
    facts["rdp_config"]["port"] = draw(st.sampled_from([3389, 3389, 3390]))
    errors = [
        f"{name}: timed out" for name in draw(st.lists(st.sampled_from(["listener", "key", "sessions"]), max_size=2))
    ]
    for error in errors:
        facts[error.split(":")[0]] = None
    probe = draw(st.sampled_from(["healthy", "no-certificate", "certificate-expired", "refused", "timeout"]))
    done = frozenset(draw(st.lists(st.sampled_from(["renew-certificate:"]), max_size=1)))
    context = Context(NOW, plan=draw(st.sampled_from(list(Plan))), force=draw(st.booleans()), done=done)
    return facts, errors, probe, context


def _needs_listener(action: Action, facts: dict[str, Any], context: Context) -> str | None:
    keyed = CERTIFICATE_CHAIN - {Action.RESET_MACHINEKEYS, Action.REPAIR_FOLDER_ACL, Action.RENEW_CERTIFICATE}
    if action in keyed and facts.get("listener") is None:
        return "a key or pin step without a listener certificate"
    return None


def _windows_own_only(action: Action, facts: dict[str, Any], context: Context) -> str | None:
    listener = facts.get("listener")
    own_only = (Action.RESET_MACHINEKEYS, Action.RENEW_CERTIFICATE)
    if action in own_only and listener is not None and listener["hash_type"] != 1:
        return "a renewal, key set aside or store reset for a certificate that is not Windows' own"
    return None


def _repin_custom_only(action: Action, facts: dict[str, Any], context: Context) -> str | None:
    listener = facts.get("listener")
    if action is Action.REPIN_CERTIFICATE and (
        listener is None or listener["hash_type"] != 3 or listener["pin"] == "policy"
    ):
        return "a re-pin of a certificate that is not a registry-pinned custom one"
    return None


def _acl_steps(action: Action, facts: dict[str, Any], context: Context) -> str | None:
    key = facts.get("key") or {}
    if action is Action.GRANT_KEY_READ and (
        key.get("denies") or (key.get("network_service_read") is None and key.get("system_read") is None)
    ):
        return "a grant where a deny applies or nothing is known"
    if action is Action.REMOVE_KEY_DENY and not key.get("denies"):
        return "a deny removal without a deny"
    return None


def _reset_gates(action: Action, facts: dict[str, Any], context: Context) -> str | None:
    if action is not Action.RESET_MACHINEKEYS:
        return None
    age = (facts.get("machinekeys") or {}).get("backup_age_hours")
    if isinstance(age, float) and age < 24:
        return "a second reset within a day"
    others = facts.get("other_keys")
    if not context.force and (others is None or others["count"] or facts.get("roles") != []):
        return "a reset that other keys or roles depend on, without force"
    return None


def _sessions_gate(action: Action, facts: dict[str, Any], context: Context) -> str | None:
    sessions = facts.get("sessions")
    unsafe = sessions is None or sessions["remote"] + sessions["cached"]
    if action is Action.RENEW_CERTIFICATE and not context.force and unsafe:
        return "a service restart under sessions (or sessions unknown) without force"
    return None


def _firewall_gate(action: Action, facts: dict[str, Any], context: Context) -> str | None:
    if action is not Action.ENABLE_FIREWALL_RULE:
        return None
    firewall = facts["firewall"]
    rule = firewall["builtin_rule"]
    if firewall["allow_paths"] or firewall["policy_copies"] or rule is None:
        return "the firewall changed where a path or a policy copy exists"
    if rule["port"] != facts["rdp_config"]["port"]:
        return "the built-in rule enabled for a listener on another port"
    return None


PRECONDITIONS = (
    _needs_listener,
    _windows_own_only,
    _repin_custom_only,
    _acl_steps,
    _reset_gates,
    _sessions_gate,
    _firewall_gate,
)


def contradicted(action: Action, facts: dict[str, Any], context: Context) -> str | None:
    """The precondition of each step, checked against the facts it was planned from."""
    return next((why for check in PRECONDITIONS if (why := check(action, facts, context))), None)


@settings(max_examples=400, deadline=None)
@given(fact_sets())
def test_no_step_contradicts_the_facts_it_was_planned_from(
    case: tuple[dict[str, Any], list[str], str, Context],
) -> None:
    facts, errors, probe, context = case
    decision = decide(summary_of(facts, errors), probe, context)
    for step in decision.steps:
        assert contradicted(step.action, facts, context) is None, (step, contradicted(step.action, facts, context))
        assert step.key not in context.done, "a step that already ran is never planned again"
        assert step.reason


@settings(max_examples=400, deadline=None)
@given(fact_sets())
def test_never_escalates_past_a_refusal(case: tuple[dict[str, Any], list[str], str, Context]) -> None:
    """A refused rung of the certificate ladder ends the ladder: nothing later in the chain is planned."""
    facts, errors, probe, context = case
    decision = decide(summary_of(facts, errors), probe, context)
    if any(r.action in CERTIFICATE_CHAIN for r in decision.refusals):
        refused_at = min(list(Action).index(r.action) for r in decision.refusals if r.action in CERTIFICATE_CHAIN)
        later = [
            s for s in decision.steps if s.action in CERTIFICATE_CHAIN and list(Action).index(s.action) > refused_at
        ]
        assert later == [], decision.to_json()
    assert all(r.reason for r in decision.refusals)


def after(step_action: Action, facts: dict[str, Any]) -> dict[str, Any]:
    """The facts diagnose reports after a step that succeeded (Windows as the step's documentation says)."""
    facts = copy.deepcopy(facts)
    listener, key = facts.get("listener"), facts.get("key")
    fresh = {
        "thumbprint": "C" * 40,
        "hash_type": 1,
        "pin": "none",
        "store": "Cert:\\LocalMachine\\Remote Desktop",
        "not_before": iso(NOW),
        "not_after": iso(NOW + dt.timedelta(days=180)),
        "subject": "CN=VM1",
        "issuer": "CN=VM1",
        "self_signed": True,
        "successors": [],
    }
    own_key = {**healthy_facts()["key"]}
    if step_action in (Action.GRANT_KEY_READ, Action.REMOVE_KEY_DENY) and key is not None:
        key.update(denies=[], network_service_read=True, system_read=True)
    if step_action is Action.REPAIR_FOLDER_ACL:
        facts["machinekeys"]["acl_ok"] = True
    if step_action in (Action.RENEW_CERTIFICATE, Action.RESET_MACHINEKEYS):
        facts["listener"], facts["key"] = fresh, own_key
    if step_action is Action.RESET_MACHINEKEYS:
        facts["machinekeys"].update(exists=True, acl_ok=True, backup_age_hours=0.1)
        facts["other_keys"] = {"count": 0, "names": []}
    if step_action is Action.REPIN_CERTIFICATE and listener is not None:
        facts["listener"] = {
            **listener,
            "thumbprint": SUCCESSOR,
            "not_after": iso(NOW + dt.timedelta(days=300)),
            "successors": [],
        }
        facts["key"] = {**own_key, "file": "9a3c_successor"}
    if step_action is Action.ENABLE_FIREWALL_RULE:
        facts["firewall"]["allow_paths"] = [{"rule": BUILTIN_RULE, "profiles": "Any", "remote": "Any", "policy": False}]
    if step_action is Action.ENABLE_TLS12:
        facts["tls"]["tls12_server"] = True
    return facts


@settings(max_examples=400, deadline=None)
@given(fact_sets())
def test_facts_after_a_successful_step_never_lead_to_the_same_step(
    case: tuple[dict[str, Any], list[str], str, Context],
) -> None:
    facts, errors, probe, context = case
    decision = decide(summary_of(facts, errors), probe, context)
    for step in decision.steps:
        later_facts = after(step.action, facts)
        done = context.done | {s.key for s in decision.steps}
        again = decide(
            summary_of(later_facts, errors), "healthy", Context(NOW, plan=context.plan, force=context.force, done=done)
        )
        assert step.action not in actions(again), (step.action, again.to_json())
        fresh = decide(summary_of(later_facts, errors), "healthy", Context(NOW, plan=context.plan, force=context.force))
        assert step.key not in {s.key for s in fresh.steps}, (step.action, fresh.to_json())
