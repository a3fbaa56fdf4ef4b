"""`rdp-remediate alert PAYLOAD.json [--offline] [--json]`: the alert endpoint's decision, nothing enqueued."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from remediate.cli import main
from remediate.model import VmId
from tests.intake.support import PAYLOADS, SUBSCRIPTION, FakeResolver, payload, vm


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDPR_SCOPES", f"/subscriptions/{SUBSCRIPTION}")
    monkeypatch.delenv("RDPR_DRY_RUN", raising=False)


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    code = main(["alert", *args, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def test_metric_alert_would_start_one_remediation(capsys: pytest.CaptureFixture[str]) -> None:
    code, report, _ = run_json(capsys, str(PAYLOADS / "metric-vm.json"), "--offline")

    assert code == 0
    assert report == {
        "accepted": True,
        "reason": "1 remediation request would be enqueued",
        "alertId": payload("metric-vm.json")["data"]["essentials"]["alertId"],
        "vmIds": [str(VmId.parse(payload("metric-vm.json")["data"]["essentials"]["alertTargetIDs"][0]))],
        "unresolved": [],
        "ignored": [],
    }


def test_offline_lists_computer_names_as_unresolved_without_any_azure_call(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "remediate.azure.clients", None)  # any import would fail loudly
    code, report, _ = run_json(capsys, str(PAYLOADS / "log-v2-workspace-computer.json"), "--offline")

    assert code == 0
    assert report["accepted"] is False
    assert report["vmIds"] == []
    assert report["unresolved"] == [{"computer": "VM-FILE-04.corp.contoso.com"}]


def test_online_resolves_computer_names_through_the_inventory(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from remediate.azure import inventory

    resolver = FakeResolver({"VM-FILE-04": [vm("vm-file-04")]})
    clients = object()
    fake_clients = types.ModuleType("remediate.azure.clients")
    fake_clients.get_clients = lambda settings=None: clients  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "remediate.azure.clients", fake_clients)
    seen: list[object] = []

    def find(given_clients: object, names: list[str], scopes: tuple[str, ...]) -> dict[str, list[VmId]]:
        seen.append(given_clients)
        return resolver(names, scopes)

    monkeypatch.setattr(inventory, "find_vms_by_computer_name", find)
    code, report, _ = run_json(capsys, str(PAYLOADS / "log-v2-workspace-computer.json"))

    assert code == 0
    assert report["accepted"] is True
    assert report["vmIds"] == [str(vm("vm-file-04"))]
    assert seen == [clients]
    assert resolver.calls == [(["VM-FILE-04"], ())]


def test_alert_without_computer_names_needs_no_azure_even_online(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "remediate.azure.clients", None)
    code, report, _ = run_json(capsys, str(PAYLOADS / "log-v2-workspace-resourceid.json"))

    assert code == 0
    assert report["accepted"] is True


@pytest.mark.parametrize("name", ["resolved.json", "scale-set-instance.json", "non-vm-target.json"])
def test_deliberately_ignored_alert_exits_0_with_the_reason(capsys: pytest.CaptureFixture[str], name: str) -> None:
    code, report, _ = run_json(capsys, str(PAYLOADS / name), "--offline")

    assert code == 0
    assert report["accepted"] is False
    assert report["vmIds"] == []
    assert report["reason"]


def test_scale_set_instance_is_reported_as_ignored(capsys: pytest.CaptureFixture[str]) -> None:
    _, report, _ = run_json(capsys, str(PAYLOADS / "scale-set-instance.json"), "--offline")

    [ignored] = report["ignored"]
    assert set(ignored) == {"target", "reason"}
    assert ignored["reason"] == "virtual machine scale sets are not yet supported"


def test_invalid_alert_exits_2_with_a_message_and_no_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = payload("metric-vm.json")
    del doc["data"]["essentials"]["alertId"]
    path = tmp_path / "alert.json"
    path.write_text(json.dumps(doc), encoding="utf-8")

    code = main(["alert", str(path), "--offline"])
    captured = capsys.readouterr()

    assert code == 2
    assert "data.essentials.alertId is missing" in captured.err
    assert "Traceback" not in captured.err + captured.out


def test_invalid_alert_with_json_still_prints_one_object(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "alert.json"
    path.write_text("{not json", encoding="utf-8")

    code, report, err = run_json(capsys, str(path), "--offline")

    assert code == 2
    assert report["accepted"] is False
    assert "body is not valid JSON" in report["reason"]
    assert "body is not valid JSON" in err


def test_unreadable_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["alert", str(tmp_path / "missing.json"), "--offline"])
    captured = capsys.readouterr()

    assert code == 2
    assert "cannot read" in captured.err
    assert "Traceback" not in captured.err


def test_text_output_names_each_vm_and_why(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["alert", str(PAYLOADS / "log-v1-search-results.json"), "--offline"])
    out = capsys.readouterr().out

    assert code == 0
    assert "would start work: 2 remediation requests would be enqueued" in out
    assert str(vm("vm-web-01")).lower() in out.lower()
    assert "_ResourceId dimension" in out
