"""The emulator's simulated Windows guest: every script answers with a contract-valid summary, reports facts as
Microsoft documents Windows, re-checks its precondition, and does to the guest what its documentation says."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from remediate.engine.decide import Action, Context, decide
from remediate.guest.contract import SCRIPTS, GuestOutputError, parse_output, script_text, script_version
from sim import guest as sim_guest
from sim.fleet import CAUSE_SCENARIOS, DAY, EVERYONE, NETWORK_SERVICE, SCENARIOS, SESSIONENV, VirtualMachine, make_vm

NOW = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(minutes=5)
NOT_WINDOWS_GUESTS = {"linux", "deallocated", "agent-not-ready", "opted-out", "out-of-scope", "never-returns"}
WINDOWS_SCENARIOS = tuple(s for s in SCENARIOS if s not in NOT_WINDOWS_GUESTS)


def vm_in(scenario: str) -> VirtualMachine:
    return make_vm(scenario, 0, now=NOW)


def run(vm: VirtualMachine, script: str, now: dt.datetime = NOW, **parameters: str) -> dict[str, Any]:
    """Run a script on the simulated guest and return its summary, validated against the contract."""
    output = sim_guest.run_script(vm, script_text(script), parameters, now)
    assert output.stderr == ""
    last_line = output.stdout.rstrip("\n").rsplit("\n", 1)[-1]
    assert len(last_line.encode("ascii")) <= 4000
    return parse_output(output.stdout, output.stderr, script)


def run_at(vm: VirtualMachine, script: str, now: dt.datetime, parameters: dict[str, str]) -> dict[str, Any]:
    output = sim_guest.run_script(vm, script_text(script), parameters, now)
    return parse_output(output.stdout, output.stderr, script)


def guest_state(vm: VirtualMachine) -> dict[str, Any]:
    return dataclasses.asdict(vm.guest)


def probe_of(vm: VirtualMachine, now: dt.datetime) -> str:
    """What the RDP probe would say, from the same guest state the emulator's listener serves."""
    guest = vm.guest
    if not (guest.services_running and guest.firewall_open):
        return "refused"
    if not guest.key_usable or guest.certificate is None:
        return "no-certificate"
    return "certificate-expired" if guest.certificate.expired(now) else "healthy"


def plan_for(vm: VirtualMachine, now: dt.datetime = NOW, **context: Any) -> Any:
    return decide(run(vm, "diagnose", now=now), probe_of(vm, now), Context(now, **context))


@pytest.mark.parametrize("detect_only", ["false", "true"])
@pytest.mark.parametrize("scenario", WINDOWS_SCENARIOS)
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_every_scenario_within_the_contract(script: str, scenario: str, detect_only: str) -> None:
    vm = vm_in(scenario)
    steps = [s for s in plan_for(vm).steps if s.script == script]
    parameters = dict(steps[0].parameters) if steps else {}
    before = guest_state(vm)
    summary = run(vm, script, DetectOnly=detect_only, **parameters)
    assert summary["detect_only"] is (detect_only == "true")
    if detect_only == "true" or script == "diagnose" or summary["refused"]:
        assert guest_state(vm) == before, "DetectOnly, diagnose and a refusal change nothing"
        assert summary["changed"] is False
    if summary["changed"]:
        assert guest_state(vm) != before


# --- diagnose: facts as Windows shows them --------------------------------------------------------------------


def test_diagnose_reports_whose_certificate_it_is() -> None:
    own = run(vm_in("expired-certificate"), "diagnose")["findings"]
    assert own["listener"]["hash_type"] == 1 and own["listener"]["pin"] == "none"
    assert own["listener"]["store"] == "Cert:\\LocalMachine\\Remote Desktop"
    event = own["events"]["1058"]
    assert event["count"] == 1 and event["last"].startswith("The RD Session Host Server has failed")
    policy = run(vm_in("policy-certificate"), "diagnose")["findings"]["listener"]
    assert (policy["hash_type"], policy["pin"], policy["store"]) == (2, "policy", "Cert:\\LocalMachine\\My")
    custom = run(vm_in("custom-certificate"), "diagnose")["findings"]["listener"]
    assert (custom["hash_type"], custom["pin"]) == (3, "registry")
    assert len(custom["successors"]) == 1


def test_diagnose_resolves_the_key_file_and_who_may_read_it() -> None:
    healthy = run(vm_in("healthy"), "diagnose")["findings"]["key"]
    assert healthy["provider"] == "csp" and healthy["container"] == "TSSecKeySet1"
    assert healthy["file"].startswith("f686aace6942fb7f7ceb231212eef4a4_")
    assert healthy["system_read"] is True and healthy["network_service_read"] is True and healthy["denies"] == []
    lost = run(vm_in("keystore-acl"), "diagnose")["findings"]["key"]
    assert lost["network_service_read"] is False and lost["system_read"] is True and lost["denies"] == []
    denied = run(vm_in("key-deny"), "diagnose")["findings"]["key"]
    assert denied["denies"] == [EVERYONE] and denied["network_service_read"] is False
    assert f"(D;;GR;;;{EVERYONE})" in denied["sddl"]


def test_the_default_key_acl_depends_on_the_build_and_only_system_and_network_service_matter() -> None:
    """Before 17763 Administrators read Windows' own key; from 17763 NT SERVICE\\SessionEnv does (unconfirmed from
    Microsoft material). Both builds' defaults read as healthy: the engine judges SYSTEM and NETWORK SERVICE only."""
    for build, third in (("10.0.14393.7000", "S-1-5-32-544"), ("10.0.20348.2700", SESSIONENV)):
        vm = make_vm("healthy", 0, now=NOW)
        vm.guest.os_build = build
        vm.guest.key = vm.guest.own_key()
        assert third in vm.guest.key.readers
        assert plan_for(vm).clean


def test_diagnose_names_what_else_lives_in_machinekeys() -> None:
    """The CRP transport key is not counted (the agent re-creates it); key containers without a certificate are."""
    facts = run(vm_in("healthy"), "diagnose")["findings"]
    assert facts["other_keys"] == {"count": 0, "names": []}
    assert facts["roles"] == [] and facts["machinekeys"]["backup_age_hours"] is None
    corrupt = run(vm_in("keystore-corrupt"), "diagnose")["findings"]
    assert corrupt["other_keys"] == {"count": 1, "names": ["NetFrameworkConfigurationKey"]}


def test_diagnose_reports_reachability_not_one_rule() -> None:
    custom = run(vm_in("firewall-custom-allow"), "diagnose")["findings"]["firewall"]
    assert custom["builtin_rule"]["enabled"] is False
    assert [p["rule"] for p in custom["allow_paths"]] == ["RDP from jump hosts"]
    policy = run(vm_in("firewall-policy"), "diagnose")["findings"]["firewall"]
    assert policy["policy_copies"] == 1 and policy["allow_paths"] == []
    assert policy["profiles"]["Public"] == {"enabled": True, "active": True}


def test_cached_credential_sessions_are_counted() -> None:
    assert run(vm_in("cached-session"), "diagnose")["findings"]["sessions"] == {"remote": 0, "cached": 1}


def test_a_hung_wmi_provider_leaves_its_facts_unknown_and_the_rest_read() -> None:
    summary = run(vm_in("wmi-hung"), "diagnose")
    facts = summary["findings"]
    assert facts["listener"] is None and facts["key"] is None and facts["sessions"] is None
    assert facts["tls"] is not None and facts["firewall"] is not None and facts["events"]["1058"]["count"] == 1
    assert {error.split(":")[0] for error in summary["errors"]} == set(sim_guest._CIM_CHECKS)
    assert all("OperationTimeout" in error for error in summary["errors"])


def test_events_older_than_a_day_are_not_counted() -> None:
    vm = vm_in("expired-certificate")
    assert run(vm, "diagnose", now=NOW + 2 * DAY)["findings"]["events"]["1058"] == {"count": 0, "last": None}


# --- the repair scripts re-check what they were told -------------------------------------------------------------


def test_renewal_restarts_sessionenv_only_and_replaces_windows_own_certificate() -> None:
    vm = vm_in("expired-certificate")
    old = vm.guest.certificate
    assert old is not None
    summary = run(vm, "renew-certificate", Thumbprint=old.thumbprint)
    findings = summary["findings"]
    assert summary["changed"] is True and summary["refused"] is None
    assert findings["removed"] == old.thumbprint and findings["restarted"] == ["SessionEnv"]
    new = vm.guest.certificate
    assert new is not None and not new.expired(NOW) and findings["listener"] == new.thumbprint != old.thumbprint
    assert vm.guest.key_usable


def test_renewal_refuses_when_the_listener_moved_on() -> None:
    vm = vm_in("expired-certificate")
    before = guest_state(vm)
    summary = run(vm, "renew-certificate", Thumbprint="A" * 40)
    assert summary["refused"] and "the facts changed" in summary["refused"]
    assert summary["changed"] is False and guest_state(vm) == before


def test_renewal_never_removes_a_certificate_that_is_not_windows_own() -> None:
    vm = vm_in("policy-certificate")
    assert vm.guest.certificate is not None
    summary = run(vm, "renew-certificate", Thumbprint=vm.guest.certificate.thumbprint)
    assert summary["refused"] and "HashType 2" in summary["refused"]


def test_renewal_refuses_under_a_cached_credential_session_unless_forced() -> None:
    vm = vm_in("cached-session")
    assert vm.guest.certificate is not None
    thumbprint = vm.guest.certificate.thumbprint
    refused = run(vm, "renew-certificate", Thumbprint=thumbprint)
    assert refused["refused"] and "logon types 10 and 12" in refused["refused"] and refused["findings"]["sessions"] == 1
    forced = run(vm, "renew-certificate", Thumbprint=thumbprint, Force="true")
    assert forced["changed"] is True


def test_a_custom_certificate_is_re_pinned_to_its_successor() -> None:
    vm = vm_in("custom-certificate")
    (step,) = plan_for(vm).steps
    assert step.action is Action.REPIN_CERTIFICATE
    summary = run_at(vm, "renew-certificate", NOW, dict(step.parameters))
    assert summary["changed"] is True and summary["findings"]["pinned"] == dict(step.parameters)["Successor"]
    assert vm.guest.key_usable and plan_for(vm, LATER).clean


def test_a_grant_cannot_undo_a_deny_and_remove_deny_can() -> None:
    vm = vm_in("key-deny")
    (step,) = plan_for(vm).steps
    target = dict(step.parameters)
    grant = run_at(vm, "repair-machinekeys", NOW, {**target, "Mode": "grant"})
    assert grant["refused"] and "a grant cannot undo a deny" in grant["refused"]
    fixed = run_at(vm, "repair-machinekeys", NOW, target)
    assert fixed["changed"] and fixed["findings"]["removed_denies"] == [EVERYONE] and fixed["findings"]["ok_after"]
    assert vm.guest.key is not None and vm.guest.key.readable_by(NETWORK_SERVICE)
    again = run_at(vm, "repair-machinekeys", NOW, target)
    assert again["changed"] is False, "idempotent: nothing left to do"


def test_a_key_repair_refuses_a_file_that_is_not_the_listeners_key() -> None:
    vm = vm_in("keystore-acl")
    assert vm.guest.certificate is not None
    summary = run(vm, "repair-machinekeys", Thumbprint=vm.guest.certificate.thumbprint, KeyFile="someone-elses-key")
    assert summary["refused"] and "is not the key of" in summary["refused"]


def test_only_windows_own_key_container_is_set_aside() -> None:
    """The renewal sets a key aside only for Windows' own certificate; a certificate of the admin's keeps its key,
    and nothing in the guest changes."""
    custom = vm_in("custom-certificate")
    assert custom.guest.certificate is not None and custom.guest.key is not None
    before = guest_state(custom)
    target = {"Thumbprint": custom.guest.certificate.thumbprint, "KeyFile": custom.guest.key.name}
    refused = run_at(custom, "renew-certificate", NOW, target)
    assert refused["refused"] and "HashType 3" in refused["refused"] and not refused["changed"]
    assert guest_state(custom) == before
    own = vm_in("key-corrupt")
    assert own.guest.certificate is not None and own.guest.key is not None
    summary = run(own, "renew-certificate", Thumbprint=own.guest.certificate.thumbprint, KeyFile=own.guest.key.name)
    assert summary["changed"] and summary["findings"]["set_aside"].endswith(".rdp-remediate.bak")


def test_the_store_reset_lists_what_it_would_set_aside_and_refuses_without_force() -> None:
    vm = vm_in("keystore-corrupt")
    before = guest_state(vm)
    listed = run(vm, "reset-machinekeys", DetectOnly="true", Force="true")
    assert "would set aside NetFrameworkConfigurationKey" in listed["actions"]
    assert listed["findings"]["would_set_aside"]["count"] == 1
    refused = run(vm, "reset-machinekeys")
    assert refused["refused"] and "1 other key file(s)" in refused["refused"]
    assert guest_state(vm) == before


def test_the_store_reset_is_idempotent_within_a_day() -> None:
    vm = vm_in("keystore-corrupt")
    first = run(vm, "reset-machinekeys", Force="true")
    assert first["changed"] and first["findings"]["renamed"] and "built a new MachineKeys" in first["actions"][0]
    second = run(vm, "reset-machinekeys", now=LATER, Force="true")
    assert second["refused"] and "less than a day old" in second["refused"]
    assert len(vm.guest.machinekeys_backups) == 1
    assert run(vm, "diagnose", now=LATER)["findings"]["machinekeys"]["backup_age_hours"] == pytest.approx(
        0.08, abs=0.01
    )


def test_the_firewall_rule_is_not_enabled_where_policy_governs_or_a_path_exists() -> None:
    policy = run(vm_in("firewall-policy"), "enable-firewall-rule")
    assert policy["refused"] and "Group Policy" in policy["refused"]
    custom = vm_in("firewall-custom-allow")
    before = guest_state(custom)
    assert run(custom, "enable-firewall-rule")["changed"] is False and guest_state(custom) == before
    closed = vm_in("firewall-closed")
    assert run(closed, "enable-firewall-rule")["changed"] is True and closed.guest.firewall_open


def test_the_firewall_rule_is_refused_for_a_listener_on_another_port() -> None:
    vm = vm_in("firewall-closed")
    vm.guest.rdp_port = 3390
    summary = run(vm, "enable-firewall-rule", Port="3390")
    assert summary["refused"] and "3389" in summary["refused"]


def test_tls12_is_configured_now_and_effective_after_boot() -> None:
    vm = vm_in("tls12-disabled")
    summary = run(vm, "enable-tls12")
    assert summary["changed"] and summary["reboot_required"]
    assert vm.guest.tls12_enabled is False  # SCHANNEL reads the registry at boot
    sim_guest.boot(vm, LATER)
    assert vm.guest.tls12_enabled is True and vm.guest.pending_tls12 is None


def test_boot_does_not_replace_an_expired_certificate() -> None:
    vm = vm_in("expired-certificate")
    old = vm.guest.certificate
    sim_guest.boot(vm, LATER)
    assert vm.guest.certificate is old
    assert (1058, LATER) in vm.guest.events


def test_boot_ends_sessions_and_fails_to_make_a_key_in_a_broken_store() -> None:
    vm = vm_in("keystore-corrupt")
    vm.guest.active_sessions = vm.guest.cached_sessions = 2
    vm.guest.key = None
    vm.guest.certificate = None
    sim_guest.boot(vm, LATER)
    assert vm.guest.sessions == 0 and vm.guest.certificate is None
    assert (1057, LATER) in vm.guest.events


# --- the engine's plan, carried out on the simulated guest -------------------------------------------------------

# What following the engine's plan does to each scenario (rounds until the facts are clean; the rest end refused
# or reported with nothing changed).
REPAIRED_IN = {
    "healthy": 0,
    "expired-certificate": 1,
    "expiring-soon": 1,
    "keystore-acl": 1,
    "key-deny": 1,
    "key-corrupt": 1,
    "custom-certificate": 1,
    "firewall-closed": 1,
    "tls12-disabled": 1,
    "firewall-custom-allow": 0,
}


# The causes no repair fixes never reach the ladder: the classifier declines them (tests/engine/test_causes.py).
@pytest.mark.parametrize("scenario", [s for s in WINDOWS_SCENARIOS if s not in CAUSE_SCENARIOS])
def test_following_the_engines_plan(scenario: str) -> None:
    vm = vm_in(scenario)
    now, done, rounds = NOW, frozenset[str](), 0
    decision = plan_for(vm, now)
    while decision.steps and rounds < 3:
        rounds += 1
        summaries = [run_at(vm, step.script, now, dict(step.parameters)) for step in decision.steps]
        done |= {step.key for step, s in zip(decision.steps, summaries, strict=True) if not s["refused"]}
        now += dt.timedelta(minutes=5)
        sim_guest.boot(vm, now)
        decision = decide(run(vm, "diagnose", now=now), probe_of(vm, now), Context(now, done=done))
    if scenario in REPAIRED_IN:
        assert decision.clean and rounds == REPAIRED_IN[scenario], decision.explain()
        assert probe_of(vm, now) == "healthy"
    else:
        assert not decision.clean and not decision.steps, decision.explain()
    assert not vm.guest.machinekeys_backups, "no scenario renames the store without force"


# --- PowerShell's parameter binding and unknown scripts -------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "parameters", "error_id"),
    [
        ("diagnose", {"Bogus": "1"}, "NamedParameterNotFound"),
        ("diagnose", {"DetectOnly": "yes"}, "ParameterArgumentValidationError"),
        ("diagnose", {"ExpiryWarningDays": "30"}, "NamedParameterNotFound"),
        ("enable-firewall-rule", {"Port": "ten"}, "ParameterArgumentTransformationError"),
        ("enable-firewall-rule", {"Port": "99999"}, "ParameterArgumentValidationError"),
        ("enable-firewall-rule", {"RuleName": "RemoteDesktop-Shadow-In-TCP"}, "ParameterArgumentValidationError"),
        ("renew-certificate", {"Thumbprint": "'; Remove-Item C:\\ -Recurse; '"}, "ParameterArgumentValidationError"),
        (
            "repair-machinekeys",
            {"KeyFile": "..\\..\\Windows\\System32\\config\\SAM"},
            "ParameterArgumentValidationError",
        ),
    ],
)
def test_bad_parameters_fail_like_powershell(script: str, parameters: dict[str, str], error_id: str) -> None:
    vm = vm_in("expired-certificate")
    before = guest_state(vm)
    output = sim_guest.run_script(vm, script_text(script), parameters, NOW)
    assert output.stdout == ""
    assert error_id in output.stderr
    with pytest.raises(GuestOutputError, match=error_id):
        parse_output(output.stdout, output.stderr, script)
    assert guest_state(vm) == before


def test_parameter_names_and_choices_ignore_case() -> None:
    vm = vm_in("expired-certificate")
    assert vm.guest.certificate is not None
    summary = run(vm, "renew-certificate", detectonly="TRUE", thumbprint=vm.guest.certificate.thumbprint.lower())
    assert summary["detect_only"] is True and summary["changed"] is False and summary["refused"] is None


def test_a_script_without_a_known_name_is_not_run() -> None:
    vm = vm_in("healthy")
    output = sim_guest.run_script(vm, "Format-Volume -DriveLetter C\n", {}, NOW)
    assert output.stdout == ""
    assert "'Format-Volume' is not recognized" in output.stderr


def test_trimming_keeps_the_change_record_first_and_prints_ascii() -> None:
    summary = {
        "script": "enable-tls12",
        "version": script_version("enable-tls12"),
        "detect_only": False,
        "changed": True,
        "reboot_required": True,
        "refused": None,
        "actions": [f"action {i} f\u00fcr " + "x" * 400 for i in range(12)],
        "findings": {"enabled_before": False, "enabled_after": True},
        "errors": ["an error " + "y" * 280 for _ in range(5)],
    }
    line = sim_guest.summary_line(summary)
    assert line.isascii() and len(line) <= 4000
    parsed = parse_output(line + "\n", "", "enable-tls12")
    assert parsed["errors"] == [], "errors go before the change record"
    assert parsed["actions"][0].startswith("action 0 f?r")
    assert parsed["truncated"] == 5 + 12 - len(parsed["actions"])


# --- as unkind as Windows: what the Windows-admin review found the simulated guest too kind about ---------------


def test_the_store_reset_carries_the_crp_key_and_never_runs_on_a_dc_or_ca() -> None:
    vm = vm_in("keystore-corrupt")
    crp = vm.guest.crp_key
    vm.guest.roles = ["ad-cs"]
    refused = run(vm, "reset-machinekeys", Force="true", AllowSessions="true")
    assert refused["refused"] and "never renamed" in refused["refused"] and not vm.guest.machinekeys_backups
    vm.guest.roles = []
    done = run(vm, "reset-machinekeys", Force="true")
    assert done["findings"]["renamed"] and done["findings"]["carried"] == crp and vm.guest.crp_key == crp


def test_the_store_reset_re_checks_sessions_and_the_listener() -> None:
    vm = vm_in("keystore-corrupt")
    vm.guest.active_sessions = 2
    refused = run(vm, "reset-machinekeys", Force="true")
    assert refused["refused"] and "2 remote session(s)" in refused["refused"]
    assert run(vm, "reset-machinekeys", Force="true", AllowSessions="true")["findings"]["renamed"]
    healthy = vm_in("healthy")
    again = run(healthy, "reset-machinekeys", Force="true")
    assert again["refused"] and "works again" in again["refused"] and not healthy.guest.machinekeys_backups


def test_a_missing_machinekeys_folder_is_created_not_renamed() -> None:
    vm = vm_in("keystore-corrupt")
    vm.guest.folder_exists = False
    summary = run(vm, "reset-machinekeys", Force="true")
    assert summary["changed"] and summary["reboot_required"] and not summary["findings"]["renamed"]
    assert "was missing: created it" in summary["actions"][0]
    assert vm.guest.folder_exists and not vm.guest.machinekeys_backups


def test_the_renewal_sets_the_key_aside_only_after_its_session_check() -> None:
    vm = vm_in("key-corrupt")
    assert vm.guest.certificate is not None and vm.guest.key is not None
    (step,) = plan_for(vm).steps
    assert step.action is Action.RENEW_CERTIFICATE and dict(step.parameters)["KeyFile"] == vm.guest.key.name
    vm.guest.active_sessions = 1  # a user logs on between the plan and the Run Command
    refused = run_at(vm, "renew-certificate", NOW, dict(step.parameters))
    assert refused["refused"] and vm.guest.key is not None, "the key stays where it was"
    vm.guest.active_sessions = 0
    done = run_at(vm, "renew-certificate", NOW, dict(step.parameters))
    assert done["findings"]["set_aside"].endswith(".rdp-remediate.bak") and vm.guest.key_usable


def test_a_service_stuck_in_stop_pending_leaves_the_renewal_to_a_reboot() -> None:
    vm = vm_in("expired-certificate")
    vm.guest.stop_hangs = True
    assert vm.guest.certificate is not None
    summary = run(vm, "renew-certificate", Thumbprint=vm.guest.certificate.thumbprint)
    assert summary["reboot_required"] and "StopPending" in summary["errors"][0]
    assert summary["findings"]["listener"] is None


@pytest.mark.parametrize("sid", ["S-1-5-32-545", "S-1-2-0"])
def test_a_deny_on_users_or_local_makes_the_key_unreadable(sid: str) -> None:
    vm = vm_in("healthy")
    assert vm.guest.key is not None
    vm.guest.key.denies = {sid}
    key = run(vm, "diagnose")["findings"]["key"]
    assert key["network_service_read"] is False and key["denies"] == [sid]


def test_remove_deny_removes_the_denies_that_apply_and_keeps_the_others() -> None:
    vm = vm_in("key-deny")
    assert vm.guest.certificate is not None and vm.guest.key is not None
    vm.guest.key.readers = {"S-1-5-32-544"}
    vm.guest.key.denies = {EVERYONE, "S-1-5-80-0"}  # the second applies to neither account and stays
    target = {"Thumbprint": vm.guest.certificate.thumbprint, "KeyFile": vm.guest.key.name, "Mode": "remove-deny"}
    fixed = run_at(vm, "repair-machinekeys", NOW, target)
    assert fixed["findings"]["ok_after"] and fixed["reboot_required"] and "S-1-5-80-0" in vm.guest.key.denies


def test_the_listener_settings_are_the_guests() -> None:
    vm = vm_in("healthy")
    vm.guest.deny_connections, vm.guest.security_layer = True, 0
    config = run(vm, "diagnose")["findings"]["rdp_config"]
    assert config["deny_connections"] is True and config["security_layer"] == 0


def test_the_agent_re_creates_its_transport_key_at_boot() -> None:
    vm = vm_in("healthy")
    vm.guest.crp_key = None
    sim_guest.boot(vm, NOW)
    assert vm.guest.crp_key is not None


def test_a_custom_rule_with_a_port_range_is_an_allow_path() -> None:
    """A rule for TCP 3380-3390 lets 3389 in: the built-in rule (any remote address) is not enabled beside it."""
    vm = vm_in("firewall-custom-allow")
    facts = run(vm, "diagnose")["findings"]["firewall"]
    assert [p["rule"] for p in facts["allow_paths"]] == ["RDP from jump hosts"]
    assert plan_for(vm).steps == ()
    assert run(vm, "enable-firewall-rule")["changed"] is False
