"""The Bicep files parse, and main.bicep wires its modules the way the Bicep compiler would accept.

No Bicep CLI runs here, so the checks it would make first are made from the syntax tree: every file parses
with zero ERROR/MISSING nodes, every module exists, is deployed at a scope its `targetScope` allows, and gets
exactly the parameters it declares (none unknown, none required missing).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.infra.bicep import INFRA, Declaration, Expression, bicep_files, load, syntax_problems

FILES = bicep_files()


def test_there_is_a_subscription_scope_entry_point_and_modules() -> None:
    assert INFRA / "main.bicep" in FILES
    assert load("main.bicep").target_scope == "subscription"
    assert len(FILES) > 1


@pytest.mark.parametrize("path", FILES, ids=lambda path: str(path.relative_to(INFRA)))
def test_every_bicep_file_parses_without_error_or_missing_nodes(path: Path) -> None:
    assert syntax_problems(path.read_bytes()) == []


BROKEN = {
    "unclosed resource body": "resource sa 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: 'x'\n",
    "parameter without its default": "param p string =\n",
    "unterminated string": "var x = 'unterminated\n",
    "double comma in an object": "resource r 'A/b@1' = {\n  properties: {\n    a: 1,,\n  }\n}\n",
}


@pytest.mark.parametrize("snippet", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_file_is_reported_with_its_position(snippet: str) -> None:
    problems = syntax_problems(snippet.encode())
    assert problems
    assert all(problem.split(":")[0].isdigit() for problem in problems)


def test_every_module_file_is_used_by_main() -> None:
    used = {INFRA / module.target for module in load("main.bicep").modules()}
    assert used == set(FILES) - {INFRA / "main.bicep"}


@pytest.mark.parametrize("module", load("main.bicep").modules(), ids=lambda module: module.symbol)
def test_module_is_deployed_at_a_scope_its_target_scope_allows(module: Declaration) -> None:
    scope = module.body.get("scope")
    scope_text = scope.text if isinstance(scope, Expression) else ""
    if load(module.target).target_scope == "subscription":
        assert scope is None or scope_text.startswith("subscription(")
    else:
        # `group` is the resource group main.bicep creates.
        assert scope_text == "group" or scope_text.startswith("resourceGroup(")


@pytest.mark.parametrize("module", load("main.bicep").modules(), ids=lambda module: module.symbol)
def test_module_gets_exactly_the_parameters_it_declares(module: Declaration) -> None:
    declared = load(module.target).parameters
    passed = module.body.get("params", {})
    assert set(passed) <= set(declared), f"unknown parameters: {set(passed) - set(declared)}"
    required = {name for name, parameter in declared.items() if not parameter.has_default}
    assert required <= set(passed), f"required parameters not passed: {required - set(passed)}"
