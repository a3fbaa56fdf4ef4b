"""The output contract: shipped scripts, summary validation, and reading a summary out of Run Command's output."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from remediate.guest import contract
from remediate.guest.contract import GuestOutputError, parse_output, validate_summary
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
        "refused": None,
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
    broken["findings"]["listener"]["thumbprint"] = "not-a-thumbprint"
    with pytest.raises(GuestOutputError, match="thumbprint"):
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


# --- facts, not recommendations -----------------------------------------------------------------------------


def _with(findings: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(findings)
    *parents, leaf = path.split(".")
    target = changed
    for part in parents:
        target = target[part]
    target[leaf] = value
    return changed


def test_diagnose_reports_facts_and_no_recommendation(diagnosis: dict[str, Any]) -> None:
    assert "recommended" not in diagnosis["findings"]
    assert not hasattr(contract, "recommended_repairs")
    broken = copy.deepcopy(diagnosis)
    broken["findings"]["recommended"] = ["reset-machinekeys"]
    with pytest.raises(GuestOutputError, match="recommended"):
        validate_summary(broken, "diagnose")


@pytest.mark.parametrize(
    "fact", ["listener", "key", "machinekeys", "other_keys", "roles", "firewall", "sessions", "tls", "events"]
)
def test_every_fact_may_be_unknown(diagnosis: dict[str, Any], fact: str) -> None:
    """A check that failed or timed out leaves its fact null: the contract takes that, never a made-up value."""
    unknown = copy.deepcopy(diagnosis)
    unknown["findings"][fact] = None
    unknown["errors"] = [f"{fact}: timed out"]
    assert validate_summary(unknown, "diagnose") is unknown


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("rdp_config.security_layer", 3),
        ("rdp_config.security_layer", 0xFFFFFFFF),
        ("rdp_config.user_authentication", 7),
        ("rdp_config.port", 0),
        ("listener.hash_type", 0),
    ],
)
def test_registry_values_outside_their_documented_range_are_facts_too(
    diagnosis: dict[str, Any], path: str, value: int
) -> None:
    summary = copy.deepcopy(diagnosis)
    summary["findings"] = _with(summary["findings"], path, value)
    assert validate_summary(summary, "diagnose") is summary


def test_a_refused_script_changed_nothing() -> None:
    refused = tls_summary(refused="the facts changed", changed=True)
    with pytest.raises(GuestOutputError, match="changed"):
        validate_summary(refused, "enable-tls12")
    assert validate_summary(tls_summary(refused="the facts changed", changed=False), "enable-tls12")


def test_free_text_must_be_ascii_that_json_never_escapes(diagnosis: dict[str, Any]) -> None:
    summary = copy.deepcopy(diagnosis)
    summary["findings"]["other_keys"] = {"count": 1, "names": ['Zertifikat f\u00fcr "IIS"']}
    with pytest.raises(GuestOutputError, match="other_keys"):
        validate_summary(summary, "diagnose")


# --- the 4096-byte bound, proved from the contract ---------------------------------------------------------------

_ESCAPED = 6  # the most a character can take in the ASCII JSON the scripts print (\uXXXX)


def _largest(node: dict[str, Any], defs: dict[str, Any]) -> Any:
    """The largest JSON value the contract allows at `node`, as characters (each free character at its worst)."""
    if "$ref" in node:
        merged = {**defs[node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}
        return _largest(merged, defs)
    if "anyOf" in node:
        return max((_largest(option, defs) for option in node["anyOf"]), key=_size)
    if "enum" in node:
        return max(node["enum"], key=_size)
    if "const" in node:
        return node["const"]
    kinds = node.get("type", "object")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    return max((_largest_of(kind, node, defs) for kind in kinds), key=_size)


def _largest_of(kind: str, node: dict[str, Any], defs: dict[str, Any]) -> Any:
    if kind == "object":
        return {key: _largest(value, defs) for key, value in node.get("properties", {}).items()}
    if kind == "array":
        assert "maxItems" in node, f"an array without maxItems: {node}"
        return [_largest(node["items"], defs)] * node["maxItems"]
    if kind == "string":
        if "maxLength" not in node:
            pattern = node.get("pattern", "")
            assert "{" in pattern, f"a string without a length bound: {node}"
            return "x" * max(int(n) for n in __import__("re").findall(r"\{(?:\d+,)?(\d+)\}", pattern))
        # A pattern that admits no backslash or quote keeps each character one byte; free text may be escaped.
        pattern = node.get("pattern")
        per_character = 1 if pattern and "\\\\" not in pattern and '"' not in pattern else _ESCAPED
        if pattern and "\\\\" in pattern:
            per_character = 2
        return "x" * (node["maxLength"] * per_character)
    if kind == "integer":
        return -(10**10) if node.get("minimum", -1) < 0 else int(node.get("maximum", 10**19))
    if kind == "number":
        return -1.2345678901234567e-300
    if kind == "boolean":
        return False
    return None


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


@pytest.mark.parametrize("name", contract.SCRIPTS)
def test_no_summary_can_exceed_what_run_command_keeps(name: str) -> None:
    """With empty actions and errors (Write-Summary drops those first), the largest summary the contract allows
    still fits in 4000 bytes: the JSON line survives Run Command's 4096-byte tail in every branch."""
    schema = contract.schema()
    defs = schema["$defs"]
    branch = next(b for b in schema["allOf"] if b["if"]["properties"].get("script", {}).get("const") == name)
    findings = _largest(branch["then"]["properties"]["findings"], defs)
    refused = _largest(branch["then"]["properties"].get("refused", schema["properties"]["refused"]), defs)
    envelope = {
        "script": name,
        "version": "99.99.99",
        "detect_only": False,
        "changed": False,
        "reboot_required": False,
        "refused": refused,
        "actions": [],
        "findings": findings,
        "errors": [],
        "truncated": 10**6,
    }
    assert _size(envelope) <= 4000, f"{name}: up to {_size(envelope)} bytes"


def test_the_bound_check_notices_an_unbounded_list() -> None:
    loose = {"type": "array", "items": {"type": "string", "maxLength": 10}}
    with pytest.raises(AssertionError, match="maxItems"):
        _largest(loose, {})
