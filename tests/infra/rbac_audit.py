"""Hold the Azure calls the test suite really made against the RBAC actions on record (a pytest plugin).

The emulator logs every request it answers under an operation name (getVm, runCommand, logsQuery, ...). This
plugin collects those names across the whole run, from every xdist worker, and at the end of the session:

* fails the run if any operation has no action in `remediate/azure/permissions.py`: deployed, the custom role
  would lack the permission and the call would be refused;
* on a full, green run (all of `tests/`, no `-k`, `-m` or deselection), fails it if an operation with an action
  on record was never made: the role would hold a permission that no code path needs.

Together with the Bicep check (the role's actions equal `permissions.ROLE_ACTIONS`), the role holds exactly the
actions the product performs, derived from the requests themselves rather than from a hand-written list.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from remediate.azure import permissions

WORKER_KEY = "rdpr_emulator_operations"
# The emulator's name for a route it does not know; such a request fails, so it needs no permission.
UNROUTED = "other"
TESTS_ROOT = Path(__file__).resolve().parents[1]

_observed: set[str] = set()  # operation names, from this process and (on the xdist controller) its workers
_report: list[str] = []  # lines for the terminal summary


def audit(observed: Iterable[str], *, full_run: bool) -> list[str]:
    """The problems with `observed` operation names (empty when they agree with the permissions on record)."""
    seen = set(observed) - {UNROUTED}
    known = (
        set(permissions.OPERATION_ACTIONS)
        | set(permissions.WORKSPACE_OPERATION_ACTIONS)
        | set(permissions.SUBSCRIPTION_OPERATION_ACTIONS)
    )
    problems = [
        f"operation {name!r} reached Azure but has no RBAC action in remediate/azure/permissions.py"
        for name in sorted(seen - known)
    ]
    if full_run:
        problems += [
            f"no test made operation {name!r}: its action {sorted(permissions.actions_for([name]))} would be "
            "granted for nothing (remove it from permissions.py and the role, or cover the code path)"
            for name in sorted(known - seen)
        ]
    return problems


def _recording(append: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(append)
    def record(log: object, entry: Any) -> Any:
        _observed.add(str(entry.operation))
        return append(log, entry)

    record.__rdpr_recording__ = True  # type: ignore[attr-defined]
    return record


def pytest_configure(config: pytest.Config) -> None:
    from sim.server import RequestLog

    if not getattr(RequestLog.append, "__rdpr_recording__", False):
        RequestLog.append = _recording(RequestLog.append)  # type: ignore[method-assign]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist controller: take in the operations a worker saw."""
    _observed.update(getattr(node, "workeroutput", {}).get(WORKER_KEY, []))


def _is_full_run(session: pytest.Session) -> bool:
    option = session.config.option
    if getattr(option, "keyword", "") or getattr(option, "markexpr", "") or getattr(option, "deselect", None):
        return False
    here = session.config.invocation_params.dir
    targets = [(here / str(arg).split("::", 1)[0]).resolve() for arg in session.config.args]
    return bool(targets) and all(target in (TESTS_ROOT, TESTS_ROOT.parent) for target in targets)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    worker_output = getattr(session.config, "workeroutput", None)
    if worker_output is not None:
        worker_output[WORKER_KEY] = sorted(_observed)
        return
    if not _observed:
        return  # no emulator-backed test ran
    full_run = _is_full_run(session) and exitstatus == pytest.ExitCode.OK
    problems = audit(_observed, full_run=full_run)
    _report.append(
        "operations made through the emulator: "
        + ", ".join(sorted(_observed - {UNROUTED}))
        + (" (full run: checked both ways)" if full_run else "")
    )
    _report.extend(f"FAILED: {problem}" for problem in problems)
    if problems:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _report:
        terminalreporter.write_sep("-", "RBAC audit")
        for line in _report:
            terminalreporter.write_line(line, red=line.startswith("FAILED"))
