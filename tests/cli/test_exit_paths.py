"""Every way out of the command line, in real processes: one line with the fix and the documented exit code.

Not signed in, storage unreachable, a broken pipe, and Ctrl-C (a real SIGINT) in the middle of a Run Command:
the request is recorded as interrupted, no lock is left behind, and `run --resume` finishes it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from remediate.cli import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_OK, EXIT_PENDING, EXIT_REFUSED, EXIT_UNAVAILABLE
from remediate.ledger import Ledger
from remediate.model import VmId
from remediate.settings import Settings
from sim.azurite import Azurite, free_port
from tests.fixtures.emulator import EmulatorFactory, emulator_env

REPO = Path(__file__).resolve().parents[2]
PAYLOADS = REPO / "tests" / "intake" / "payloads"
VM = (
    "/subscriptions/00000000-0000-4000-8000-000000000001/resourceGroups/rg-prod"
    "/providers/Microsoft.Compute/virtualMachines/vm-expired-certificate"
)
CLI = [sys.executable, "-c", "import sys; from remediate.cli import main; sys.exit(main())"]


def clean_env(**extra: str) -> dict[str, str]:
    """This machine's environment without any RDPR_ or Azure setting, plus `extra`."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("RDPR_", "AZURE_", "APPLICATIONINSIGHTS"))}
    return {**keep, **extra}


def cli(env: dict[str, str], *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_not_signed_in_says_az_login(azurite: Azurite) -> None:
    env = clean_env(
        RDPR_SCOPES="/subscriptions/00000000-0000-4000-8000-000000000001",
        RDPR_STORAGE_CONNECTION=azurite.connection_string,
        REQUESTS_CA_BUNDLE=azurite.ca_cert,  # storage answers; only the Azure sign-in is missing
        AZURE_TOKEN_CREDENTIALS="dev",  # a laptop: developer sign-ins only, and none of them is signed in
        AZURE_CONFIG_DIR=str(REPO / ".nonexistent-az-config"),
    )
    started = time.monotonic()
    done = cli(env, "run", "--vm", VM, "--dry-run")
    line = one_line(done.stderr)
    assert done.returncode == EXIT_UNAVAILABLE
    assert line.startswith("rdp-remediate: not signed in to Azure: run `az login`")
    assert "RDPR_MANAGED_IDENTITY_CLIENT_ID" in line
    assert time.monotonic() - started < 30


def test_storage_unreachable_names_the_connection_and_fails_fast(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    connection = (
        "DefaultEndpointsProtocol=https;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        f"TableEndpoint=https://127.0.0.1:{port}/devstoreaccount1;QueueEndpoint=https://127.0.0.1:{port}/devstoreaccount1;"
    )
    env = clean_env(RDPR_STORAGE_CONNECTION=connection)
    started = time.monotonic()
    done = cli(env, "status", "0" * 32)
    line = one_line(done.stderr)
    assert done.returncode == EXIT_UNAVAILABLE
    assert line.startswith(f"rdp-remediate: storage unreachable (RDPR_STORAGE_CONNECTION, 127.0.0.1:{port})")
    assert "check RDPR_STORAGE_CONNECTION" in line
    assert time.monotonic() - started < 20  # no minutes of retries
    debug = cli(env, "--debug", "status", "0" * 32)
    assert "Traceback" in debug.stderr and debug.returncode == EXIT_UNAVAILABLE  # --debug shows it


def test_a_reader_that_goes_away_is_one_line_and_exit_141() -> None:
    process = subprocess.Popen(
        [*CLI, "alert", str(PAYLOADS / "metric-vm.json"), "--offline", "--json"],
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the command writes its answer
    code = process.wait(timeout=60)
    line = one_line(process.stderr.read())
    assert code == EXIT_BROKEN_PIPE and "broken pipe" in line


def test_ctrl_c_records_the_request_interrupted_frees_the_lock_and_resume_finishes_it(
    emulator_factory: EmulatorFactory, storage_env: dict[str, str]
) -> None:
    emulator = emulator_factory(time_scale=0.1)  # a Run Command takes 3.5 s: time to press Ctrl-C
    storage = {k: storage_env[k] for k in ("RDPR_STORAGE_CONNECTION", "RDPR_TABLE_PREFIX", "RDPR_QUEUE_NAME")}
    settings_env = {**emulator_env(emulator), **storage, "RDPR_BOOT_TIMEOUT_SECONDS": "30"}
    env = clean_env(**settings_env)
    process = subprocess.Popen(
        [*CLI, "run", "--vm", VM], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()  # "remediating vm-... (request ID)"
    request_id = first.strip().rsplit(" ", 1)[-1].rstrip(")")
    # The step before diagnose's Run Command: a failing probe is followed by the network-path read.
    while "network-path" not in (line := process.stderr.readline()):
        assert line, "the run ended before it reached the network path"
    time.sleep(0.5)  # the diagnose Run Command is now in flight in Azure
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=60)
    err = process.stderr.read()

    assert code == EXIT_INTERRUPTED
    line = one_line(err)
    assert f"request {request_id} is recorded as interrupted" in line and "during step diagnose" in line
    assert "keeps running in Azure" in line and f"run --resume {request_id}" in line
    ledger = Ledger.from_settings(Settings.from_env(settings_env))
    assert ledger.vm_state(VmId.parse(VM)).owner is None  # no lock left behind
    record = ledger.get(request_id)
    assert record is not None and record.state == "interrupted" and record.outcome is None
    assert cli(env, "status", request_id).returncode == EXIT_PENDING  # not finished: 3

    resumed = cli(env, "run", "--resume", request_id, "--json", timeout=180)
    assert resumed.returncode == EXIT_OK, resumed.stderr
    record = ledger.get(request_id)
    assert record is not None and record.outcome == "remediated"
    assert ledger.vm_state(VmId.parse(VM)).owner is None
    again = cli(env, "run", "--resume", request_id)
    assert again.returncode == EXIT_REFUSED and "already finished" in one_line(again.stderr)


@pytest.mark.parametrize("argv", [["--version"], ["run", "--help"], ["fleet", "--help"]])
def test_version_and_help_with_examples_and_settings(argv: list[str]) -> None:
    done = cli(clean_env(), *argv)
    assert done.returncode == 0
    if argv == ["--version"]:
        assert done.stdout.startswith("rdp-remediate ")
    else:
        assert "examples:" in done.stdout and "settings read" in done.stdout and "RDPR_" in done.stdout
