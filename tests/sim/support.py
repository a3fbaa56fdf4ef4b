"""Test doubles for the emulator: a clock the test moves, and a guest that records what it was asked to do."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from azure.core.exceptions import HttpResponseError
from azure.mgmt.compute.models import RunCommandResult, VirtualMachineInstanceView

from sim.fleet import VirtualMachine

SUMMARY = '{"script":"fake","changed":false}'


class ManualClock:
    """Simulated time that moves only when the test says so: transitions become exact, never timed."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class FakeOutput:
    stdout: str
    stderr: str


@dataclass
class RecordingGuest:
    """Stands in for `sim.guest`: prints `stdout_prefix` + a JSON summary, and records every call."""

    stdout_prefix: str = ""
    stderr: str = ""
    scripts: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    boots: list[tuple[str, str]] = field(default_factory=list)  # (VM name, its power state during boot)

    def run_script(self, vm: VirtualMachine, script: str, parameters: dict[str, str], now: dt.datetime) -> FakeOutput:
        assert now.tzinfo is not None
        self.scripts.append((vm.name, script, dict(parameters)))
        return FakeOutput(self.stdout_prefix + "running fake script\n" + SUMMARY + "\n", self.stderr)

    def boot(self, vm: VirtualMachine, now: dt.datetime) -> None:
        assert now.tzinfo is not None
        self.boots.append((vm.name, vm.power_state))


def streams(result: RunCommandResult) -> tuple[str, str]:
    """(StdOut, StdErr) messages of a Run Command result, checking their status codes on the way."""
    assert result.value is not None
    stdout, stderr = result.value
    assert stdout.code == "ComponentStatus/StdOut/succeeded"
    assert stderr.code == "ComponentStatus/StdErr/succeeded"
    return stdout.message or "", stderr.message or ""


def status_codes(view: VirtualMachineInstanceView) -> list[str]:
    return [status.code or "" for status in view.statuses or []]


def agent_status(view: VirtualMachineInstanceView) -> str | None:
    """The guest agent's display status ("Ready" / "Not Ready"), None when Azure reports no agent."""
    if view.vm_agent is None or not view.vm_agent.statuses:
        return None
    return view.vm_agent.statuses[0].display_status


def error_code(error: HttpResponseError) -> tuple[str, str]:
    """(code, message) of an ARM error."""
    assert error.error is not None
    return error.error.code or "", error.error.message or ""


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(
    arm_url: str,
    ca_cert: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> RawResponse:
    """One HTTPS request without the SDK (to send what the SDK never would), trusting the emulator's CA."""
    parsed = urlsplit(arm_url)
    context = ssl.create_default_context(cafile=ca_cert)
    connection = http.client.HTTPSConnection(parsed.hostname or "", parsed.port, context=context, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return RawResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()
