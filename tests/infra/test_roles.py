"""Least privilege: the custom roles hold exactly what the code needs, only the Function's identity gets
roles, and no broad built-in role appears anywhere in the infrastructure."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from remediate.azure import permissions
from tests.infra import rbac_audit
from tests.infra.bicep import INFRA, REPO, Declaration, Expression, bicep_files, get, load

CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
USER_ACCESS_ADMINISTRATOR = "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9"

# The only built-in roles the deployment assigns: data access on its own storage account, and publishing
# telemetry to its own Application Insights component.
BUILT_IN_ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
}

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
# Resource Graph tables; any other table a shipped .kql query reads comes from Log Analytics.
RESOURCE_GRAPH_TABLES = {"resources", "resourcecontainers"}


def _role(role_name_start: str) -> dict[str, Any]:
    for role in load("modules/roles.bicep").resources("Microsoft.Authorization/roleDefinitions"):
        name = get(role.body, "properties", "roleName")
        text = name.text if isinstance(name, Expression) else str(name)
        if text.lstrip("'").startswith(role_name_start):
            permissions_block: list[dict[str, Any]] = get(role.body, "properties", "permissions")
            assert len(permissions_block) == 1
            return permissions_block[0]
    raise AssertionError(f"no role definition named {role_name_start!r}")


def _role_assignments() -> list[tuple[Path, Declaration]]:
    return [
        (path, assignment)
        for path in bicep_files()
        for assignment in load(str(path.relative_to(INFRA))).resources("Microsoft.Authorization/roleAssignments")
    ]


def test_operator_role_holds_exactly_the_actions_the_code_performs() -> None:
    actions = _role("RDP Remediation Operator")["actions"]
    assert sorted(actions) == list(permissions.ROLE_ACTIONS)
    assert len(actions) == len(set(actions))


def test_log_reader_role_holds_exactly_the_workspace_query_actions() -> None:
    actions = _role("RDP Remediation Log Reader")["actions"]
    assert sorted(actions) == list(permissions.WORKSPACE_ROLE_ACTIONS)


def test_activity_log_reader_role_holds_exactly_the_activity_log_read() -> None:
    actions = _role("RDP Remediation Activity Log Reader")["actions"]
    assert (
        sorted(actions) == list(permissions.SUBSCRIPTION_ROLE_ACTIONS) == ["Microsoft.Insights/eventtypes/values/read"]
    )
    # Not in the operator role, which may be assigned on a resource group only.
    assert "Microsoft.Insights/eventtypes/values/read" not in _role("RDP Remediation Operator")["actions"]


def test_activity_log_reader_role_is_assignable_at_and_assigned_on_every_target_subscription() -> None:
    main = load("main.bicep")
    modules = {module.symbol: module for module in main.modules()}
    assert modules["roles"].body["params"]["targetSubscriptions"] == Expression("subscriptionList")
    assert get(_role_definition("RDP Remediation Activity Log Reader"), "properties", "assignableScopes") == (
        Expression("targetSubscriptions")
    )
    assignments = modules["activityLogAssignments"]
    assert assignments.loop_over == "subscriptionList"
    assert assignments.condition is None  # every target's subscription, resource-group targets included
    assert assignments.body["params"]["roleDefinitionId"] == Expression("roles.outputs.activityLogReaderRoleId")
    assert load(assignments.target).target_scope == "subscription"
    # The subscription list is derived from every target scope (a group's subscription too).
    derived, each = main.variables["subscriptionList"], main.variables["subscriptionEach"]
    assert isinstance(derived, Expression) and derived.text == "union(subscriptionEach, [])"  # each once
    assert isinstance(each, Expression) and "in scopeList" in each.text and "/subscriptions/" in each.text


@pytest.mark.parametrize(
    "role_name", ["RDP Remediation Operator", "RDP Remediation Log Reader", "RDP Remediation Activity Log Reader"]
)
def test_custom_roles_have_no_wildcards_and_no_data_actions(role_name: str) -> None:
    block = _role(role_name)
    assert not any("*" in action for action in block["actions"])
    assert block.get("dataActions", []) == []


def test_custom_role_names_are_per_environment() -> None:
    # Role names are unique per tenant: a second environment must not collide with the first.
    for role in load("modules/roles.bicep").resources("Microsoft.Authorization/roleDefinitions"):
        assert "environmentName" in get(role.body, "properties", "roleName").text
        assert "environmentName" in get(role.body, "name").text


def test_product_log_queries_read_only_tables_the_log_reader_role_grants() -> None:
    granted = {
        action.split("/")[-2].lower()
        for action in permissions.WORKSPACE_ROLE_ACTIONS
        if action.startswith("Microsoft.OperationalInsights/workspaces/query/") and action.count("/") == 4
    }
    tables = set()
    for query in (REPO / "remediate").rglob("*.kql"):
        lines = [line.strip() for line in query.read_text().splitlines()]
        first = next(line for line in lines if line and not line.startswith("//"))
        tables.add(re.split(r"\W", first, maxsplit=1)[0].lower())
    log_tables = tables - RESOURCE_GRAPH_TABLES
    assert log_tables, "expected at least one Log Analytics query among the shipped .kql files"
    assert log_tables <= granted


def test_no_contributor_owner_or_access_administrator_anywhere() -> None:
    texts = [path.read_text().lower() for path in INFRA.rglob("*") if path.is_file()]
    texts.append((REPO / "azure.yaml").read_text().lower())
    for forbidden in (CONTRIBUTOR, OWNER, USER_ACCESS_ADMINISTRATOR):
        assert not any(forbidden in text for text in texts), forbidden


def test_the_only_built_in_roles_are_the_expected_data_and_telemetry_roles() -> None:
    found = {match.lower() for path in bicep_files() for match in GUID.findall(path.read_text())}
    assert found == set(BUILT_IN_ROLES)


def test_every_role_assignment_goes_to_the_functions_identity() -> None:
    assignments = _role_assignments()
    assert assignments
    for path, assignment in assignments:
        properties = get(assignment.body, "properties")
        assert properties["principalId"] == Expression("principalId"), path.name
        assert properties["principalType"] == "ServicePrincipal", path.name
    main = load("main.bicep")
    for module in main.modules():
        principal = module.body.get("params", {}).get("principalId")
        assert principal in (None, Expression("identity.outputs.principalId")), module.symbol


def test_storage_and_telemetry_roles_are_scoped_to_their_own_resource() -> None:
    (storage_roles,) = load("modules/storage.bicep").resources("Microsoft.Authorization/roleAssignments")
    assert storage_roles.body["scope"] == Expression("account")
    (publisher,) = load("modules/monitoring.bicep").resources("Microsoft.Authorization/roleAssignments")
    assert publisher.body["scope"] == Expression("appInsights")


def test_operator_role_is_assignable_at_and_assigned_at_every_target_scope() -> None:
    main = load("main.bicep")
    modules = {module.symbol: module for module in main.modules()}
    assert modules["roles"].body["params"]["targetScopes"] == Expression("scopeList")
    assert get(_role_definition("RDP Remediation Operator"), "properties", "assignableScopes") == Expression(
        "targetScopes"
    )
    by_subscription = modules["subscriptionAssignments"]
    by_group = modules["groupAssignments"]
    assert by_subscription.loop_over == by_group.loop_over == "scopeList"
    # Each scope goes to exactly one of the two: the conditions are each other's negation.
    assert by_subscription.condition == "!" + str(by_group.condition)
    assert load(by_subscription.target).target_scope == "subscription"
    assert load(by_group.target).target_scope == "resourceGroup"


def _role_definition(role_name_start: str) -> dict[str, Any]:
    for role in load("modules/roles.bicep").resources("Microsoft.Authorization/roleDefinitions"):
        if get(role.body, "properties", "roleName").text.lstrip("'").startswith(role_name_start):
            return role.body
    raise AssertionError(role_name_start)


# --- remediate.azure.permissions -------------------------------------------------------------------------


def test_role_actions_are_the_sorted_unique_operation_actions() -> None:
    assert list(permissions.ROLE_ACTIONS) == sorted(set(permissions.OPERATION_ACTIONS.values()))


def test_actions_for_maps_resource_manager_and_log_operations() -> None:
    assert permissions.actions_for(["getVm", "listVms", "restart"]) == {
        "Microsoft.Compute/virtualMachines/read",
        "Microsoft.Compute/virtualMachines/restart/action",
    }
    assert permissions.actions_for(["logsQuery"]) == set(permissions.WORKSPACE_ROLE_ACTIONS)
    assert permissions.actions_for(["activityLog"]) == {"Microsoft.Insights/eventtypes/values/read"}
    assert permissions.actions_for([]) == frozenset()


def test_actions_for_refuses_an_operation_without_a_permission_on_record() -> None:
    with pytest.raises(permissions.UnknownOperation, match="deleteVm"):
        permissions.actions_for(["getVm", "deleteVm"])


# --- the request-log audit (tests/infra/rbac_audit.py) -------------------------------------------------------

ALL_OPERATIONS = (
    set(permissions.OPERATION_ACTIONS)
    | set(permissions.WORKSPACE_OPERATION_ACTIONS)
    | set(permissions.SUBSCRIPTION_OPERATION_ACTIONS)
)


def test_the_audit_accepts_exactly_the_operations_on_record() -> None:
    assert rbac_audit.audit(ALL_OPERATIONS | {rbac_audit.UNROUTED}, full_run=True) == []


def test_the_audit_refuses_an_operation_the_role_would_not_allow() -> None:
    problems = rbac_audit.audit({"getVm", "deleteVm"}, full_run=False)
    assert len(problems) == 1
    assert "'deleteVm'" in problems[0]


def test_a_full_run_refuses_a_permission_no_test_needed() -> None:
    problems = rbac_audit.audit(ALL_OPERATIONS - {"restart"}, full_run=True)
    assert len(problems) == 1
    assert "Microsoft.Compute/virtualMachines/restart/action" in problems[0]


def test_a_partial_run_does_not_ask_for_every_operation() -> None:
    assert rbac_audit.audit({"getVm"}, full_run=False) == []
