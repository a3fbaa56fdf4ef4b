"""The cause classifier: probe + facts + events + network path in, a cause, its evidence and a disposition out.

Unit cases pin each cause a Windows admin would name from the same evidence; property tests over generated
evidence pin the rule that makes declining safe: a disposition other than repair never carries a step.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remediate.azure.network import NetworkPath
from remediate.engine.classify import (
    SILENT,
    STORM_PER_HOUR,
    Diagnosis,
    Disposition,
    Observation,
    classify,
    classify_outside,
)
from remediate.engine.decide import Action, Context
from tests.engine.test_decide import NOW, expired, fact_sets, healthy_facts, iso, summary_of

BLOCKED = NetworkPath(False, "securityRules/DenyRdp", "nsg-app", source="10.1.0.4")


def probe(status: str, **extra: Any) -> dict[str, Any]:
    return {"status": status, "detail": f"probe says {status}", **extra}


def certificate(not_before: dt.datetime, not_after: dt.datetime) -> dict[str, Any]:
    return {"not_before": iso(not_before), "not_after": iso(not_after)}


def run(status: str, facts: dict[str, Any] | None, **kwargs: Any) -> Diagnosis:
    summary = None if facts is None else summary_of(facts)
    extra = kwargs.pop("probe_extra", {})
    return classify(Observation(probe(status, **extra), summary, **kwargs), Context(NOW))


# --- each cause, as an admin would name it ------------------------------------------------------------------------


def test_the_ladders_causes_are_repairs_with_their_plan() -> None:
    diagnosis = run("certificate-expired", expired(healthy_facts()))
    assert diagnosis.disposition is Disposition.REPAIR and diagnosis.cause == "listener-certificate"
    assert [s.action for s in diagnosis.steps] == [Action.RENEW_CERTIFICATE]
    assert diagnosis.next_step.startswith("repair: renew-certificate")


@pytest.mark.parametrize("status", ["timeout", "unreachable", "no-answer"])
def test_no_network_path_is_unknown_with_the_blocking_rule_and_needs_no_facts(status: str) -> None:
    diagnosis = classify_outside(Observation(probe(status), None, BLOCKED))
    assert diagnosis is not None and diagnosis.disposition is Disposition.UNKNOWN
    assert diagnosis.cause == "no-network-path" and diagnosis.steps == ()
    assert any("securityRules/DenyRdp in nsg-app" in e for e in diagnosis.evidence)
    # Even with an expired certificate in the facts: a VM the function cannot reach is never called broken.
    full = run(status, expired(healthy_facts()), path=BLOCKED)
    assert full.cause == "no-network-path" and full.steps == ()


@pytest.mark.parametrize("status", ["refused", "certificate-expired", "no-certificate", "tls-handshake-failed"])
def test_a_probe_that_got_an_answer_is_never_declined_for_the_rules_evaluated_path(status: str) -> None:
    """A deny rule drops packets silently: an answer proves a path, so a blocked evaluation cannot hide a repair."""
    assert classify_outside(Observation(probe(status), None, BLOCKED)) is None
    full = run("certificate-expired", expired(healthy_facts()), path=BLOCKED)
    assert full.disposition is Disposition.REPAIR and full.cause == "listener-certificate"


def test_a_jit_policy_says_to_request_access() -> None:
    diagnosis = classify_outside(Observation(probe("timeout"), None, NetworkPath(False, "r", "n", jit=True)))
    assert diagnosis is not None and "request just-in-time access" in diagnosis.next_step


def test_a_healthy_probe_is_never_blocked_by_what_the_rules_say() -> None:
    assert classify_outside(Observation(probe("healthy"), None, BLOCKED)) is None


def test_a_logon_storm_is_under_attack_and_says_to_restrict_the_source() -> None:
    facts = healthy_facts()
    facts["failed_logons"] = {"type10": STORM_PER_HOUR, "type3": 40}
    diagnosis = run("no-answer", facts)
    assert diagnosis.disposition is Disposition.UNDER_ATTACK and diagnosis.steps == ()
    assert "NSG" in diagnosis.next_step and "reboot" in diagnosis.next_step
    assert any(f"{STORM_PER_HOUR + 40} failed logons" in e for e in diagnosis.evidence)


def test_log_analytics_counts_the_storm_when_the_guest_cannot() -> None:
    facts = healthy_facts()
    facts["failed_logons"] = None
    assert run("timeout", facts, events={4625: STORM_PER_HOUR * 3}).cause == "brute-force-storm"
    assert run("timeout", facts, events={4625: STORM_PER_HOUR - 1}).cause != "brute-force-storm"


def test_a_broken_key_store_under_a_storm_is_the_key_fault_not_the_storm() -> None:
    """MachineKeys lost its ACL and thousands of failed logons arrive: the key fault is named and repaired, whatever
    the probe saw, because failed logons (type 3 includes every network logon) never explain away a key."""
    facts = healthy_facts()
    facts["machinekeys"]["acl_ok"] = False
    facts["failed_logons"] = {"type10": STORM_PER_HOUR * 3, "type3": 500}
    for status in ("no-answer", "timeout", "refused", "tls-handshake-failed", "no-certificate"):
        diagnosis = run(status, facts)
        assert (diagnosis.cause, diagnosis.disposition) == ("machinekeys", Disposition.REPAIR), status
        assert [s.action for s in diagnosis.steps] == [Action.REPAIR_FOLDER_ACL]


@pytest.mark.parametrize("number", [1057, 1058, 36870])
def test_a_key_fault_event_forbids_naming_a_storm_even_with_clean_facts(number: int) -> None:
    facts = healthy_facts()
    facts["failed_logons"] = {"type10": STORM_PER_HOUR * 3, "type3": 0}
    diagnosis = run("no-answer", facts, events={number: 4})
    assert diagnosis.cause != "brute-force-storm" and diagnosis.disposition is Disposition.UNKNOWN
    assert f"event {number} x4 (Log Analytics x4)" in diagnosis.evidence and diagnosis.steps == ()
    facts["events"] = {str(number): {"count": 2}}  # the guest's own System log says the same
    assert run("no-answer", facts).cause != "brute-force-storm"


def test_a_storm_is_named_only_when_the_listener_failed_before_tls() -> None:
    facts = healthy_facts()
    facts["failed_logons"] = {"type10": STORM_PER_HOUR * 3, "type3": 0}
    storm = run("no-answer", facts)
    assert storm.cause == "brute-force-storm"
    assert any("no event 1057, 1058 or 36870" in e for e in storm.evidence)
    # A handshake that failed is the certificate's or key's problem (or a policy's), never a storm's.
    assert run("tls-handshake-failed", facts).cause != "brute-force-storm"


def test_a_storm_does_not_hide_an_expired_certificate() -> None:
    facts = expired(healthy_facts())
    facts["failed_logons"] = {"type10": STORM_PER_HOUR * 2, "type3": 0}
    assert run("certificate-expired", facts).disposition is Disposition.REPAIR


def test_a_clock_far_ahead_is_clock_skew_not_a_renewal() -> None:
    """The guest runs three days ahead and made its certificate by its own clock: not yet valid by ours."""
    facts = healthy_facts()
    made = NOW + dt.timedelta(days=3)
    facts["listener"].update(not_before=iso(made), not_after=iso(made + dt.timedelta(days=180)))
    facts["clock"] = {"offset_seconds": 3 * 86400}
    extra = {"certificate": certificate(made, made + dt.timedelta(days=180))}
    diagnosis = run("certificate-not-yet-valid", facts, probe_extra=extra)
    assert diagnosis.cause == "clock-skew" and diagnosis.disposition is Disposition.REPORT_TO_OWNER
    assert diagnosis.steps == () and "time source" in diagnosis.next_step
    assert any("not yet valid by ours and valid by the guest's" in e for e in diagnosis.evidence)


def test_a_clock_within_tolerance_leaves_the_certificate_to_the_ladder() -> None:
    facts = expired(healthy_facts())
    facts["clock"] = {"offset_seconds": 120}
    assert run("certificate-expired", facts).cause == "listener-certificate"


def test_a_certificate_valid_by_our_clock_but_expired_by_the_guests_is_clock_skew() -> None:
    facts = healthy_facts()
    facts["listener"]["not_after"] = iso(NOW + dt.timedelta(days=2))
    facts["clock"] = {"offset_seconds": 5 * 86400}
    assert run("tls-handshake-failed", facts).cause == "clock-skew"


def test_a_port_held_by_another_program_is_reported_with_its_name() -> None:
    facts = healthy_facts()
    facts["port_owner"] = "javaw"
    diagnosis = run("not-rdp", facts)
    assert diagnosis.cause == "port-taken" and "javaw" in diagnosis.next_step and diagnosis.steps == ()
    # An RDP answer came from the port: whatever name diagnose read for its owner, the certificate is the cause.
    assert run("certificate-expired", expired(facts)).cause == "listener-certificate"


def test_a_listener_bound_to_one_adapter_is_reported() -> None:
    facts = healthy_facts()
    facts["rdp_config"]["lan_adapter"] = 2
    assert run("refused", facts).cause == "listener-bound-to-one-adapter"
    assert run("healthy", facts).cause == "not-server-side"  # it serves the adapter we reach: not our problem
    assert run("certificate-expired", expired(facts)).cause == "listener-certificate"


def test_tls_not_offered_without_securitylayer_0_is_unknown_and_says_what_is_missing() -> None:
    """The probe alone does not prove a security-layer policy: the guest must show SecurityLayer 0."""
    extra = {"probe_extra": {"negotiation_failure": "SSL_NOT_ALLOWED_BY_SERVER"}}
    for layer, said in ((2, "is 2"), (1, "is 1"), (None, "was not read")):
        facts = healthy_facts()
        facts["rdp_config"]["security_layer"] = layer
        diagnosis = run("tls-not-offered", facts, **extra)
        assert diagnosis.cause == "unexplained" and diagnosis.disposition is Disposition.UNKNOWN, layer
        assert diagnosis.steps == ()
        missing = [e for e in diagnosis.evidence if e.startswith("missing for security-layer-policy")]
        assert missing and "SecurityLayer 0" in missing[0] and missing[0].endswith(f"SecurityLayer {said}")


def test_a_negotiation_failure_from_a_security_policy_is_named_and_reported() -> None:
    facts = healthy_facts()
    facts["rdp_config"].update(security_layer=0, min_encryption_level=4)
    facts["crypto"] = {"fips": True, "cipher_suites": None, "tls12_ecdhe_gcm": None}
    diagnosis = run("tls-not-offered", facts, probe_extra={"negotiation_failure": "SSL_NOT_ALLOWED_BY_SERVER"})
    assert diagnosis.cause == "security-layer-policy" and diagnosis.disposition is Disposition.REPORT_TO_OWNER
    assert "SSL_NOT_ALLOWED_BY_SERVER" in diagnosis.evidence[0] and "FIPS on" in diagnosis.evidence[-1]
    assert any(e.startswith("SecurityLayer 0 (RDP Security Layer") for e in diagnosis.evidence)


def test_a_cipher_suite_policy_without_modern_suites_is_reported_not_repaired() -> None:
    facts = healthy_facts()
    facts["crypto"] = {"fips": False, "cipher_suites": 2, "tls12_ecdhe_gcm": 0}
    diagnosis = run("tls-handshake-failed", facts)
    assert diagnosis.cause == "crypto-policy" and diagnosis.steps == ()
    facts["tls"]["tls12_server"] = False  # TLS 1.2 off is the ladder's repair, whatever the policy
    assert run("tls-handshake-failed", facts).cause == "tls12-disabled"


def test_a_group_policy_certificate_is_reported_to_its_owner() -> None:
    facts = expired(healthy_facts())
    facts["listener"].update(hash_type=2, pin="policy", store="Cert:\\LocalMachine\\My")
    diagnosis = run("certificate-expired", facts, events={1065: 2, 1063: 1})
    assert diagnosis.cause == "policy-certificate" and diagnosis.disposition is Disposition.REPORT_TO_OWNER
    assert "its owner renews it" in diagnosis.next_step and "event 1065 x2 (Log Analytics x2)" in diagnosis.evidence
    # 1063 is Windows reporting a template certificate installed (KB 2531138): information, never a fault.
    assert not any("1063" in e for e in diagnosis.evidence)


def test_a_server_that_answers_rdp_correctly_is_not_the_servers_problem() -> None:
    diagnosis = run("healthy", healthy_facts())
    assert diagnosis.disposition is Disposition.NOT_SERVER_SIDE and "CredSSP" in diagnosis.next_step


def test_unreadable_facts_and_unexplained_failures_are_unknown() -> None:
    facts = healthy_facts()
    facts["listener"] = None
    unread = classify(Observation(probe("no-certificate"), summary_of(facts, ["listener: timed out"])), Context(NOW))
    assert unread.cause == "facts-unreadable" and unread.disposition is Disposition.UNKNOWN
    assert run("negotiation-failed", healthy_facts()).disposition is Disposition.UNKNOWN
    assert run("timeout", healthy_facts(), path=NetworkPath(True)).cause == "unreachable"


# --- properties over generated evidence ---------------------------------------------------------------------------


@st.composite
def observations(draw: st.DrawFn) -> tuple[Observation, Context]:
    facts, errors, status, context = draw(fact_sets())
    facts = copy.deepcopy(facts)
    facts["failed_logons"] = draw(st.sampled_from([None, {"type10": 0, "type3": 3}, {"type10": 5000, "type3": 0}]))
    facts["clock"] = draw(st.sampled_from([None, {"offset_seconds": 0}, {"offset_seconds": -400000}]))
    facts["crypto"] = draw(
        st.sampled_from(
            [
                None,
                {"fips": False, "cipher_suites": None, "tls12_ecdhe_gcm": None},
                {"fips": True, "cipher_suites": 3, "tls12_ecdhe_gcm": 0},
            ]
        )
    )
    facts["port_owner"] = draw(st.sampled_from(["TermService", "", "javaw", None]))
    facts["rdp_config"]["lan_adapter"] = draw(st.sampled_from([0, 0, 3]))
    status = draw(st.sampled_from([status, "no-answer", "not-rdp", "tls-not-offered", "tls-handshake-failed"]))
    extra = {"negotiation_failure": draw(st.sampled_from([None, "SSL_NOT_ALLOWED_BY_SERVER"]))}
    path = draw(st.sampled_from([None, NetworkPath(True), NetworkPath(None), BLOCKED]))
    events = draw(st.sampled_from([{}, {4625: 10_000}, {36874: 4}, {1065: 1}, {4625: 10_000, 36870: 3}]))
    summary = draw(st.sampled_from([summary_of(facts, errors), None]))
    return Observation(probe(status, **extra), summary, path, events), context


@settings(max_examples=400, deadline=None)
@given(observations())
def test_no_disposition_but_repair_ever_yields_a_step(case: tuple[Observation, Context]) -> None:
    observation, context = case
    diagnosis = classify(observation, context)
    if diagnosis.disposition is not Disposition.REPAIR:
        assert diagnosis.steps == (), diagnosis.explain()
    assert diagnosis.cause and diagnosis.next_step and diagnosis.evidence


@settings(max_examples=300, deadline=None)
@given(observations())
def test_a_vm_without_a_network_path_is_never_repaired(case: tuple[Observation, Context]) -> None:
    observation, context = case
    if observation.path is BLOCKED and observation.probe["status"] in SILENT:
        diagnosis = classify(observation, context)
        assert diagnosis.cause == "no-network-path" and diagnosis.disposition is Disposition.UNKNOWN


@settings(max_examples=300, deadline=None)
@given(observations())
def test_a_storm_never_leads_to_a_change_unless_the_certificate_itself_is_shown_broken(
    case: tuple[Observation, Context],
) -> None:
    observation, context = case
    diagnosis = classify(observation, context)
    if diagnosis.steps and observation.events.get(4625, 0) >= STORM_PER_HOUR:
        assert diagnosis.cause in ("machinekeys", "listener-certificate", "guest-firewall", "tls12-disabled")
    if diagnosis.cause == "brute-force-storm":
        assert observation.probe["status"] in ("no-answer", "timeout", "refused") and diagnosis.steps == ()
        assert not any(observation.events.get(n) for n in (1057, 1058, 36870))
