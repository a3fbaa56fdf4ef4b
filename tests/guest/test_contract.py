"""The output contract: shipped scripts, summary validation, and reading a summary out of Run Command's output."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from remediate.guest import contract
from remediate.guest.contract import GuestOutputError, parse_output, recommended_repairs, validate_summary
from remediate.model import PermanentError
from sim import guest as sim_guest
from sim.fleet import make_vm

NOW = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)


def tls_summary(**changes: Any) -> dict[str, Any]:
    summary = {
        "script": "enable-tls12",
        "version": contract.script_version("enable-tls12"),
        "detect_only": False,
        "changed": True,
        "reboot_required": True,
        "actions": ["set Enabled=1 and DisabledByDefault=0; reboot to apply"],
        "findings": {"enabled_before": False, "enabled_after": True},
        "errors": [],
    }
    summary.update(changes)
    return summary


@pytest.fixture(scope="module")
def diagnosis() -> dict[str, Any]:
    """A real diagnose summary of a healthy guest, as the simulated guest prints it."""
    vm = make_vm("healthy", 0, now=NOW)
    output = sim_guest.run_script(vm, contract.script_text("diagnose"), {}, NOW)
    return parse_output(output.stdout, output.stderr, "diagnose")


@pytest.mark.parametrize("name", contract.SCRIPTS)
def test_script_text_is_the_shipped_script(name: str) -> None:
    text = contract.script_text(name)
    assert text.startswith("<#")
    assert f"$ScriptName = '{name}'" in text
    assert contract.script_version(name).count(".") == 2


def test_unknown_script_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown guest script"):
        contract.script_text("format-disk")
    with pytest.raises(ValueError, match="unknown guest script"):
        validate_summary(tls_summary(), "format-disk")


def test_the_schema_is_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(contract.schema())


def test_a_valid_summary_is_returned_as_is() -> None:
    summary = tls_summary()
    assert validate_summary(summary, "enable-tls12") is summary


def test_guest_output_errors_are_permanent() -> None:
    assert issubclass(GuestOutputError, PermanentError)


def _drop(key: str) -> Any:
    def change(summary: dict[str, Any]) -> None:
        del summary[key]

    return change


INVALID: dict[str, Any] = {
    "no errors list": _drop("errors"),
    "an unknown field": lambda s: s.update(extra=1),
    "changed is text": lambda s: s.update(changed="yes"),
    "detect-only yet changed": lambda s: s.update(detect_only=True),
    "21 actions": lambda s: s.update(actions=["x"] * 21),
    "an action over 300 characters": lambda s: s.update(actions=["x" * 301]),
    "findings of another script": lambda s: s.update(findings={"renamed": True, "backup_path": None}),
    "a finding missing": lambda s: s["findings"].pop("enabled_after"),
    "a bad version": lambda s: s.update(version="1.0"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_contract_violations_are_refused(case: str) -> None:
    summary = tls_summary()
    INVALID[case](summary)
    with pytest.raises(GuestOutputError, match="violates the contract"):
        validate_summary(summary, "enable-tls12")


def test_a_summary_of_another_script_is_refused() -> None:
    with pytest.raises(GuestOutputError, match="expected the summary of enable-firewall-rule"):
        validate_summary(tls_summary(), "enable-firewall-rule")


def test_a_summary_of_another_version_is_refused() -> None:
    with pytest.raises(GuestOutputError, match=r"reported version 9\.9\.9"):
        validate_summary(tls_summary(version="9.9.9"), "enable-tls12")


def test_diagnose_never_reports_a_change(diagnosis: dict[str, Any]) -> None:
    changed = copy.deepcopy(diagnosis)
    changed["changed"] = True
    with pytest.raises(GuestOutputError, match="changed"):
        validate_summary(changed, "diagnose")


def test_diagnose_findings_are_checked_deeply(diagnosis: dict[str, Any]) -> None:
    broken = copy.deepcopy(diagnosis)
    broken["findings"]["listener_certificate"]["thumbprint"] = "not-a-thumbprint"
    with pytest.raises(GuestOutputError, match="thumbprint"):
        validate_summary(broken, "diagnose")
    broken = copy.deepcopy(diagnosis)
    broken["findings"]["recommended"] = ["format-disk"]
    with pytest.raises(GuestOutputError, match="recommended"):
        validate_summary(broken, "diagnose")


# --- parse_output: the last JSON line of what Run Command returned -----------------------------------------


def test_the_summary_is_the_last_json_line_after_progress() -> None:
    stdout = "[enable-tls12] 1.0.0 on VM1\n[enable-tls12] {not json}\n" + json.dumps(tls_summary()) + "\n"
    assert parse_output(stdout, "", "enable-tls12") == tls_summary()


def test_output_cut_at_the_front_still_yields_the_summary() -> None:
    full = "".join(f"progress line {i}\n" for i in range(500)) + json.dumps(tls_summary()) + "\n"
    tail = full.encode()[-4096:].decode()
    assert not tail.startswith("progress line 0")
    assert parse_output(tail, "", "enable-tls12")["changed"] is True


def test_a_partial_json_first_line_is_ignored() -> None:
    line = json.dumps(tls_summary())
    stdout = line[len(line) // 2 :] + "\r\n" + line + "\r\n"
    assert parse_output(stdout, "", "enable-tls12") == tls_summary()


def test_lines_after_the_summary_that_are_not_objects_are_skipped() -> None:
    stdout = json.dumps(tls_summary()) + "\nWARNING: a provider printed this late\n[1, 2]\n\n"
    assert parse_output(stdout, "", "enable-tls12") == tls_summary()


def test_no_summary_is_a_permanent_error_quoting_both_streams() -> None:
    stderr = "script0.ps1 : A parameter cannot be found that matches parameter name 'Bogus'."
    with pytest.raises(GuestOutputError) as caught:
        parse_output("[enable-tls12] starting\n", stderr, "enable-tls12")
    message = caught.value.reason
    assert "printed no JSON summary" in message
    assert "Bogus" in message
    assert "[enable-tls12] starting" in message


def test_empty_output_says_so() -> None:
    with pytest.raises(GuestOutputError, match="StdOut and StdErr are empty"):
        parse_output("", "", "enable-tls12")


def test_an_invalid_summary_is_refused_with_the_output_quoted() -> None:
    stdout = "checking\n" + json.dumps(tls_summary(changed="yes")) + "\n"
    with pytest.raises(GuestOutputError) as caught:
        parse_output(stdout, "", "enable-tls12")
    assert "violates the contract" in caught.value.reason
    assert "changed" in caught.value.reason
    assert '"changed": "yes"' in caught.value.reason


def test_quotes_of_long_output_are_clipped() -> None:
    with pytest.raises(GuestOutputError) as caught:
        parse_output("x" * 5000, "y" * 5000, "enable-tls12")
    assert len(caught.value.reason) < 1500


# --- the diagnose rule ---------------------------------------------------------------------------------------


def _with(findings: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(findings)
    *parents, leaf = path.split(".")
    target = changed
    for part in parents:
        target = target[part]
    target[leaf] = value
    return changed


RULE_CASES: list[tuple[str, Any, list[str]]] = [
    ("listener_certificate", None, ["renew-certificate"]),
    ("listener_certificate.expired", True, ["renew-certificate"]),
    ("listener_certificate.expired", None, ["renew-certificate"]),  # pinned to a certificate in no store
    ("listener_certificate.private_key", "missing", ["renew-certificate"]),
    ("listener_certificate.private_key", "unreadable", ["reset-machinekeys", "renew-certificate"]),
    ("listener_certificate.not_after", "2026-12-01T00:00:00Z", ["renew-certificate"]),
    ("machinekeys.key_container_acl_ok", False, ["repair-machinekeys"]),
    ("machinekeys.folder_acl_ok", False, ["repair-machinekeys"]),
    ("machinekeys.folder_exists", False, ["reset-machinekeys"]),
    ("firewall_rule_group.Public", False, ["enable-firewall-rule"]),
    ("tls12_server_enabled", False, ["enable-tls12"]),
]


def test_a_healthy_diagnosis_recommends_nothing(diagnosis: dict[str, Any]) -> None:
    assert recommended_repairs(diagnosis["findings"], NOW, 30) == []


@pytest.mark.parametrize(("path", "value", "expected"), RULE_CASES)
def test_recommended_repairs(diagnosis: dict[str, Any], path: str, value: Any, expected: list[str]) -> None:
    assert recommended_repairs(_with(diagnosis["findings"], path, value), NOW, 30) == expected


def test_repairs_come_in_the_order_to_apply_them(diagnosis: dict[str, Any]) -> None:
    findings = _with(diagnosis["findings"], "tls12_server_enabled", False)
    findings = _with(findings, "firewall_rule_group.Domain", False)
    findings = _with(findings, "listener_certificate.private_key", "unreadable")
    findings = _with(findings, "machinekeys.key_container_acl_ok", False)
    assert recommended_repairs(findings, NOW, 30) == [
        "repair-machinekeys",
        "renew-certificate",
        "enable-firewall-rule",
        "enable-tls12",
    ]


def test_the_expiry_warning_window_is_honoured(diagnosis: dict[str, Any]) -> None:
    findings = _with(diagnosis["findings"], "listener_certificate.not_after", "2026-12-01T10:00:00Z")
    assert recommended_repairs(findings, NOW, 30) == ["renew-certificate"]
    assert recommended_repairs(findings, NOW, 7) == []


# A certificate renew-certificate leaves in place (a CA's, or one an admin keeps in the personal store) is no
# reason to recommend it, unless it expired: then renew clears the pin and Windows' own certificate takes over.
FOREIGN_CERTIFICATE_CASES: list[tuple[dict[str, Any], list[str]]] = [
    ({"self_signed": False, "store": "Cert:\\LocalMachine\\My", "not_after": "2026-12-01T00:00:00Z"}, []),
    ({"self_signed": False, "private_key": "missing"}, []),
    ({"self_signed": True, "store": "Cert:\\LocalMachine\\My", "private_key": "missing"}, []),
    ({"self_signed": False, "store": "Cert:\\LocalMachine\\My", "expired": True}, ["renew-certificate"]),
    ({"self_signed": True, "private_key": "missing"}, ["renew-certificate"]),
]


@pytest.mark.parametrize(("changes", "expected"), FOREIGN_CERTIFICATE_CASES)
def test_renewal_is_recommended_only_for_what_it_repairs(
    diagnosis: dict[str, Any], changes: dict[str, Any], expected: list[str]
) -> None:
    findings = copy.deepcopy(diagnosis["findings"])
    findings["listener_certificate"].update(changes)
    assert recommended_repairs(findings, NOW, 30) == expected
