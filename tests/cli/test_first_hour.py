"""The first hour: `python -m sim --with-azurite --print-env` prints export lines that a shell can use as they
are, and the CLI works against them; a report sweep needs no ledger at all."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from sim.azurite import free_port

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "import sys; from remediate.cli import main; sys.exit(main())"]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("RDPR_", "AZURE_", "APPLICATIONINSIGHTS"))}


def test_print_env_gives_exports_a_shell_runs_and_the_cli_uses() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sim",
            "--with-azurite",
            "--print-env",
            "--time-scale",
            "0.01",
            "--rdp-port",
            str(free_port("127.0.0.2")),
        ],
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        while (line := process.stdout.readline()) and line.strip() != "# ready":
            lines.append(line.rstrip("\n"))
        assert lines and all(line.startswith("export ") for line in lines)
        script = "\n".join([*lines, "env"])  # exactly what a user pastes, run by a real shell
        shell = subprocess.run(["/bin/sh", "-c", script], env=clean_env(), capture_output=True, text=True, check=True)
        env = dict(line.split("=", 1) for line in shell.stdout.splitlines() if line.startswith(("RDPR_", "PATH=")))
        assert {"RDPR_EMULATOR", "RDPR_ARM_URL", "RDPR_STORAGE_CONNECTION", "RDPR_SCOPES"} <= set(env)
        done = subprocess.run(
            [*CLI, "sweep", "--mode", "report", "--json"],
            cwd=REPO,
            env={**clean_env(), **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["windowsVms"] >= 10
        fleet = subprocess.run(
            [*CLI, "fleet", "--json"],
            cwd=REPO,
            env={**clean_env(), **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert json.loads(fleet.stdout)["vms"] == json.loads(done.stdout)["windowsVms"]  # kept in the inventory
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


def test_a_report_sweep_needs_no_storage() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "sim", "--print-env", "--time-scale", "0.01", "--rdp-port", str(free_port("127.0.0.2"))],
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        env = {}
        while (line := process.stdout.readline()) and line.strip() != "# ready":
            name, _, value = line.removeprefix("export ").rstrip("\n").partition("=")
            env[name] = shlex.split(value)[0]
        assert "RDPR_STORAGE_CONNECTION" not in env
        done = subprocess.run(
            [*CLI, "sweep", "--mode", "report"],
            cwd=REPO,
            env={**clean_env(), **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "need attention" in done.stdout and "not kept in the fleet inventory" in done.stderr
        # Piped, the progress is plain lines: probes done out of the total, ending with all of them.
        counts = [line.split()[1] for line in done.stderr.splitlines() if line.strip().startswith("probed ")]
        assert counts and counts[-1].split("/")[0] == counts[-1].split("/")[1]
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
