"""`python -m sim` and what the emulator tells its clients (describe, settings environment)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from remediate.azure.clients import AzureClients
from remediate.settings import Settings
from sim.fleet import OUT_OF_SCOPE_GROUP, RESOURCE_GROUP, SUBSCRIPTION
from sim.server import WORKSPACE_ID, Emulator

ROOT = Path(__file__).resolve().parents[2]


def test_python_m_sim_prints_one_json_line_serves_and_stops_cleanly_on_sigterm() -> None:
    command = [sys.executable, "-m", "sim", "--vms", "30", "--no-listeners", "--time-scale", "0.01"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        described = json.loads(process.stdout.readline())
        env = {
            "RDPR_EMULATOR": "true",
            "RDPR_ARM_URL": described["arm_url"],
            "RDPR_LOGS_URL": described["logs_url"],
            "RDPR_EMULATOR_CA_CERT": described["ca_cert"],
        }
        clients = AzureClients(Settings.from_env(env))
        try:
            names = [vm.name for vm in clients.compute(described["subscription_ids"][0]).virtual_machines.list_all()]
        finally:
            clients.close()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)

    assert process.returncode == 0, stderr
    assert described["fleet"]["vms"] == 30
    assert described["workspace_id"] == WORKSPACE_ID
    assert len(names) == 30
    assert not Path(described["ca_cert"]).exists()  # the temporary CA file goes with the emulator


def test_python_m_sim_rejects_a_bad_fleet_file(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.json"
    fleet.write_text(json.dumps([{"name": "vm1", "scenario": "no-such-scenario"}]), encoding="utf-8")

    result = subprocess.run(
        [sys.executable, "-m", "sim", "--fleet", str(fleet), "--no-listeners"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert result.stdout == ""
    assert "no-such-scenario" in result.stderr


def test_settings_env_points_the_product_at_the_emulator_and_scopes_the_production_group(
    emulator: Emulator,
) -> None:
    settings = Settings.from_env(emulator.settings_env())

    assert settings.emulator is True
    assert settings.arm_url == emulator.arm_url
    assert settings.logs_url == emulator.logs_url
    assert settings.emulator_ca_cert == emulator.ca_cert
    assert settings.rdp_port == emulator.rdp_port
    assert settings.log_workspace_id == WORKSPACE_ID
    assert settings.poll_interval_seconds is not None
    assert 0 < settings.poll_interval_seconds < 1
    assert settings.scopes == (f"/subscriptions/{SUBSCRIPTION}/resourcegroups/{RESOURCE_GROUP}".lower(),)
    assert f"/resourcegroups/{OUT_OF_SCOPE_GROUP}" not in settings.scopes[0]


def test_describe_reports_urls_subscriptions_and_fleet(emulator: Emulator) -> None:
    described = emulator.describe()

    assert described["arm_url"].startswith("https://127.0.0.1:")
    assert described["logs_url"] == described["arm_url"] + "/v1"
    assert Path(described["ca_cert"]).read_text(encoding="utf-8").startswith("-----BEGIN CERTIFICATE-----")
    assert described["subscription_ids"] == [SUBSCRIPTION]
    assert described["fleet"]["vms"] == len(emulator.fleet)
    json.dumps(described)  # one JSON line: everything in it serializes
