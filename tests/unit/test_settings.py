"""Settings: parsing, clear errors naming the variable, the emulator guard, and the README table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from remediate.model import ConfigurationError
from remediate.settings import SPECS, Settings, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_parse_and_cover_every_field() -> None:
    settings = Settings.from_env({})
    assert {f.name for f in dataclasses.fields(Settings)} == {spec.attr for spec in SPECS}
    assert settings.scopes == () and settings.sweep_mode == "report" and not settings.emulator


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RDPR_MAX_ATTEMPTS": "0"}, "RDPR_MAX_ATTEMPTS"),
        ({"RDPR_DRY_RUN": "perhaps"}, "RDPR_DRY_RUN"),
        ({"RDPR_SCOPES": "/subscriptions/x/virtualMachines/y"}, "RDPR_SCOPES"),
        ({"RDPR_SWEEP_MODE": "fix-everything"}, "RDPR_SWEEP_MODE"),
        ({"RDPR_ARM_URL": "http://management.azure.com"}, "RDPR_ARM_URL"),
        ({"RDPR_SWEEP_MAX_PERCENT": "150"}, "RDPR_SWEEP_MAX_PERCENT"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        Settings.from_env(env)


def test_scopes_are_normalised() -> None:
    abc, de = "ABC00000-0000-4000-8000-000000000001", "de000000-0000-4000-8000-000000000002"
    settings = Settings.from_env({"RDPR_SCOPES": f" /Subscriptions/{abc}/resourceGroups/RG1/ , /subscriptions/{de} "})
    assert settings.scopes == (f"/subscriptions/{abc.lower()}/resourcegroups/rg1", f"/subscriptions/{de}")


@pytest.mark.parametrize(
    "scope",
    [
        "/subscriptions/not-a-guid",
        "/subscription\u017fs/de000000-0000-4000-8000-000000000002".encode().decode("unicode_escape"),
        "/subscriptions/de000000-0000-4000-8000-000000000002/resourceGroup\u017f/rg".encode().decode("unicode_escape"),
        "/subscriptions/de000000-0000-4000-8000-000000000002/resourceGroups/rg.",
    ],
)
def test_a_scope_that_is_not_an_azure_id_is_refused(scope: str) -> None:
    with pytest.raises(ConfigurationError, match="RDPR_SCOPES"):
        Settings.from_env({"RDPR_SCOPES": scope})


def test_emulator_mode_refuses_anything_but_loopback() -> None:
    with pytest.raises(ConfigurationError, match="loopback"):
        Settings.from_env({"RDPR_EMULATOR": "true", "RDPR_LOGS_URL": "https://127.0.0.1:1/v1"})
    with pytest.raises(ConfigurationError, match="RDPR_EMULATOR is false"):
        Settings.from_env({"RDPR_EMULATOR_CA_CERT": "ca.pem"})
    with pytest.raises(ConfigurationError, match="loopback"):
        Settings.from_env(
            {
                "RDPR_EMULATOR": "true",
                "RDPR_ARM_URL": "https://127.0.0.1.attacker.example",
                "RDPR_LOGS_URL": "https://localhost/v1",
            }
        )
    ok = Settings.from_env(
        {
            "RDPR_EMULATOR": "true",
            "RDPR_ARM_URL": "https://127.0.0.1:8443",
            "RDPR_LOGS_URL": "https://localhost:8443/v1",
        }
    )
    assert ok.emulator


def test_readme_configuration_table_is_current() -> None:
    assert markdown_table() in README.read_text(encoding="utf-8"), (
        "README.md's configuration table is out of date: paste the output of `python -m remediate.settings`"
    )


@pytest.mark.parametrize(
    ("window", "hours"),
    [("RDPR_SWEEP_WINDOW_HOURS", "72"), ("RDPR_CIRCUIT_WINDOW_HOURS", "48"), ("RDPR_ATTEMPT_WINDOW_HOURS", "25")],
)
def test_retention_must_cover_every_window_that_counts_audit_records(window: str, hours: str) -> None:
    with pytest.raises(ConfigurationError, match=f"RDPR_AUDIT_RETENTION_DAYS=1 keeps less than {window}"):
        Settings.from_env({"RDPR_AUDIT_RETENTION_DAYS": "1", window: hours})
    Settings.from_env({"RDPR_AUDIT_RETENTION_DAYS": "3", window: hours})  # 72 h covers it
