"""Telemetry reaches Application Insights: a real exporter, configured only by the connection string, posts to
the emulator's ingestion endpoint, and what an operator queries arrives as customDimensions in one trace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sim.appinsights import Ingestion
from sim.appservice import PLATFORM_SETTING
from sim.fleet import RESOURCE_GROUP, SUBSCRIPTION
from sim.server import Emulator

REPO = Path(__file__).resolve().parents[2]


def vm_id(name: str) -> str:
    group = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
    return f"{group}/providers/Microsoft.Compute/virtualMachines/{name}"


def telemetry_env(product_env: dict[str, str], ingestion: Ingestion) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("APPLICATIONINSIGHTS", "PYTHON_APPLICATION"))}
    return {
        **inherited,
        **product_env,
        "APPLICATIONINSIGHTS_CONNECTION_STRING": ingestion.connection_string,
        "REQUESTS_CA_BUNDLE": ingestion.ca_cert,  # the exporter's transport trusts the emulator's certificate
        # Keep the exporter's own side channels (SDK statistics, remote configuration) off the network.
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
        "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
        PLATFORM_SETTING[0]: PLATFORM_SETTING[1],  # App Service authentication vouches for the runbook's caller
    }


def run_chain(env: dict[str, str], *vms: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.telemetry.chain", *vms],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


@pytest.fixture
def ingestion() -> Any:
    with Ingestion() as instance:
        yield instance


def events(ingestion: Ingestion, name: str) -> list[dict[str, Any]]:
    return [m for m in ingestion.messages() if m["customDimensions"].get("event") == name]


def test_outcome_vm_steps_and_reasons_arrive_as_dimensions_in_one_trace_per_request(
    emulator: Emulator, product_env: dict[str, str], ingestion: Ingestion
) -> None:
    fixed, broken = vm_id("vm-expired-certificate"), vm_id("vm-never-returns")
    answer = run_chain(telemetry_env(product_env, ingestion), fixed, broken)
    request_ids = dict(zip(answer["vms"], answer["requestIds"], strict=True))

    outcomes = {e["customDimensions"]["vm"]: e for e in events(ingestion, "remediation.outcome")}
    assert outcomes[fixed]["customDimensions"]["outcome"] == "remediated"
    assert outcomes[fixed]["customDimensions"]["requestId"] == request_ids[fixed]
    assert outcomes[fixed]["customDimensions"]["vmName"] == "vm-expired-certificate"
    failed = outcomes[broken]["customDimensions"]
    assert failed["outcome"] == "failed"
    assert failed["failedStep"].startswith("wait")
    assert failed["reason"]  # the operator's "why"

    steps = [e["customDimensions"] for e in events(ingestion, "remediation.step")]
    fixed_steps = [s["step"] for s in steps if s["vm"] == fixed]
    assert {"preflight", "diagnose", "reboot", "wait", "verify"} <= set(fixed_steps), fixed_steps
    failed_steps = [s for s in steps if s["vm"] == broken and s["status"] == "failed"]
    assert failed_steps and failed_steps[0]["step"] == failed["failedStep"] and failed_steps[0]["reason"]

    # One trace per request: its intake span, its workflow span, its steps and its Azure calls share an id.
    for vm, request_id in request_ids.items():
        operation = outcomes[vm]["operationId"]
        spans = [s for s in ingestion.spans() if s["operationId"] == operation]
        names = {s["name"] for s in spans}
        assert {"enqueue remediation", "remediation", "step diagnose"} <= names, names
        assert all(s["customDimensions"].get("requestId", request_id) == request_id for s in spans)
        workflow = next(s for s in spans if s["name"] == "remediation")
        assert workflow["type"] == "RequestData"  # a queue-triggered consumer span is a request
        step_spans = [s for s in spans if s["name"].startswith("step ")]
        assert all(s["parentId"] == workflow["id"] for s in step_spans)
        # The Azure SDK's calls are dependencies inside the step that made them.
        step_ids = {s["id"] for s in step_spans}
        assert any(s["type"] == "RemoteDependencyData" and s["parentId"] in step_ids for s in spans)
    assert len({outcomes[vm]["operationId"] for vm in request_ids}) == 2


def test_without_a_connection_string_nothing_is_sent_and_nothing_is_imported(product_env: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLICATIONINSIGHTS", "PYTHON_APPLICATION"))}
    code = (
        "import sys, function_app; from remediate import telemetry; from remediate.intake.app import get_app; "
        "get_app(); print(telemetry.enabled(), 'opentelemetry.sdk' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env={**env, **product_env}, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "False"]


def post(ingestion: Ingestion, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    import ssl

    context = ssl.create_default_context(cafile=ingestion.ca_cert)
    request = urllib.request.Request(
        f"https://127.0.0.1:{ingestion.port}/v2.1/track", data=body, method="POST", headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, context=context) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def envelope(ikey: str, time: str) -> dict[str, Any]:
    return {
        "ver": 1,
        "name": "Microsoft.ApplicationInsights.Message",
        "time": time,
        "iKey": ikey,
        "tags": {"ai.operation.id": "f364119ed1ff3bcda0d4ee0896cf785f"},
        "data": {"baseType": "MessageData", "baseData": {"ver": 2, "message": "m", "properties": {"a": "1"}}},
    }


def test_the_ingestion_endpoint_refuses_what_breeze_refuses(ingestion: Ingestion) -> None:
    import datetime as dt
    import gzip

    now = dt.datetime.now(dt.UTC).isoformat()
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).isoformat()
    good = envelope(ingestion.instrumentation_key, now)
    status, body = post(ingestion, json.dumps([good, envelope("not-this-resource", now)]).encode())
    assert status == 206 and body["itemsAccepted"] == 1
    assert body["errors"] == [{"index": 1, "statusCode": 400, "message": "Invalid instrumentation key"}]
    status, body = post(ingestion, json.dumps([envelope(ingestion.instrumentation_key, old)]).encode())
    assert status == 400 and body["errors"][0]["message"].startswith("103: ")
    status, body = post(ingestion, gzip.compress(json.dumps([good]).encode()), {"Content-Encoding": "gzip"})
    assert status == 200 and body == {"itemsReceived": 1, "itemsAccepted": 1, "errors": []}
    assert [m["customDimensions"] for m in ingestion.messages()] == [{"a": "1"}, {"a": "1"}]
