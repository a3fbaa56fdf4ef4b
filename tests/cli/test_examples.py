"""The examples a new operator starts from are real: every alert is understood, every runbook body accepted."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from remediate.cli import main
from remediate.intake.requests import parse_runbook

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("payload", sorted((EXAMPLES / "alerts").glob("*.json")), ids=lambda p: p.stem)
def test_each_example_alert_is_understood(payload: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["alert", str(payload), "--offline", "--json"])
    answer = json.loads(capsys.readouterr().out)
    assert code == 0, answer
    assert answer["alertId"] and (answer["vmIds"] or answer["unresolved"]), answer  # a VM, or a Computer to resolve


@pytest.mark.parametrize("body", sorted((EXAMPLES / "runbook").glob("*.json")), ids=lambda p: p.stem)
def test_each_runbook_example_is_a_valid_request(body: Path) -> None:
    parsed = parse_runbook(body.read_bytes())
    assert parsed.reason


def test_the_http_file_points_at_files_that_exist() -> None:
    text = (EXAMPLES / "remediate.http").read_text()
    routes = re.findall(r"^(POST|GET) https://\{\{app\}\}/api/(\S+)", text, flags=re.MULTILINE)
    assert {route.split("/")[0] for _, route in routes} == {"remediations", "alerts"}
    for included in re.findall(r"^< (\S+)", text, flags=re.MULTILINE):
        assert (EXAMPLES / included).is_file(), included
