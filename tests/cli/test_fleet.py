"""The fleet certificate inventory: what report sweeps observe is kept in Table storage (latest per VM and a
bounded history), and `rdp-remediate fleet` answers from it, with the expiry forecast, over a generated fleet
whose listeners serve real certificates with known dates."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from remediate import fleet as fleet_module
from remediate.azure.clients import reset_clients
from remediate.cli import main
from remediate.fleet import FleetStore
from remediate.settings import Settings, get_settings
from sim.certs import rdp_certificate
from sim.fleet import SUBSCRIPTION, Fleet, generated_fleet
from tests.fixtures.emulator import EmulatorFactory, emulator_env

DAY = dt.timedelta(days=1)


@pytest.fixture
def fleet() -> Fleet:
    """120 VMs, realistic mix; the healthy ones get certificates expiring 20..139 days from now, spread evenly."""
    now = dt.datetime.now(dt.UTC)
    vms = generated_fleet(120, mix="realistic", seed=11)
    for index, vm in enumerate(v for v in vms if v.scenario == "healthy"):
        vm.guest.certificate = rdp_certificate(vm.guest.computer_name, now - 200 * DAY, now + (20 + index) * DAY)
    return vms


@pytest.fixture
def fleet_env(
    monkeypatch: pytest.MonkeyPatch, emulator_factory: EmulatorFactory, fleet: Fleet, storage_env: dict[str, str]
) -> Iterator[dict[str, str]]:
    emulator = emulator_factory(fleet)
    storage = {k: storage_env[k] for k in ("RDPR_STORAGE_CONNECTION", "RDPR_TABLE_PREFIX", "RDPR_QUEUE_NAME")}
    env = {**emulator_env(emulator, [f"/subscriptions/{SUBSCRIPTION}"]), **storage, "RDPR_PROBE_TIMEOUT_SECONDS": "2"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    reset_clients()
    yield env
    get_settings.cache_clear()
    reset_clients()


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def expected_certificates(fleet: Fleet) -> dict[str, dt.datetime]:
    """Ground truth from the simulated guests: the listeners a report sweep can reach and their not-after."""
    return {
        vm.name: vm.guest.certificate.not_after
        for vm in fleet
        if vm.os_type == "Windows"
        and vm.power_state == "running"
        and vm.guest.key_usable
        and vm.guest.certificate is not None
    }


def test_fleet_shows_the_latest_state_by_status_the_forecast_and_what_needs_attention(
    fleet_env: dict[str, str], fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sweep", "--mode", "report", "--json"]) == 0
    capsys.readouterr()
    code, view = cli_json(capsys, "fleet")

    assert code == 0
    windows = [vm for vm in fleet if vm.os_type == "Windows"]
    assert view["vms"] == len(windows) and sum(view["byStatus"].values()) == len(windows)
    # Resource Graph does not report the guest agent: only VMs that are not running go unprobed.
    assert view["byStatus"]["not-probed"] == sum(1 for vm in windows if vm.power_state != "running")
    assert view["lastSweep"]["mode"] == "report" and view["lastSweep"]["windowsVms"] == len(windows)

    # The forecast counts the certificates the probes saw, by the week their not-after falls in.
    today = dt.datetime.now(dt.UTC).date()
    truth = expected_certificates(fleet)
    weeks = Counter((na.date() - today).days // 7 for na in truth.values() if 0 <= (na.date() - today).days < 56)
    assert [w["expiring"] for w in view["forecast"]["weeks"]] == [weeks[i] for i in range(8)]
    assert view["forecast"]["expired"] == sum(1 for na in truth.values() if na.date() < today)
    assert sum(weeks.values()) > 10  # the spread fleet really exercises several weeks

    attention = {o["vmName"]: o for o in view["attention"]}
    broken = {vm.name for vm in windows if vm.scenario not in ("healthy", "deallocated", "agent-not-ready")}
    assert broken <= set(attention)
    assert not {vm.name for vm in windows if vm.scenario == "healthy"} & {
        name for name, o in attention.items() if o["daysLeft"] is not None and o["daysLeft"] > 14
    }
    expired = next(o for o in view["attention"] if o["probeStatus"] == "certificate-expired")
    assert expired["issuerKind"] == "self-signed" and len(expired["thumbprint"]) == 40
    assert expired["finding"] == "remediate" and expired["disposition"] == "reported"
    assert expired["notAfter"].endswith("Z") and expired["daysLeft"] < 0 and expired["tlsVersion"].startswith("TLS")
    assert any("1058" in e for o in view["attention"] for e in o["evidence"])  # Log Analytics evidence kept


def test_expiring_within_lists_only_certificates_that_expire_that_soon(
    fleet_env: dict[str, str], fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["sweep", "--mode", "report", "--json"])
    capsys.readouterr()
    code, view = cli_json(capsys, "fleet", "--expiring-within", "30")
    truth = expected_certificates(fleet)
    today = dt.datetime.now(dt.UTC).date()
    assert code == 0
    assert {o["vmName"] for o in view["attention"]} == {n for n, na in truth.items() if (na.date() - today).days <= 30}
    assert [o["daysLeft"] for o in view["attention"]] == sorted(o["daysLeft"] for o in view["attention"])


def test_history_keeps_each_vms_changes_per_sweep_and_is_bounded(
    fleet_env: dict[str, str], fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet_module, "HISTORY_SWEEPS", 2)
    store = FleetStore.from_settings(Settings.from_env(fleet_env))
    windows = [vm for vm in fleet if vm.os_type == "Windows"]
    expired = next(v for v in fleet if v.scenario == "expired-certificate")
    steady = next(v for v in fleet if v.scenario == "healthy")
    now = dt.datetime.now(dt.UTC)

    assert main(["sweep", "--mode", "report", "--json"]) == 0  # first sweep: every VM is new
    assert main(["sweep", "--mode", "report", "--json"]) == 0  # nothing changed: nothing written
    # Someone renews the expired certificate by hand; the next sweep records that change only.
    expired.guest.certificate = rdp_certificate(expired.guest.computer_name, now - DAY, now + 180 * DAY)
    assert main(["sweep", "--mode", "report", "--json"]) == 0
    capsys.readouterr()

    sweeps = list(store.recent_sweeps(limit=None))
    assert len(sweeps) == 2  # bounded: the first sweep is gone
    assert [s.changed for s in sweeps] == [1, 0]
    kept = {row["PartitionKey"] for row in store.history.query_entities("", select=["PartitionKey"])}
    assert kept == {sweeps[0].sweepId}  # the oldest sweep's rows were deleted, not only its summary
    (change,) = store.vm_history(expired.resource_id)
    assert change.probeStatus == "healthy" and change.sweepId == sweeps[0].sweepId and change.daysLeft == 179
    assert store.vm_history(steady.resource_id) == []  # no change within the kept sweeps
    latest = {o.vmName: o for o in store.latest_observations()}
    assert len(latest) == len(windows) and latest[expired.name].probeStatus == "healthy"


def test_a_remediate_sweep_records_what_the_blast_radius_held_back(
    fleet_env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RDPR_SWEEP_MAX_VMS", "1")
    get_settings.cache_clear()
    code, report = cli_json(capsys, "sweep", "--mode", "remediate")
    assert code == 0 and len(report["enqueued"]) == 1
    code, view = cli_json(capsys, "fleet")
    dispositions = Counter(o["disposition"] for o in view["attention"] if o["finding"])
    assert dispositions["queued"] == 1 and dispositions["held-back"] == len(report["heldBack"]) > 0
    held = next(o for o in view["attention"] if o["disposition"] == "held-back")
    assert "blast radius" in held["dispositionReason"] and "RDPR_SWEEP_MAX_VMS=1" in held["dispositionReason"]


def test_fleet_text_fits_120_columns_and_starts_with_the_summary(
    fleet_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    main(["sweep", "--mode", "report", "--json"])
    capsys.readouterr()
    assert main(["fleet"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith("(report mode)") and "by probe status" in out
    assert "needing attention" in out and max(len(line) for line in out.splitlines()) <= 120
