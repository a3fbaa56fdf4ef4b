"""Gate on checkov's Bicep scan: fail on any failed check, any file checkov could not parse, or a silent skip.

checkov alone is not a gate for Bicep: a file its parser cannot read is counted under `parsing_errors` and
otherwise treated as passing, with exit code 0. This runs checkov offline (`--skip-download`), reads its JSON
report and fails unless every file parsed, nothing failed, something was actually scanned, and every skip
carries its reason (`// #checkov:skip=CKV_...: why` inside the resource).

    python -m tests.infra.checkov_gate PATH/TO/checkov infra

`--quiet` is deliberately not passed: it drops the list of files that failed to parse from the report.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# checkov on this repository takes a few seconds; a hung scan must not hang the build.
CHECKOV_TIMEOUT_SECONDS = 600


class GateError(Exception):
    """checkov did not produce a report this gate can judge."""


@dataclass(frozen=True)
class Finding:
    """One check result worth listing: a failure or a skip."""

    check_id: str
    name: str
    location: str
    reason: str = ""


@dataclass
class Verdict:
    """What the scan found, and the problems that fail the gate."""

    passed: int = 0
    resource_count: int = 0
    failed: list[Finding] = field(default_factory=list)
    skipped: list[Finding] = field(default_factory=list)
    parsing_errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def checkov_command(checkov: str, directory: Path) -> list[str]:
    return [checkov, "-d", str(directory), "--framework", "bicep", "--skip-download", "-o", "json"]


def run_checkov(checkov: str, directory: Path) -> Any:
    """Run checkov and return its parsed JSON report (exit code 1 only means "some check failed")."""
    try:
        completed = subprocess.run(
            checkov_command(checkov, directory),
            capture_output=True,
            text=True,
            timeout=CHECKOV_TIMEOUT_SECONDS,
            check=False,
        )
    except FileNotFoundError:
        raise GateError(f"checkov not found at {checkov!r}: run `make infra` to create its environment") from None
    except subprocess.TimeoutExpired:
        raise GateError(f"checkov did not finish within {CHECKOV_TIMEOUT_SECONDS} s") from None
    try:
        return json.loads(completed.stdout)
    except json.JSONDecodeError:
        tail = (completed.stderr or completed.stdout).strip()[-2000:]
        raise GateError(f"checkov exited {completed.returncode} without a JSON report:\n{tail}") from None


def _reports(payload: Any) -> list[dict[str, Any]]:
    """checkov prints one report per framework (a list) or a single one; with nothing to scan, a bare summary."""
    items = payload if isinstance(payload, list) else [payload]
    if not all(isinstance(item, dict) for item in items):
        raise GateError("checkov's report is neither a JSON object nor a list of objects")
    return items


def _finding(check: dict[str, Any]) -> Finding:
    lines = check.get("file_line_range") or []
    where = str(check.get("file_path", "?"))
    if len(lines) == 2:
        where += f":{lines[0]}-{lines[1]}"
    result = check.get("check_result") or {}
    return Finding(
        check_id=str(check.get("check_id", "?")),
        name=str(check.get("check_name", "")),
        location=where,
        reason=str(result.get("suppress_comment") or "").strip(),
    )


def evaluate(payload: Any) -> Verdict:
    """Judge a checkov JSON report (see the module docstring for the rules)."""
    verdict = Verdict()
    for report in _reports(payload):
        summary = report.get("summary", report)
        results = report.get("results", {})
        verdict.passed += int(summary.get("passed", 0))
        verdict.resource_count += int(summary.get("resource_count", 0))
        verdict.failed.extend(_finding(check) for check in results.get("failed_checks", []))
        verdict.skipped.extend(_finding(check) for check in results.get("skipped_checks", []))
        files = [str(path) for path in results.get("parsing_errors", [])]
        # The summary counts parse failures even when the file list is missing (e.g. under --quiet).
        missing = int(summary.get("parsing_errors", 0)) - len(files)
        verdict.parsing_errors.extend(files + ["(file not named in the report)"] * max(missing, 0))
    if verdict.resource_count == 0:
        verdict.problems.append("checkov scanned no Bicep resources: wrong directory, or no .bicep files")
    if verdict.parsing_errors:
        verdict.problems.append(
            f"{len(verdict.parsing_errors)} file(s) checkov could not parse, so none of their resources were "
            "checked (its Bicep parser lacks user-defined types with decorators, union types, `type[]`, "
            "`map()` and function calls split over several lines)"
        )
    if verdict.failed:
        verdict.problems.append(f"{len(verdict.failed)} failed check(s)")
    unexplained = [skip for skip in verdict.skipped if len(skip.reason) < 10]
    if unexplained:
        verdict.problems.append(
            f"{len(unexplained)} skip(s) without a reason: write `#checkov:skip=ID: why` ("
            + ", ".join(f"{skip.check_id} at {skip.location}" for skip in unexplained)
            + ")"
        )
    return verdict


def render(verdict: Verdict) -> str:
    """A summary table, then every failure, parse error and skip with its reason."""
    rows = [
        ("resources scanned", verdict.resource_count),
        ("checks passed", verdict.passed),
        ("checks failed", len(verdict.failed)),
        ("checks skipped", len(verdict.skipped)),
        ("files not parsed", len(verdict.parsing_errors)),
    ]
    width = max(len(label) for label, _ in rows)
    lines = ["checkov (bicep)", "-" * (width + 8)]
    lines += [f"{label:<{width}}  {value:>6}" for label, value in rows]
    for finding in verdict.failed:
        lines.append(f"FAILED  {finding.check_id:<14} {finding.location}  {finding.name}")
    lines += [f"UNPARSED {path}" for path in verdict.parsing_errors]
    for finding in verdict.skipped:
        lines.append(f"skipped {finding.check_id:<14} {finding.location}  {finding.reason or '(no reason)'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("checkov", help="path of the checkov executable")
    parser.add_argument("directory", type=Path, help="directory holding the .bicep files")
    args = parser.parse_args(argv)
    try:
        verdict = evaluate(run_checkov(args.checkov, args.directory))
    except GateError as exc:
        print(f"checkov gate: {exc}", file=sys.stderr)
        return 2
    print(render(verdict))
    if verdict.ok:
        print("checkov gate: passed")
        return 0
    for problem in verdict.problems:
        print(f"checkov gate: FAILED: {problem}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
