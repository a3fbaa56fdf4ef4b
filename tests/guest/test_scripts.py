"""The guest scripts read as syntax: they parse, keep the house rules, and print what the contract defines.

PowerShell cannot run here. Every check below walks the tree-sitter syntax tree of the shipped scripts, and
every rule is proven to catch a deliberately bad snippet, so a passing rule is not a vacuous one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import Any

import pytest
from tree_sitter import Node, Tree

from remediate.guest.contract import PARAMETERS, SCRIPTS, schema, script_text, script_version
from sim import guest as sim_guest
from tests.guest import psast, rules

BROKEN_SNIPPETS = (
    "try { Get-Date",  # an unclosed block
    "$summary = [ordered]@{ script = 'x'; version = ",  # a hashtable cut short
    "Write-Output ('unterminated)",  # an unterminated string
    "if ($x -eq 1 { Write-Output $x }",  # a missing parenthesis
    "function Get-Thing {",  # a function never closed
    "$total = $count +",  # an operator without its operand
)


@cache
def tree_of(name: str) -> Tree:
    return psast.parse(script_text(name))


def test_the_package_ships_exactly_the_known_scripts() -> None:
    shipped = {
        entry.name.removesuffix(".ps1")
        for entry in resources.files("remediate.guest").iterdir()
        if entry.name.endswith(".ps1")
    }
    assert shipped == set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_parses_without_error_or_missing_nodes(name: str) -> None:
    assert psast.syntax_problems(tree_of(name)) == []


@pytest.mark.parametrize("snippet", BROKEN_SNIPPETS)
def test_the_parse_check_rejects_broken_powershell(snippet: str) -> None:
    assert psast.syntax_problems(psast.parse(snippet))


@pytest.mark.parametrize("rule", sorted(rules.RULES))
@pytest.mark.parametrize("name", SCRIPTS)
def test_script_keeps_rule(name: str, rule: str) -> None:
    assert rules.RULES[rule](tree_of(name)) == []


def _negative_examples() -> Iterator[tuple[str, str]]:
    for rule, snippets in rules.NEGATIVE_EXAMPLES.items():
        for snippet in snippets:
            yield rule, snippet


def test_every_rule_has_negative_examples() -> None:
    assert set(rules.NEGATIVE_EXAMPLES) == set(rules.RULES)


@pytest.mark.parametrize(("rule", "snippet"), list(_negative_examples()))
def test_rule_catches_its_negative_example(rule: str, snippet: str) -> None:
    tree = psast.parse(snippet)
    assert psast.syntax_problems(tree) == [], "a negative example must be valid PowerShell"
    assert rules.RULES[rule](tree), f"{rule} missed: {snippet}"


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_has_the_required_preamble_and_ending(name: str) -> None:
    assert rules.preamble(tree_of(name), name) == []


# (what to break, how) applied to a real script: the preamble check must notice each one.
PREAMBLE_BREAKS = {
    "no strict mode": ("Set-StrictMode -Version Latest\n", ""),
    "errors continue": ("$ErrorActionPreference = 'Stop'", "$ErrorActionPreference = 'Continue'"),
    "wrong name": ("$ScriptName = 'enable-tls12'", "$ScriptName = 'enable-tls'"),
    "no version": (f"$ScriptVersion = '{script_version('enable-tls12')}'", "$ScriptVersion = 'latest'"),
    "a switch": ("[string]$DetectOnly = 'false'", "[switch]$DetectOnly"),
    "not compressed": ("-Compress -Depth 8", "-Depth 8"),
    "no help": ("<#\n.SYNOPSIS", "<#\n.NOTSYNOPSIS"),
    "output after the summary": ("Write-Summary -Summary $summary\n", "Write-Summary -Summary $summary\nGet-Date\n"),
}


@pytest.mark.parametrize("change", sorted(PREAMBLE_BREAKS))
def test_the_preamble_check_notices_a_broken_script(change: str) -> None:
    old, new = PREAMBLE_BREAKS[change]
    source = script_text("enable-tls12")
    assert old in source
    broken = psast.parse(source.replace(old, new, 1))
    assert rules.preamble(broken, "enable-tls12")


def test_functions_shared_between_scripts_are_identical() -> None:
    """Each script is sent alone, so shared functions are copied: every copy must be the same text."""
    definitions: dict[str, set[str]] = {}
    for name in SCRIPTS:
        for function, body in psast.functions(tree_of(name)).items():
            definitions.setdefault(function, set()).add(body)
    diverged = sorted(function for function, bodies in definitions.items() if len(bodies) > 1)
    assert diverged == []
    assert all("Write-Summary" in psast.functions(tree_of(name)) for name in SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_param_block_matches_the_contract_and_the_simulated_guest(name: str) -> None:
    declared = psast.script_parameters(tree_of(name))
    assert {p.name for p in declared} == PARAMETERS[name]
    simulated = {
        (p.name, p.default, p.choices, p.int_range, p.pattern, "int" if p.int_range else "string")
        for p in sim_guest.PARAMETERS[name]
    }
    assert {
        (p.name, p.default, p.validate_set, p.validate_range, p.validate_pattern, p.type) for p in declared
    } == simulated


@pytest.mark.parametrize("name", SCRIPTS)
def test_declared_version_is_what_the_package_reports(name: str) -> None:
    assert re.search(rf"^\$ScriptVersion = '{re.escape(script_version(name))}'$", script_text(name), re.MULTILINE)


# --- the summary's keys against the contract ---------------------------------------------------------------


def _object_schemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every object definition (with properties) anywhere in the contract."""
    if isinstance(node, dict):
        if isinstance(node.get("properties"), dict):
            yield node
        for value in node.values():
            yield from _object_schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _object_schemas(value)


def _findings_schema(name: str) -> dict[str, Any]:
    contract = schema()
    branch = next(b for b in contract["allOf"] if b["if"]["properties"].get("script", {}).get("const") == name)
    reference = branch["then"]["properties"]["findings"]["$ref"].rsplit("/", 1)[1]
    findings: dict[str, Any] = contract["$defs"][reference]
    return findings


def _summary_literal(tree: Tree) -> psast.HashLiteral:
    for assignment in psast.assignments(tree):
        if assignment.target == "$summary":
            node = next(n for n in psast.walk(assignment.value) if n.type == "hash_literal_expression")
            return next(h for h in psast.hash_literals(tree) if h.node == node)
    raise AssertionError("no $summary = [ordered]@{...}")


@pytest.mark.parametrize("name", SCRIPTS)
def test_summary_literal_has_exactly_the_contract_keys(name: str) -> None:
    contract = schema()
    summary = _summary_literal(tree_of(name))
    assert summary.ordered
    assert list(summary.keys) == contract["required"]
    findings = summary.value_literal("findings")
    assert findings is not None and findings.ordered
    assert set(findings.keys) == set(_findings_schema(name)["properties"])
    assert set(_findings_schema(name)["required"]) <= set(findings.keys)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_output_object_matches_a_contract_object(name: str) -> None:
    """By convention [ordered] hashtables are output: each must be one of the contract's objects exactly."""
    objects = list(_object_schemas(schema()))
    literals = [h for h in psast.hash_literals(tree_of(name)) if h.ordered]
    assert literals
    for literal in literals:
        keys = set(literal.keys)
        assert any(keys <= set(o["properties"]) and set(o.get("required", [])) <= keys for o in objects), (
            f"{name}: [ordered]@{{{', '.join(literal.keys)}}} is no object of the contract"
        )


# By convention the objects a script outputs are named $summary (its findings: $findings) or $facts; helpers'
# private hashtables ($result, $access) carry other names.
_OUTPUT_OBJECTS = re.compile(r"^\$(summary|findings|facts)(\.findings)?$", re.IGNORECASE)


@pytest.mark.parametrize("name", SCRIPTS)
def test_assigned_summary_members_are_contract_fields(name: str) -> None:
    names: set[str] = set()
    for obj in _object_schemas(schema()):
        names |= set(obj["properties"])
    assigned = [(obj, member) for obj, member in psast.assigned_members(tree_of(name)) if _OUTPUT_OBJECTS.match(obj)]
    assert assigned
    assert [(obj, member) for obj, member in assigned if member not in names] == []


def test_the_key_checks_notice_a_misspelt_field() -> None:
    source = script_text("enable-tls12").replace("enabled_after = $false", "enabled_later = $false", 1)
    tree = psast.parse(source)
    findings = _summary_literal(tree).value_literal("findings")
    assert findings is not None
    assert set(findings.keys) != set(_findings_schema("enable-tls12")["properties"])
    objects = list(_object_schemas(schema()))
    assert not any(set(findings.keys) <= set(o["properties"]) for o in objects)


# --- what the review of the scripts asked for, as far as syntax can show it ------------------------------------

_CHECKS_HEAD = (
    "$summary = [ordered]@{ findings = [ordered]@{ os_build = ''; services = $null; recommended = $null } }\n"
)
_GOOD_CHECK = "try {{\n    $findings.{0} = Get-Thing\n}}\ncatch {{\n    Add-CheckError -Check '{0}' -Record $_\n}}\n"
# diagnose shapes the check rule must refuse: a check filling two findings, a finding filled outside a check, a
# catch that rethrows or only notes the error, a command outside any check, a finding no check fills.
UNGUARDED_DIAGNOSE = {
    "one try for two findings": "try {\n    $findings.os_build = Get-Build\n    $findings.services = Get-Services\n}\n"
    "catch {\n    Add-CheckError -Check 'os_build' -Record $_\n}\n",
    "a finding outside a check": "$findings.os_build = Get-Build\n" + _GOOD_CHECK.format("services"),
    "a rethrowing catch": "try {\n    $findings.os_build = Get-Build\n}\ncatch {\n    Add-CheckError -Check 'os_build' "
    "-Record $_\n    throw\n}\n" + _GOOD_CHECK.format("services"),
    "a catch that records nothing": "try {\n    $findings.os_build = Get-Build\n}\ncatch {\n    Add-Text -List $e "
    "-Text 'failed'\n}\n" + _GOOD_CHECK.format("services"),
    "work outside a check": _GOOD_CHECK.format("os_build") + "Get-Services\n" + _GOOD_CHECK.format("services"),
    "a finding never read": _GOOD_CHECK.format("os_build"),
}


def test_diagnose_runs_every_check_on_its_own() -> None:
    assert rules.diagnose_checks(tree_of("diagnose")) == []


def test_the_check_rule_accepts_guarded_checks() -> None:
    source = (
        _CHECKS_HEAD + _GOOD_CHECK.format("os_build") + _GOOD_CHECK.format("services") + "Write-Summary -Summary $s\n"
    )
    assert rules.diagnose_checks(psast.parse(source)) == []


@pytest.mark.parametrize("shape", sorted(UNGUARDED_DIAGNOSE))
def test_the_check_rule_refuses_unguarded_checks(shape: str) -> None:
    tree = psast.parse(_CHECKS_HEAD + UNGUARDED_DIAGNOSE[shape] + "Write-Summary -Summary $s\n")
    assert psast.syntax_problems(tree) == []
    assert rules.diagnose_checks(tree), shape


def _function(name: str, function: str) -> Node:
    node = next(
        (
            n
            for n in psast.walk(tree_of(name).root_node)
            if n.type == "function_statement" and psast.text(n).startswith(f"function {function} ")
        ),
        None,
    )
    assert node is not None, f"{name} has no function {function}"
    return node


def _commands_in(name: str, node: Node) -> list[psast.Command]:
    return [c for c in psast.commands(tree_of(name)) if node.start_byte <= c.node.start_byte < node.end_byte]


def test_an_unreadable_acl_is_taken_over_before_it_is_saved() -> None:
    """icacls /save needs read access to the ACL: when it fails, ownership comes first, then the save, then the
    grants; a failed first save is no reason to stop."""
    steps = [
        (c.lowered.removesuffix(".exe"), next((a for a in c.args if a.startswith("/")), ""))
        for c in _commands_in("repair-machinekeys", _function("repair-machinekeys", "Repair-Acl"))
        if c.lowered.removesuffix(".exe") in ("icacls", "takeown", "assert-exitcode")
    ]
    assert steps == [
        ("icacls", "/save"),
        ("takeown", "/f"),
        ("assert-exitcode", ""),
        ("icacls", "/save"),
        ("assert-exitcode", ""),
        ("icacls", "/remove:d"),
        ("assert-exitcode", ""),
        ("icacls", "/grant"),
        ("assert-exitcode", ""),
        ("icacls", "/setowner"),  # icacls /save keeps only the DACL: the recorded owner is given back
        ("assert-exitcode", ""),
    ]


@pytest.mark.parametrize(
    ("name", "function"),
    [
        ("diagnose", "Get-KeyAccess"),
        ("diagnose", "Test-FolderAcl"),
        ("repair-machinekeys", "Test-FolderAdministrators"),
    ],
)
def test_an_unreadable_acl_is_unknown_never_broken(name: str, function: str) -> None:
    """An ACL SYSTEM cannot read is a fact nobody knows: reported as null, which the engine never acts on."""
    catches = [n for n in psast.walk(_function(name, function)) if n.type == "catch_clause"]
    assert len(catches) == 1
    assert "UnauthorizedAccessException" in psast.text(catches[0])
    assert re.search(r"return \$(null|access)\b", psast.text(catches[0]))
    assert "return $false" not in psast.text(catches[0])


def test_the_certificate_wait_survives_wmi_errors() -> None:
    """TermService starting makes WMI fail for a moment: each poll has its own try inside the loop."""
    function = _function("renew-certificate", "Wait-ListenerCertificate")
    (query,) = [c for c in _commands_in("renew-certificate", function) if c.name == "Get-ListenerThumbprint"]
    kinds = [a.type for a in psast.ancestors(query.node)]
    assert kinds.index("try_statement") < kinds.index("while_statement") < kinds.index("function_statement")
    assert "-Exclude @($Current)" in script_text("renew-certificate"), "the pre-restart certificate is no new one"


def test_renewal_restarts_termservice_only_when_sessionenv_was_not_enough() -> None:
    """Microsoft's documented renewal restarts SessionEnv; TermService (which ends sessions) only as a fallback."""
    renewal = psast.text(_function("renew-certificate", "Invoke-Renewal"))
    first, _, fallback = renewal.partition("if (-not $new) {")
    assert "-Name 'SessionEnv'" in first and "-Name 'TermService'" not in first
    assert "-Name 'TermService'" in fallback


def test_services_stopped_by_a_script_are_started_again_in_finally() -> None:
    source = script_text("renew-certificate")
    assert re.search(r"finally \{\n    Restore-Services -Stopped \$stopped -Summary \$summary\n\}", source)
    restart = psast.text(_function("renew-certificate", "Restart-ServiceWithin"))
    assert "$Stopped.Add($controller.ServiceName)" in restart


@pytest.mark.parametrize("name", ["diagnose", "enable-firewall-rule"])
def test_the_firewall_scripts_judge_by_the_user_mode_tcp_rule(name: str) -> None:
    strings = {value for value, _ in psast.strings(tree_of(name))}
    assert "RemoteDesktop-UserMode-In-TCP" in strings
    assert not any("Shadow" in value for value in strings)
    assert "-PolicyStore RSOP -Name $RdpTcpRule" in script_text(name), "Group Policy copies are looked for"


def test_the_firewall_repair_enables_only_the_user_mode_rules() -> None:
    (enable,) = [c for c in psast.commands(tree_of("enable-firewall-rule")) if c.lowered == "enable-netfirewallrule"]
    assert enable.value_of("Name") == "$names"
    strings = {value for value, _ in psast.strings(tree_of("enable-firewall-rule"))}
    assert set(rules.USER_MODE_RULES) <= strings


def test_renewal_restarts_services_with_bounded_waits_and_spares_stopped_dependents() -> None:
    function = psast.text(_function("renew-certificate", "Restart-ServiceWithin"))
    assert "Where-Object { $_.Status -eq 'Running' }" in function
    assert "UmRdpService" not in psast.code_text(tree_of("renew-certificate"))
    assert "catch [System.ServiceProcess.TimeoutException]" in script_text("renew-certificate")


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_catch_all_reports_through_the_guarded_formatter(name: str) -> None:
    """A catch for every error hands the error record to Format-ErrorText (diagnose: through Add-CheckError),
    the one place that reads InvocationInfo, and only after checking it for $null."""
    clauses = [
        n
        for n in psast.walk(tree_of(name).root_node)
        if n.type == "catch_clause" and not any(c.type == "catch_type_list" for c in n.children)
    ]
    reporting = [psast.text(c) for c in clauses if "$summary.errors" in psast.text(c)]
    assert reporting
    assert all(re.search(r"(Format-ErrorText|Add-CheckError) .*-Record \$_\b", text) for text in reporting)
    assert "$Record.InvocationInfo.ScriptLineNumber" in psast.text(_function(name, "Format-ErrorText"))


# --- what the Windows-admin review found, pinned in the scripts' syntax ------------------------------------------


@pytest.mark.parametrize("name", ["diagnose", "renew-certificate", "repair-machinekeys", "reset-machinekeys"])
def test_the_key_provider_is_told_by_the_folder_that_holds_the_file(name: str) -> None:
    """.NET 4.6+ returns RSACng for CSP keys too (dotnet/corefx#3502): the type alone would send a CSP key's file
    to Crypto\\Keys. Both folders are looked in, MachineKeys first."""
    body = psast.text(_function(name, "Resolve-KeyFile"))
    looked = body.index("Test-Path -LiteralPath $inMachineKeys")
    assert looked < body.index("Test-Path -LiteralPath $inKeys")
    assert "$result.Provider = 'csp'" in body[looked:]


@pytest.mark.parametrize("name", ["diagnose", "reset-machinekeys"])
def test_other_keys_are_counted_by_file_not_by_certificate(name: str) -> None:
    """Key containers without a certificate (iisConfigurationKey, NetFrameworkConfigurationKey) count too; the
    CRP transport key is told by its issuer, not by a FriendlyName anyone can set."""
    body = psast.text(_function(name, "Get-OtherKeys"))
    assert "Get-ChildItem -LiteralPath $MachineKeysPath -File -Force" in body
    assert "SilentlyContinue" not in body, "an unreadable folder must not count as empty"
    assert "[string]$Certificate.Issuer -like '*DC=Windows Azure CRP Certificate Generator*'" in psast.text(
        _function(name, "Test-CrpCertificate")
    )


def test_the_listener_without_a_wmi_instance_is_unknown_not_certificateless() -> None:
    body = psast.text(_function("diagnose", "Get-ListenerFacts"))
    missing = body.index("if ($null -eq $setting) {")
    assert body.index("throw", missing) < body.index("return $null", missing)
    for name in ("renew-certificate", "repair-machinekeys", "reset-machinekeys"):
        thumbprint = psast.text(_function(name, "Get-ListenerThumbprint"))
        assert "if ($null -eq $setting) {\n        throw" in thumbprint, name


@pytest.mark.parametrize("name", ["diagnose", "enable-firewall-rule"])
def test_firewall_port_ranges_count_as_allow_paths(name: str) -> None:
    body = psast.text(_function(name, "Test-PortCovers"))
    assert "'^(\\d+)-(\\d+)$'" in body and "'Any'" in body
    assert "Test-PortCovers -Ports $ports" in script_text(name)
    assert "$ports -notcontains" not in script_text(name)


@pytest.mark.parametrize("name", ["diagnose", "renew-certificate", "repair-machinekeys"])
def test_every_token_group_is_judged(name: str) -> None:
    """BUILTIN\\Users, LOCAL and NT SERVICE\\TermService are in the tokens a deny entry can hit."""
    source = script_text(name)
    for sid in ("S-1-5-32-545", "S-1-2-0", "S-1-5-80-446051430-1559341753-4161941529-1950928533-810483104"):
        assert f"'{sid}'" in source.split("$TokenSids = @{", 1)[1].split("}", 1)[0], sid
    assert "$denies.Count -lt" not in psast.text(_function(name, "Get-KeyAccess")), "every deny entry is removed"


@pytest.mark.parametrize("name", ["diagnose", "renew-certificate"])
def test_only_a_session_that_is_gone_stops_counting(name: str) -> None:
    """A CIM time-out is no ended session: it makes the count unknown."""
    body = psast.text(_function(name, "Get-RdpSessionCount"))
    assert "catch [Microsoft.Management.Infrastructure.CimException]" in body
    assert "-ne 'NotFound'" in body and "throw" in body


def test_a_repair_that_does_not_make_the_key_readable_asks_for_no_reboot() -> None:
    for function in ("Invoke-KeyRepair", "Invoke-FolderRepair"):
        body = psast.text(_function("repair-machinekeys", function))
        assert "$Summary.reboot_required = $true" not in body, function
        assert "$Summary.reboot_required = $findings.ok_after -eq $true" in body, function


def test_a_service_left_in_stop_pending_is_waited_for_before_it_is_started() -> None:
    body = psast.text(_function("renew-certificate", "Restore-Services"))
    assert body.index("WaitForStatus('Stopped', $timeout)") < body.index("$controller.Start()")
    assert body.count("$Summary.reboot_required = $true") == 2


def test_the_renewal_sets_the_key_aside_only_after_its_own_checks() -> None:
    source = script_text("renew-certificate")
    main = source[source.index("$stopped = New-Object") :]
    assert main.index("Get-Refusal -Named") < main.index("Get-SetAsideRefusal") < main.index("Invoke-SetAside")
    assert "Invoke-SetAside -Summary $summary" in main.split("else {")[-1]


def test_a_re_pin_checks_server_authentication_and_subject() -> None:
    body = psast.text(_function("renew-certificate", "Get-RepinRefusal"))
    assert "'1.3.6.1.5.5.7.3.1'" in body and "$candidate.Subject -ne $current.Certificate.Subject" in body


def test_the_store_reset_re_checks_its_facts_and_builds_a_missing_folder() -> None:
    refusal = psast.text(_function("reset-machinekeys", "Get-ResetRefusal"))
    for check in (
        "'domain-controller'",
        "'ad-cs'",
        "SSLCertificateSHA1HashType -ne 1",
        "Test-ListenerKeyWorks",
        "Get-RdpSessionCount",
        "$AllowSessions -ne 'true'",
        "$Force -ne 'true'",
    ):
        assert check in refusal, check
    source = script_text("reset-machinekeys")
    assert "elseif (-not (Test-Path -LiteralPath $MachineKeysPath)) {" in source
    assert source.index("Copy-CrpKey -Summary") < source.index("Invoke-Swap -Summary")


def test_the_firewall_repair_reports_no_change_for_a_rule_already_enabled() -> None:
    source = script_text("enable-firewall-rule")
    assert source.index("elseif ($state.Enabled) {") < source.index("$summary.changed = $true")


def test_the_port_is_read_where_the_listener_reads_it_and_clipping_keeps_null() -> None:
    assert "-Name 'PortNumber' -Default 3389 -LocalOnly" in script_text("diagnose")
    for name in SCRIPTS:
        if "function Format-Clip {" in script_text(name):
            assert "param([object]$Text, [int]$Length)" in psast.text(_function(name, "Format-Clip")), name
