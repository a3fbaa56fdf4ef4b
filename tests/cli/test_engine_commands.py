"""`rdp-remediate run / status / history / sweep` against the emulator and Azurite, as an admin types them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from remediate.azure.clients import reset_clients
from remediate.cli import main
from remediate.settings import get_settings
from sim.server import Emulator

ID = (
    "/subscriptions/00000000-0000-4000-8000-000000000001/resourceGroups/rg-prod"
    "/providers/Microsoft.Compute/virtualMachines/"
)


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, product_env: dict[str, str]) -> Iterator[None]:
    for name, value in product_env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    reset_clients()
    yield
    get_settings.cache_clear()
    reset_clients()


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_run_remediates_and_status_and_history_read_it_back(cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, result = run_json(capsys, "run", "--vm", ID + "vm-expired-certificate")
    assert code == 0 and result["outcome"] == "remediated" and result["rebooted"] is True
    code, status = run_json(capsys, "status", str(result["requestId"]))
    assert code == 0 and status["outcome"] == "remediated"
    assert [step["name"] for step in status["steps"]][-2:] == ["verify-guest", "plan-1-after"]
    code, history = run_json(capsys, "history", "--vm", ID + "vm-expired-certificate")
    assert code == 0 and history["remediations"][0]["requestId"] == result["requestId"]


def test_run_prints_progress_and_a_verdict(cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--vm", ID + "vm-healthy"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out.splitlines()[-2].startswith("healthy: RDP works")
    assert "diagnose" in captured.err  # progress lines go to stderr


def test_run_exit_code_is_1_when_nothing_was_fixed(cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, result = run_json(capsys, "run", "--vm", ID + "vm-linux")
    assert code == 1 and result["outcome"] == "skipped"


def test_dry_run_touches_nothing(cli_env: None, emulator: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    code, result = run_json(capsys, "run", "--vm", ID + "vm-expired-certificate", "--dry-run")
    assert code == 0 and result["outcome"] == "planned"  # a plan was asked for, and made
    assert [e for e in emulator.log.entries() if e.method == "POST" and "virtualMachines" in e.path] == []


@pytest.mark.parametrize(
    "argv", [["run", "--vm", "vm01.contoso.com"], ["run"], ["run", "--vm", ID + "x", "--plan", "yolo"]]
)
def test_usage_errors_exit_2_without_a_traceback(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_status_of_an_unknown_request(cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "0" * 32]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no request" in err


def test_sweep_report_lists_what_needs_attention(cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = run_json(capsys, "sweep", "--mode", "report")
    assert code == 0 and report["enqueued"] == []
    actions = {f["vm"].rsplit("/", 1)[-1]: f["action"] for f in report["findings"]}
    assert actions["vm-expiring-soon"] == "renew"
    assert actions["vm-expired-certificate"] == "remediate" and actions["vm-firewall-closed"] == "remediate"
    assert "vm-healthy" not in actions and "vm-out-of-scope" not in actions and "vm-opted-out" not in actions
