"""The README's first command, end to end: every VM of the demo ends as its scenario says it should."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_demo_runs_and_every_vm_ends_as_expected(tmp_path: Path) -> None:
    report_path = tmp_path / "demo-report.json"
    finished = subprocess.run(
        [sys.executable, "-m", "sim.demo", "--time-scale", "0.01", "--report", str(report_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert len(report) == 26
    assert {e["scenario"]: e["outcome"] for e in report} == {e["scenario"]: e["expected"] for e in report}
    for entry in report:
        assert {"vm", "scenario", "outcome", "actions", "rebooted", "verification"} <= set(entry)
    by_scenario = {e["scenario"]: e for e in report}
    assert by_scenario["healthy"]["rebooted"] is False
    assert by_scenario["expiring-soon"]["rebooted"] is False and by_scenario["expiring-soon"]["trigger"] == "sweep"
    assert by_scenario["expired-certificate"]["trigger"] == "alert"
    # The ladder, least disruptive first: the one key container (set aside by the renewal), never the store
    # without forceKeyStore.
    assert by_scenario["keystore-corrupt"]["actions"] == ["renew-certificate"]
    assert "rerun with forceKeyStore" in by_scenario["keystore-corrupt"]["reason"]
    assert by_scenario["key-deny"]["actions"] == ["remove-key-deny"]
    assert by_scenario["custom-certificate"]["actions"] == ["repin-certificate"]
    for untouched in ("policy-certificate", "firewall-policy", "firewall-custom-allow", "cached-session", "wmi-hung"):
        assert by_scenario[untouched]["actions"] == [] and by_scenario[untouched]["rebooted"] is False, untouched
    assert "VM " in finished.stdout and "outcome" in finished.stdout  # the table was printed
    table = finished.stdout.split("\n\n")  # the table is the block that starts with the header
    header = next(block for block in table if block.lstrip().startswith("VM "))
    assert max(len(line) for line in header.splitlines()) <= 120
    assert all(key == key[:1].lower() + key[1:] and "_" not in key for e in report for key in e)  # camelCase
