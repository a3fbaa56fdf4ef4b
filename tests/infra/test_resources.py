"""What a security reviewer checks in the templates: hosting, identity, transport, keys, and alert wiring."""

from __future__ import annotations

import ast
import re
import tomllib
from typing import Any

from tests.infra.bicep import REPO, Declaration, Expression, get, load


def _one(relative: str, resource_type: str) -> Declaration:
    (resource,) = load(relative).resources(resource_type)
    return resource


def _site() -> dict[str, Any]:
    return _one("modules/function.bicep", "Microsoft.Web/sites").body


# --- Function App -------------------------------------------------------------------------------------------


def test_the_function_runs_on_a_linux_flex_consumption_plan() -> None:
    plan = _one("modules/function.bicep", "Microsoft.Web/serverfarms").body
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True  # Linux
    assert "linux" in _site()["kind"]
    assert get(_site(), "properties", "serverFarmId") == Expression("plan.id")


def test_the_runtime_is_the_python_the_project_targets() -> None:
    runtime = get(_site(), "properties", "functionAppConfig", "runtime")
    assert runtime == {"name": "python", "version": Expression("pythonVersion")}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    minimum = re.fullmatch(r">=\s*(\d+\.\d+)", project["requires-python"])
    assert minimum is not None
    assert load("modules/function.bicep").parameters["pythonVersion"].default == minimum.group(1)


def test_scale_settings_are_parameters_with_flex_limits() -> None:
    scale = get(_site(), "properties", "functionAppConfig", "scaleAndConcurrency")
    assert scale == {
        "instanceMemoryMB": Expression("instanceMemoryMB"),
        "maximumInstanceCount": Expression("maximumInstanceCount"),
    }
    main = load("main.bicep")
    assert main.parameters["instanceMemoryMB"].default in (512, 2048, 4096)
    assert 1 <= main.parameters["maximumInstanceCount"].default <= 1000


def test_the_function_uses_only_its_user_assigned_identity() -> None:
    identity = _site()["identity"]
    assert identity["type"] == "UserAssigned"
    assert list(identity["userAssignedIdentities"]) == ["'${identityId}'"]


def test_the_deployment_package_is_pulled_with_the_identity() -> None:
    storage = get(_site(), "properties", "functionAppConfig", "deployment", "storage")
    assert storage["type"] == "blobContainer"
    assert storage["authentication"] == {
        "type": "UserAssignedIdentity",
        "userAssignedIdentityResourceId": Expression("identityId"),
    }


def test_the_function_is_https_only_with_tls_1_2_and_no_ftp() -> None:
    properties = _site()["properties"]
    assert properties["httpsOnly"] is True
    assert properties["siteConfig"]["minTlsVersion"] == "1.2"
    assert properties["siteConfig"]["ftpsState"] == "Disabled"


def test_ftp_and_scm_basic_authentication_are_off() -> None:
    policies = load("modules/function.bicep").resources("Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert {policy.body["name"]: policy.body["properties"]["allow"] for policy in policies} == {
        "ftp": False,
        "scm": False,
    }
    assert all(policy.body["parent"] == Expression("site") for policy in policies)


def test_vnet_integration_is_optional_and_drives_the_sweep_probe() -> None:
    properties = _site()["properties"]
    assert properties["virtualNetworkSubnetId"] == Expression("empty(subnetId) ? null : subnetId")
    assert load("main.bicep").parameters["subnetId"].default == ""
    settings = {entry["name"]: entry["value"] for entry in properties["siteConfig"]["appSettings"]}
    assert settings["RDPR_SWEEP_PROBE"] == Expression("empty(subnetId) ? 'false' : 'true'")


def test_azd_finds_the_function_by_its_service_tag() -> None:
    tags = _site()["tags"]
    assert isinstance(tags, Expression)
    assert "'azd-service-name': 'remediate'" in tags.text


# --- Storage --------------------------------------------------------------------------------------------


def test_storage_refuses_shared_keys_public_blobs_and_old_tls() -> None:
    properties = _one("modules/storage.bicep", "Microsoft.Storage/storageAccounts").body["properties"]
    assert properties["allowSharedKeyAccess"] is False
    assert properties["defaultToOAuthAuthentication"] is True
    assert properties["allowBlobPublicAccess"] is False
    assert properties["minimumTlsVersion"] == "TLS1_2"
    assert properties["supportsHttpsTrafficOnly"] is True
    container = _one("modules/storage.bicep", "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert container.body["properties"]["publicAccess"] == "None"


# --- Monitoring -------------------------------------------------------------------------------------------


def test_telemetry_and_logs_refuse_key_authentication() -> None:
    components = _one("modules/monitoring.bicep", "Microsoft.Insights/components").body
    assert components["properties"]["DisableLocalAuth"] is True
    workspace = _one("modules/monitoring.bicep", "Microsoft.OperationalInsights/workspaces").body
    assert workspace["properties"]["features"]["disableLocalAuth"] is True


# --- Alerts -------------------------------------------------------------------------------------------------


def _function_routes() -> dict[str, str]:
    """Function name -> HTTP route, read from the decorators in function_app.py."""
    routes = {}
    for node in ast.walk(ast.parse((REPO / "function_app.py").read_text())):
        if not isinstance(node, ast.FunctionDef):
            continue
        name, route = node.name, None
        for decorator in node.decorator_list:
            if not isinstance(decorator, ast.Call) or not isinstance(decorator.func, ast.Attribute):
                continue
            if decorator.func.attr == "function_name" and decorator.args:
                name = ast.literal_eval(decorator.args[0])
            if decorator.func.attr == "route":
                route = next((ast.literal_eval(kw.value) for kw in decorator.keywords if kw.arg == "route"), None)
        if route is not None:
            routes[name] = route
    return routes


def test_the_action_group_calls_the_alerts_function_with_the_common_schema() -> None:
    group = _one("modules/alerts.bicep", "Microsoft.Insights/actionGroups").body
    (receiver,) = group["properties"]["azureFunctionReceivers"]
    assert receiver["useCommonAlertSchema"] is True
    assert receiver["functionAppResourceId"] == Expression("site.id")
    url = receiver["httpTriggerUrl"]
    assert isinstance(url, Expression)
    assert url.text.startswith("'https://${site.properties.defaultHostName}/api/")
    assert "?code=${listKeys(" in url.text
    route = re.search(r"/api/([\w/-]+)\?", url.text)
    assert route is not None
    assert _function_routes()[receiver["functionName"]] == route.group(1)


def test_the_log_alert_fires_per_vm_on_the_rdp_tls_failure_events() -> None:
    rule = _one("modules/alerts.bicep", "Microsoft.Insights/scheduledQueryRules").body
    assert rule["kind"] == "LogAlert"
    properties = rule["properties"]
    assert properties["scopes"] == [Expression("eventsWorkspaceId")]
    assert properties["actions"]["actionGroups"] == [Expression("actionGroup.id")]
    (criterion,) = properties["criteria"]["allOf"]
    assert criterion["dimensions"] == [{"name": "_ResourceId", "operator": "Include", "values": ["*"]}]
    query = criterion["query"]
    event_ids = {int(number) for number in re.findall(r"\b\d{4,5}\b", query)}
    assert {1057, 1058, 36870} <= event_ids
    assert query.startswith("Event\n")
    assert "_ResourceId" in query


def test_the_availability_alert_is_optional_and_one_per_target_scope() -> None:
    (alert,) = load("modules/alerts.bicep").resources("Microsoft.Insights/metricAlerts")
    assert alert.condition == "enableAvailabilityAlert"
    assert alert.loop_over == "availabilityScopes"
    (criterion,) = alert.body["properties"]["criteria"]["allOf"]
    assert criterion["metricName"] == "VmAvailabilityMetric"
    assert load("main.bicep").parameters["enableAvailabilityAlert"].default is False
