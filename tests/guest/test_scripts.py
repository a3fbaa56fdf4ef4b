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
from tree_sitter import Tree

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
    "no version": ("$ScriptVersion = '1.0.0'", "$ScriptVersion = 'latest'"),
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
        (p.name, p.default, p.choices, p.int_range, "int" if p.int_range else "string")
        for p in sim_guest.PARAMETERS[name]
    }
    assert {(p.name, p.default, p.validate_set, p.validate_range, p.type) for p in declared} == simulated


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


@pytest.mark.parametrize("name", SCRIPTS)
def test_assigned_summary_members_are_contract_fields(name: str) -> None:
    names: set[str] = set()
    for obj in _object_schemas(schema()):
        names |= set(obj["properties"])
    assigned = psast.assigned_members(tree_of(name))
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
