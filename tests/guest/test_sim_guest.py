"""The emulator's simulated Windows guest: every script answers with a contract-valid summary and does what its
documentation says, to the guest state the RDP listener and the next diagnose see."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Any

import pytest

from remediate.guest.contract import (
    SCRIPTS,
    GuestOutputError,
    parse_output,
    recommended_repairs,
    script_text,
    script_version,
)
from sim import guest as sim_guest
from sim.fleet import DAY, VirtualMachine, make_vm

NOW = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(minutes=5)
WINDOWS_SCENARIOS = (
    "healthy",
    "expired-certificate",
    "expiring-soon",
    "keystore-acl",
    "keystore-corrupt",
    "firewall-closed",
    "tls12-disabled",
)
EXPECTED_RECOMMENDATIONS = {
    "healthy": [],
    "expired-certificate": ["renew-certificate"],
    "expiring-soon": ["renew-certificate"],
    "keystore-acl": ["repair-machinekeys", "renew-certificate"],
    "keystore-corrupt": ["repair-machinekeys", "renew-certificate"],
    "firewall-closed": ["enable-firewall-rule"],
    "tls12-disabled": ["enable-tls12"],
}


def vm_in(scenario: str) -> VirtualMachine:
    return make_vm(scenario, 0, now=NOW)


def run(vm: VirtualMachine, script: str, now: dt.datetime = NOW, **parameters: str) -> dict[str, Any]:
    """Run a script on the simulated guest and return its summary, validated against the contract."""
    output = sim_guest.run_script(vm, script_text(script), parameters, now)
    assert output.stderr == ""
    last_line = output.stdout.rstrip("\n").rsplit("\n", 1)[-1]
    assert len(last_line.encode("utf-8")) < 4096
    return parse_output(output.stdout, output.stderr, script)


def guest_state(vm: VirtualMachine) -> dict[str, Any]:
    return dataclasses.asdict(vm.guest)


@pytest.mark.parametrize("detect_only", ["false", "true"])
@pytest.mark.parametrize("scenario", WINDOWS_SCENARIOS)
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_every_scenario_within_the_contract(script: str, scenario: str, detect_only: str) -> None:
    vm = vm_in(scenario)
    before = guest_state(vm)
    summary = run(vm, script, DetectOnly=detect_only)
    assert summary["detect_only"] is (detect_only == "true")
    if detect_only == "true" or script == "diagnose":
        assert guest_state(vm) == before, "DetectOnly and diagnose change nothing"
        assert summary["changed"] is False
    if summary["changed"]:
        assert guest_state(vm) != before


@pytest.mark.parametrize("scenario", WINDOWS_SCENARIOS)
def test_diagnose_recommends_what_the_scenario_needs(scenario: str) -> None:
    summary = run(vm_in(scenario), "diagnose")
    findings = summary["findings"]
    assert findings["recommended"] == EXPECTED_RECOMMENDATIONS[scenario]
    assert findings["recommended"] == recommended_repairs(findings, NOW, 30)


def test_diagnose_reports_what_it_sees() -> None:
    expired = run(vm_in("expired-certificate"), "diagnose")["findings"]
    assert expired["listener_certificate"]["expired"] is True
    assert expired["events_24h"]["1058"] == 1
    broken_keys = run(vm_in("keystore-acl"), "diagnose")["findings"]
    assert broken_keys["listener_certificate"]["private_key"] == "unreadable"
    assert broken_keys["machinekeys"]["key_container_acl_ok"] is False
    assert broken_keys["events_24h"] == {"1057": 1, "1058": 0, "36870": 1, "36871": 0}
    closed = run(vm_in("firewall-closed"), "diagnose")["findings"]
    assert closed["firewall_rule_group"] == {"Domain": False, "Private": False, "Public": False}
    assert run(vm_in("tls12-disabled"), "diagnose")["findings"]["tls12_server_enabled"] is False


def test_diagnose_honours_the_expiry_warning_window() -> None:
    vm = vm_in("expiring-soon")  # expires in 3 days
    assert run(vm, "diagnose", ExpiryWarningDays="30")["findings"]["recommended"] == ["renew-certificate"]
    assert run(vm, "diagnose", ExpiryWarningDays="1")["findings"]["recommended"] == []


def test_events_older_than_a_day_are_not_counted() -> None:
    vm = vm_in("expired-certificate")
    assert run(vm, "diagnose", now=NOW + 2 * DAY)["findings"]["events_24h"]["1058"] == 0


# --- renew-certificate -----------------------------------------------------------------------------------


def test_renewal_replaces_an_expired_certificate() -> None:
    vm = vm_in("expired-certificate")
    old = vm.guest.certificate
    assert old is not None
    summary = run(vm, "renew-certificate")
    findings = summary["findings"]
    assert summary["changed"] is True
    assert summary["reboot_required"] is False
    assert findings["removed"] == [old.thumbprint]
    assert findings["services_restarted"] is True
    new = vm.guest.certificate
    assert new is not None and not new.expired(NOW)
    assert findings["new_certificate"]["thumbprint"] == new.thumbprint != old.thumbprint
    assert vm.guest.key_usable


def test_renewal_of_a_healthy_certificate_changes_nothing() -> None:
    vm = vm_in("healthy")
    before = guest_state(vm)
    summary = run(vm, "renew-certificate")
    assert summary["changed"] is False
    assert summary["findings"]["removed"] == []
    assert summary["findings"]["new_certificate"]["thumbprint"] == vm.guest.certificate.thumbprint  # type: ignore[union-attr]
    assert guest_state(vm) == before


def test_proactive_renewal_follows_the_warning_window() -> None:
    vm = vm_in("expiring-soon")
    assert run(vm, "renew-certificate", ExpiryWarningDays="1")["changed"] is False
    summary = run(vm, "renew-certificate", ExpiryWarningDays="30")
    assert summary["changed"] is True
    assert vm.guest.certificate is not None and vm.guest.certificate.not_after > NOW + 30 * DAY


def test_renewal_refuses_to_end_sessions_unless_forced() -> None:
    vm = vm_in("expired-certificate")
    vm.guest.active_sessions = 2
    old = vm.guest.certificate
    refused = run(vm, "renew-certificate")
    assert refused["changed"] is False
    assert any("Force=true" in error for error in refused["errors"])
    assert refused["findings"]["active_sessions"] == 2
    assert vm.guest.certificate is old
    forced = run(vm, "renew-certificate", Force="true")
    assert forced["changed"] is True and forced["errors"] == []
    assert vm.guest.active_sessions == 0


def test_detect_only_renewal_says_it_would_refuse_with_sessions() -> None:
    vm = vm_in("expired-certificate")
    vm.guest.active_sessions = 1
    summary = run(vm, "renew-certificate", DetectOnly="true")
    assert summary["errors"] == []
    assert any(action.startswith("would refuse") for action in summary["actions"])


def test_renewal_leaves_a_certificate_whose_key_does_not_open() -> None:
    """The key store is broken: a new certificate would fail the same way, so the old one stays."""
    vm = vm_in("keystore-acl")
    certificate = vm.guest.certificate
    summary = run(vm, "renew-certificate")
    assert summary["changed"] is False
    assert any("does not open" in error for error in summary["errors"])
    assert vm.guest.certificate is certificate


def test_renewal_on_a_broken_key_store_leaves_no_certificate_and_says_why() -> None:
    vm = vm_in("expired-certificate")
    vm.guest.key_store = "acl-broken"
    summary = run(vm, "renew-certificate")
    assert summary["changed"] is True
    assert summary["findings"]["new_certificate"] is None
    assert any("did not create a new certificate" in error for error in summary["errors"])
    assert vm.guest.certificate is None
    assert (1057, NOW) in vm.guest.events


def test_a_pinned_certificate_stays_until_it_expires() -> None:
    vm = vm_in("expiring-soon")
    vm.guest.certificate_pinned = True
    pinned = vm.guest.certificate
    summary = run(vm, "renew-certificate")
    assert summary["changed"] is False
    assert any("pinned" in error for error in summary["errors"])
    assert vm.guest.certificate is pinned

    expired = vm_in("expired-certificate")
    expired.guest.certificate_pinned = True
    summary = run(expired, "renew-certificate")
    assert summary["findings"]["pin_cleared"] is True
    assert not expired.guest.certificate_pinned
    assert expired.guest.key_usable


# --- repair-machinekeys / reset-machinekeys -----------------------------------------------------------------


def test_acl_repair_makes_the_existing_key_usable_after_a_reboot() -> None:
    vm = vm_in("keystore-acl")
    certificate = vm.guest.certificate
    summary = run(vm, "repair-machinekeys")
    findings = summary["findings"]
    assert summary["changed"] is True and summary["reboot_required"] is True
    assert (findings["folder_acl_ok_before"], findings["folder_acl_ok_after"]) == (False, True)
    assert (findings["key_container_acl_ok_before"], findings["key_container_acl_ok_after"]) == (False, True)
    assert findings["log_path"] == sim_guest.LOG_ROOT + r"\20261123T100000Z-repair-machinekeys"
    assert vm.guest.key_usable and vm.guest.certificate is certificate


def test_acl_repair_of_a_corrupt_store_leads_diagnose_to_the_reset() -> None:
    vm = vm_in("keystore-corrupt")
    assert run(vm, "repair-machinekeys")["changed"] is True
    assert not vm.guest.key_usable
    findings = run(vm, "diagnose")["findings"]
    assert findings["machinekeys"]["key_container_acl_ok"] is True
    assert findings["recommended"] == ["reset-machinekeys", "renew-certificate"]
    assert run(vm, "repair-machinekeys")["changed"] is False  # the permissions are right: nothing to repair


def test_reset_keeps_a_timestamped_backup_and_windows_makes_a_new_certificate_at_boot() -> None:
    vm = vm_in("keystore-corrupt")
    summary = run(vm, "reset-machinekeys")
    backup = summary["findings"]["backup_path"]
    assert summary["findings"]["renamed"] is True and summary["reboot_required"] is True
    assert re.fullmatch(
        r"C:\\ProgramData\\Microsoft\\Crypto\\RSA\\MachineKeys\.20261123T100000Z\.rdp-remediate\.bak", backup
    )
    assert vm.guest.machinekeys_backups == [backup]
    assert run(vm, "diagnose")["findings"]["listener_certificate"]["private_key"] == "missing"
    sim_guest.boot(vm, LATER)
    assert vm.guest.key_usable
    assert run(vm, "diagnose", now=LATER)["findings"]["recommended"] == []


def test_a_second_reset_never_overwrites_a_backup() -> None:
    vm = vm_in("keystore-corrupt")
    run(vm, "reset-machinekeys")
    same_second = run(vm, "reset-machinekeys")
    assert same_second["changed"] is False
    assert any("already exists" in error for error in same_second["errors"])
    assert run(vm, "reset-machinekeys", now=NOW + dt.timedelta(seconds=1))["changed"] is True
    assert len(set(vm.guest.machinekeys_backups)) == 2


# --- firewall, TLS, boot -------------------------------------------------------------------------------------


def test_the_firewall_rule_group_is_enabled_on_every_profile() -> None:
    vm = vm_in("firewall-closed")
    summary = run(vm, "enable-firewall-rule")
    assert summary["findings"]["before"] == {"Domain": False, "Private": False, "Public": False}
    assert summary["findings"]["after"] == {"Domain": True, "Private": True, "Public": True}
    assert summary["reboot_required"] is False
    assert vm.guest.firewall_open


def test_tls12_is_configured_now_and_effective_after_boot() -> None:
    vm = vm_in("tls12-disabled")
    summary = run(vm, "enable-tls12")
    assert summary["findings"] == {"enabled_before": False, "enabled_after": True}
    assert summary["reboot_required"] is True
    assert vm.guest.tls12_enabled is False  # SCHANNEL reads the registry at boot
    sim_guest.boot(vm, LATER)
    assert vm.guest.tls12_enabled is True and vm.guest.pending_tls12 is None


def test_boot_does_not_replace_an_expired_certificate() -> None:
    vm = vm_in("expired-certificate")
    old = vm.guest.certificate
    sim_guest.boot(vm, LATER)
    assert vm.guest.certificate is old
    assert (1058, LATER) in vm.guest.events


def test_boot_ends_sessions_and_fails_to_make_a_certificate_on_a_broken_store() -> None:
    vm = vm_in("keystore-corrupt")
    vm.guest.certificate = None
    vm.guest.active_sessions = 3
    sim_guest.boot(vm, LATER)
    assert vm.guest.certificate is None
    assert (1057, LATER) in vm.guest.events
    assert vm.guest.active_sessions == 0


@pytest.mark.parametrize("scenario", WINDOWS_SCENARIOS)
def test_following_diagnose_repairs_every_scenario(scenario: str) -> None:
    """diagnose, its repairs in order, a reboot when asked; a corrupt store takes a second round (the reset)."""
    vm = vm_in(scenario)
    rounds, now = 0, NOW
    while recommended := run(vm, "diagnose", now=now)["findings"]["recommended"]:
        rounds += 1
        assert rounds <= 2, f"{scenario} still needs {recommended}"
        summaries = [run(vm, script, now=now) for script in recommended]
        if any(s["reboot_required"] for s in summaries):
            now += dt.timedelta(minutes=5)
            sim_guest.boot(vm, now)
    assert rounds == {"healthy": 0, "keystore-corrupt": 2}.get(scenario, 1)
    assert vm.guest.key_usable and vm.guest.firewall_open and vm.guest.tls12_enabled


# --- PowerShell's parameter binding and unknown scripts -------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "error_id"),
    [
        ({"Bogus": "1"}, "NamedParameterNotFound"),
        ({"DetectOnly": "yes"}, "ParameterArgumentValidationError"),
        ({"ExpiryWarningDays": "ten"}, "ParameterArgumentTransformationError"),
        ({"ExpiryWarningDays": "99999"}, "ParameterArgumentValidationError"),
    ],
)
def test_bad_parameters_fail_like_powershell(parameters: dict[str, str], error_id: str) -> None:
    vm = vm_in("expired-certificate")
    before = guest_state(vm)
    output = sim_guest.run_script(vm, script_text("diagnose"), parameters, NOW)
    assert output.stdout == ""
    assert error_id in output.stderr
    with pytest.raises(GuestOutputError, match=error_id):
        parse_output(output.stdout, output.stderr, "diagnose")
    assert guest_state(vm) == before


def test_parameter_names_and_choices_ignore_case() -> None:
    vm = vm_in("expired-certificate")
    summary = run(vm, "renew-certificate", detectonly="TRUE")
    assert summary["detect_only"] is True and summary["changed"] is False


def test_a_script_without_a_known_name_is_not_run() -> None:
    vm = vm_in("healthy")
    output = sim_guest.run_script(vm, "Format-Volume -DriveLetter C\n", {}, NOW)
    assert output.stdout == ""
    assert "'Format-Volume' is not recognized" in output.stderr


def test_long_lists_are_truncated_to_fit_the_output_tail() -> None:
    summary = {
        "script": "enable-tls12",
        "version": script_version("enable-tls12"),
        "detect_only": False,
        "changed": True,
        "reboot_required": True,
        "actions": [f"action {i} " + "x" * 400 for i in range(30)],
        "findings": {"enabled_before": False, "enabled_after": True},
        "errors": ["the first error"],
    }
    line = sim_guest.summary_line(summary)
    parsed = parse_output(line + "\n", "", "enable-tls12")
    assert len(line.encode("utf-8")) <= 4000
    assert parsed["errors"] == ["the first error"]
    assert parsed["truncated"] == 30 - len(parsed["actions"])
    assert all(len(action) <= 300 for action in parsed["actions"])


def test_the_firewall_repair_names_only_the_user_mode_tcp_rule() -> None:
    """Shadow lets an administrator watch sessions, and UDP may be off on purpose: neither is enabled."""
    for detect_only in ("true", "false"):
        summary = run(vm_in("firewall-closed"), "enable-firewall-rule", DetectOnly=detect_only)
        named = {action.split()[-1] for action in summary["actions"]}
        assert named == {"RemoteDesktop-UserMode-In-TCP"}


def test_renewal_reports_the_certificate_the_listener_uses_afterwards() -> None:
    vm = vm_in("expired-certificate")
    summary = run(vm, "renew-certificate")
    assert vm.guest.certificate is not None
    assert f"the listener now uses {vm.guest.certificate.thumbprint}" in " ".join(summary["actions"])
