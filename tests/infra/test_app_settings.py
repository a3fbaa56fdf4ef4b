"""Every setting the code reads is decided by the infrastructure: set in the Function App's app settings, or
deliberately left to its documented default (tests/infra/settings_left_to_default.py) with the reason."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import pytest

from remediate.engine.slots import control_table
from remediate.fleet import FleetStore
from remediate.ledger import Ledger
from remediate.settings import SPECS, Settings
from tests.infra.bicep import INFRA, REPO, Expression, get, load
from tests.infra.settings_left_to_default import LEFT_TO_DEFAULT, NEVER_SET

if TYPE_CHECKING:
    from azure.data.tables import TableServiceClient

SPEC_NAMES = {spec.env for spec in SPECS}
# Settings of the platform rather than the product (host storage, telemetry).
PLATFORM_SETTINGS = {
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY",
}


def _app_settings() -> dict[str, Any]:
    (site,) = load("modules/function.bicep").resources("Microsoft.Web/sites")
    entries = get(site.body, "properties", "siteConfig", "appSettings")
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), "an app setting is listed twice"
    return {entry["name"]: entry["value"] for entry in entries}


def test_every_setting_is_set_in_bicep_or_deliberately_left_to_its_default() -> None:
    undecided = SPEC_NAMES - set(_app_settings()) - set(LEFT_TO_DEFAULT) - set(NEVER_SET)
    assert not undecided, f"set these in infra/modules/function.bicep or list them with a reason: {undecided}"


def test_the_left_to_default_list_names_only_real_settings_that_bicep_does_not_set() -> None:
    assert set(LEFT_TO_DEFAULT) <= SPEC_NAMES
    assert not set(LEFT_TO_DEFAULT) & set(_app_settings())
    assert all(len(reason) > 20 for reason in LEFT_TO_DEFAULT.values())


def test_every_app_setting_is_a_product_setting_or_a_known_platform_one() -> None:
    # A typo (RDPR_SWEEP_MOD) would silently leave the real setting at its default.
    assert set(_app_settings()) <= SPEC_NAMES | PLATFORM_SETTINGS


def test_emulator_settings_are_never_set_anywhere_in_the_infrastructure() -> None:
    assert set(NEVER_SET) == {name for name in SPEC_NAMES if name.startswith("RDPR_EMULATOR")}
    assert not any(name.startswith("RDPR_EMULATOR") for name in _app_settings())
    for path in [*INFRA.rglob("*"), REPO / "azure.yaml"]:
        if path.is_file():
            assert "RDPR_EMULATOR" not in path.read_text(), path


def test_host_storage_and_telemetry_use_the_managed_identity() -> None:
    settings = _app_settings()
    assert settings["AzureWebJobsStorage__accountName"] == Expression("storageAccountName")
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == Expression("identityClientId")
    assert settings["AZURE_CLIENT_ID"] == Expression("identityClientId")
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"].text == (
        "'Authorization=AAD;ClientId=${identityClientId}'"
    )
    # No secret-bearing connection string for the host or the product.
    assert "AzureWebJobsStorage" not in settings
    assert "RDPR_STORAGE_CONNECTION" not in settings


def test_the_function_gets_the_values_main_bicep_computes() -> None:
    (function_app,) = [module for module in load("main.bicep").modules() if module.symbol == "functionApp"]
    params = function_app.body["params"]
    assert params["identityClientId"] == Expression("identity.outputs.clientId")
    assert params["targetScopes"] == Expression("join(scopeList, ',')")
    assert params["logWorkspaceCustomerId"] == Expression("workspaceAccess.outputs.customerId")
    assert params["queueName"] == Settings.from_env({}).queue_name
    assert params["tablePrefix"] == Settings.from_env({}).table_prefix


class _RecordingTableService:
    """Stands in for TableServiceClient: records which tables the ledger opens."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def get_table_client(self, name: str) -> SimpleNamespace:
        self.names.append(name)
        return SimpleNamespace(table_name=name)


def test_the_queues_and_tables_created_are_the_ones_the_product_uses() -> None:
    defaults = Settings.from_env({})
    layout = load("main.bicep").variables["storageLayout"]
    assert layout["queues"] == [defaults.queue_name, f"{defaults.queue_name}-poison"]
    service = _RecordingTableService()
    Ledger(cast("TableServiceClient", service), defaults.table_prefix)
    FleetStore(cast("TableServiceClient", service), defaults.table_prefix)
    control_table(cast("TableServiceClient", service), defaults.table_prefix)
    assert sorted(layout["tables"]) == sorted(service.names)
    (storage,) = [module for module in load("main.bicep").modules() if module.symbol == "storage"]
    assert storage.body["params"]["queueNames"] == layout["queues"]
    assert storage.body["params"]["tableNames"] == layout["tables"]


# main.bicep parameter -> the setting it feeds; their defaults must agree with the settings' own defaults.
PARAMETER_SETTINGS = {
    "sweepMode": "RDPR_SWEEP_MODE",
    "sweepSchedule": "RDPR_SWEEP_SCHEDULE",
    "requireOptIn": "RDPR_REQUIRE_OPT_IN",
    "optInTag": "RDPR_OPT_IN_TAG",
    "optOutTag": "RDPR_OPT_OUT_TAG",
}


@pytest.mark.parametrize(("parameter", "setting"), PARAMETER_SETTINGS.items())
def test_parameter_defaults_agree_with_the_settings_defaults(parameter: str, setting: str) -> None:
    spec = next(spec for spec in SPECS if spec.env == setting)
    default = load("main.bicep").parameters[parameter].default
    text = ("true" if default else "false") if isinstance(default, bool) else str(default)
    assert spec.parse(text) == spec.parse(spec.default)


def test_the_dequeue_count_left_to_default_matches_the_host_configuration() -> None:
    host = json.loads((REPO / "host.json").read_text())
    expected = get(host, "extensions", "queues", "maxDequeueCount")
    assert Settings.from_env({}).max_dequeue_count == expected


def test_a_fresh_deployment_only_observes_until_told_otherwise() -> None:
    parameters = load("main.bicep").parameters
    assert parameters["sweepMode"].default == "report"
    assert parameters["dryRun"].default is True
