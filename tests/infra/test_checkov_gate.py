"""The checkov gate fails on what checkov itself lets pass. A stand-in checkov prints prepared reports, so
these run in milliseconds; the real scan runs once, from `make infra`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.infra import checkov_gate


def _check(check_id: str, suppress: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"result": "SKIPPED" if suppress is not None else "FAILED"}
    if suppress is not None:
        result["suppress_comment"] = suppress
    return {
        "check_id": check_id,
        "check_name": f"name of {check_id}",
        "file_path": "/modules/storage.bicep",
        "file_line_range": [3, 20],
        "check_result": result,
    }


def _report(
    *,
    failed: list[dict[str, Any]] | None = None,
    skipped: list[dict[str, Any]] | None = None,
    unparsed: list[str] | None = None,
    resources: int = 12,
) -> dict[str, Any]:
    failed, skipped, unparsed = failed or [], skipped or [], unparsed or []
    return {
        "check_type": "bicep",
        "results": {
            "passed_checks": [],
            "failed_checks": failed,
            "skipped_checks": skipped,
            "parsing_errors": unparsed,
        },
        "summary": {
            "passed": 20,
            "failed": len(failed),
            "skipped": len(skipped),
            "parsing_errors": len(unparsed),
            "resource_count": resources,
        },
    }


def _fake_checkov(tmp_path: Path, stdout: str, exit_code: int) -> tuple[str, Path]:
    """An executable that records its arguments and prints `stdout`, like checkov with `-o json`."""
    (tmp_path / "stdout.txt").write_text(stdout)
    argv_file = tmp_path / "argv.json"
    script = tmp_path / "checkov"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, pathlib, sys\n"
        f"pathlib.Path({str(argv_file)!r}).write_text(json.dumps(sys.argv[1:]))\n"
        f"sys.stdout.write(pathlib.Path({str(tmp_path / 'stdout.txt')!r}).read_text())\n"
        f"sys.exit({exit_code})\n"
    )
    script.chmod(0o755)
    return str(script), argv_file


def _run(tmp_path: Path, payload: Any, exit_code: int = 0) -> tuple[int, Path]:
    checkov, argv_file = _fake_checkov(tmp_path, json.dumps(payload), exit_code)
    return checkov_gate.main([checkov, str(tmp_path)]), argv_file


def test_a_clean_scan_passes_and_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, argv_file = _run(tmp_path, _report(skipped=[_check("CKV_AZURE_35", " needs VNet integration first")]))
    out = capsys.readouterr().out
    assert code == 0
    assert "checks passed" in out
    assert "CKV_AZURE_35" in out
    assert "needs VNet integration first" in out
    argv = json.loads(argv_file.read_text())
    assert argv[argv.index("--framework") + 1] == "bicep"
    assert "--skip-download" in argv
    # --quiet would drop the names of files checkov could not parse.
    assert "--quiet" not in argv


def test_a_failed_check_fails_the_gate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _run(tmp_path, _report(failed=[_check("CKV_AZURE_44")]), exit_code=1)
    captured = capsys.readouterr()
    assert code == 1
    assert "CKV_AZURE_44" in captured.out
    assert "1 failed check(s)" in captured.err


def test_a_file_checkov_could_not_parse_fails_the_gate_although_checkov_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = _run(tmp_path, _report(unparsed=["/src/infra/main.bicep"]), exit_code=0)
    captured = capsys.readouterr()
    assert code == 1
    assert "main.bicep" in captured.out
    assert "could not parse" in captured.err


def test_parse_errors_counted_but_not_named_still_fail(tmp_path: Path) -> None:
    payload = _report()
    payload["summary"]["parsing_errors"] = 2
    del payload["results"]["parsing_errors"]
    verdict = checkov_gate.evaluate(payload)
    assert not verdict.ok
    assert len(verdict.parsing_errors) == 2


def test_a_skip_without_a_reason_fails_the_gate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _run(tmp_path, _report(skipped=[_check("CKV_AZURE_59", "")]))
    assert code == 1
    assert "CKV_AZURE_59" in capsys.readouterr().err


def test_scanning_nothing_fails_the_gate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # With no .bicep files checkov prints only a summary.
    bare = {"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0, "resource_count": 0}
    code, _ = _run(tmp_path, bare)
    assert code == 1
    assert "no Bicep resources" in capsys.readouterr().err


def test_reports_of_several_frameworks_are_all_judged(tmp_path: Path) -> None:
    verdict = checkov_gate.evaluate([_report(), _report(failed=[_check("CKV_AZURE_3")])])
    assert [finding.check_id for finding in verdict.failed] == ["CKV_AZURE_3"]
    assert verdict.resource_count == 24


def test_output_that_is_not_a_report_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkov, _ = _fake_checkov(tmp_path, "Traceback: something broke\n", exit_code=2)
    assert checkov_gate.main([checkov, str(tmp_path)]) == 2
    assert "without a JSON report" in capsys.readouterr().err


def test_a_missing_checkov_says_how_to_install_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert checkov_gate.main([str(tmp_path / "no-such-checkov"), str(tmp_path)]) == 2
    assert "make infra" in capsys.readouterr().err
