"""`azd up` wiring: azure.yaml, the parameters file, and azure-functions-doctor on the deployable project."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.infra.bicep import INFRA, REPO, load

# Not part of what the doctor should judge: environments, caches, and installed JavaScript.
NOT_COPIED = (
    ".git",
    ".venv",
    ".venv-infra",
    "node_modules",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "__pycache__",
    ".state",
    ".azure",
)


def _azure_yaml() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "azure.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _parameters_file() -> dict[str, Any]:
    data = json.loads((INFRA / "main.parameters.json").read_text())
    parameters = data["parameters"]
    assert isinstance(parameters, dict)
    return parameters


def test_azure_yaml_deploys_the_repository_as_a_python_function_app() -> None:
    data = _azure_yaml()
    assert data["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    assert (REPO / data["infra"]["path"] / f"{data['infra']['module']}.bicep").is_file()
    (name, service) = next(iter(data["services"].items()))
    assert len(data["services"]) == 1
    assert service == {"project": ".", "language": "python", "host": "function"}
    assert (REPO / service["project"] / "function_app.py").is_file()
    # azd finds the app to deploy to by this tag.
    (site,) = load("modules/function.bicep").resources("Microsoft.Web/sites")
    assert f"'azd-service-name': '{name}'" in site.body["tags"].text


def test_the_deployed_package_leaves_out_environments_tests_and_infrastructure() -> None:
    # azd packages the service's project folder minus what .funcignore names.
    patterns = [
        line.strip().rstrip("/")
        for line in (REPO / ".funcignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for name in (".venv", ".venv-infra", "node_modules", "tests", "sim", "bench", "infra", ".git"):
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
    for name in ("function_app.py", "host.json", "requirements.txt", "remediate"):
        assert not any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


def test_every_value_in_the_parameters_file_is_a_parameter_of_main() -> None:
    assert set(_parameters_file()) <= set(load("main.bicep").parameters)


def test_every_required_parameter_of_main_comes_from_the_azd_environment() -> None:
    required = {name for name, parameter in load("main.bicep").parameters.items() if not parameter.has_default}
    given = _parameters_file()
    assert required <= set(given)
    for name in required:
        # ${NAME} with no `=default`: azd asks for it, or the deployment fails on the parameter's rules.
        assert re.fullmatch(r"\$\{[A-Z_]+\}", given[name]["value"]), name


def test_parameter_file_defaults_match_the_bicep_defaults() -> None:
    parameters = load("main.bicep").parameters
    for name, entry in _parameters_file().items():
        match = re.fullmatch(r"\$\{[A-Z_]+=(.*)\}", entry["value"])
        if match is None or not parameters[name].has_default:
            continue
        default = parameters[name].default
        expected = ("true" if default else "false") if isinstance(default, bool) else str(default)
        assert match.group(1) == expected, name


def test_azure_functions_doctor_passes_on_the_deployable_project(tmp_path: Path) -> None:
    # The doctor walks every file under its path; a copy without environments and caches keeps it to seconds.
    project = tmp_path / "project"
    shutil.copytree(REPO, project, ignore=shutil.ignore_patterns(*NOT_COPIED))
    report_path = tmp_path / "doctor.json"
    doctor = Path(sys.executable).with_name("azure-functions-doctor")
    completed = subprocess.run(
        [str(doctor), "doctor", "--path", str(project), "--format", "json", "--output", str(report_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(report_path.read_text())
    items = {item["rule_id"]: item for section in report["results"] for item in section["items"]}
    failed = {rule: item["value"] for rule, item in items.items() if item["status"] == "fail"}
    assert completed.returncode == 0, failed or completed.stderr[-2000:]
    assert not failed
    # The doctor read our infrastructure as a Flex Consumption app, and found no setting Flex ignores.
    assert items["check_flex_deprecated_settings"]["status"] == "pass"
