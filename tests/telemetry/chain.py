"""A Function process in miniature, for the telemetry tests: run as `python -m tests.telemetry.chain VM_ID...`.

Posts the VMs to the runbook endpoint (the decorated `remediations` function), drains the queue through the
decorated `worker` function, flushes telemetry and prints the endpoint's answer. It runs in its own process
because OpenTelemetry's providers are process-wide: the test gives it the settings and the connection string.
"""

from __future__ import annotations

import json
import sys

import azure.functions as func

import function_app
from remediate import telemetry
from remediate.intake.app import get_app
from sim.appservice import operator_headers
from sim.host import LocalQueueHost


def main(vms: list[str]) -> int:
    app = get_app()  # the first invocation configures telemetry, as in the Function
    app.queue.create()
    request = func.HttpRequest(
        "POST",
        "https://localhost/api/remediations",
        headers=operator_headers(),
        params={},
        route_params={},
        body=json.dumps({"vms": vms, "reason": "telemetry test"}).encode(),
    )
    response = function_app.remediations(request)
    assert app.queue.poison is not None
    host = LocalQueueHost(
        function_app.worker,
        app.queue.queue,
        app.queue.poison,
        max_dequeue_count=app.settings.max_dequeue_count,
        retry_visibility_seconds=0,
    )
    host.drain(timeout=120)
    telemetry.flush()
    print(response.get_body().decode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
