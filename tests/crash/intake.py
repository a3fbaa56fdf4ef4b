"""An intake process for the crash-consistency tests: one alert through the real alert intake, killed (SIGKILL)
at a chosen point between claiming the alert's dedup key and the queue message being confirmed.

`python -m tests.crash.intake <vm resource id> <point>`; points: after-claim, after-prepare, after-accept,
after-send. The alert id is derived from the VM, so the test's retry is the action group's retry.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from typing import Any

from azure.storage.queue import QueueClient

from remediate.intake.queue import RequestQueue, queue_client
from remediate.intake.service import AlertIntake
from remediate.ledger import Ledger
from remediate.settings import Settings
from tests.functions.test_function_app import metric_alert


def alert_id_for(vm_id: str) -> str:
    """One alert per VM, the same id on every post (the action group's retry resends the same alert)."""
    subscription = vm_id.split("/")[2]
    guid = uuid.uuid5(uuid.NAMESPACE_URL, vm_id.lower())
    return f"/subscriptions/{subscription}/providers/Microsoft.AlertsManagement/alerts/{guid}"


def alert_body(vm_id: str) -> bytes:
    return json.dumps(metric_alert(vm_id, alert_id=alert_id_for(vm_id))).encode()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install(point: str) -> None:
    claim, prepare, accept, send = (
        Ledger.claim,
        Ledger.prepare_claim,
        Ledger.record_accepted,
        QueueClient.send_message,
    )

    def claimed(self: Ledger, key: str) -> bool:
        taken = claim(self, key)
        if taken and point == "after-claim":
            _die()
        return taken

    def prepared(self: Ledger, *args: Any) -> None:
        prepare(self, *args)
        if point == "after-prepare":
            _die()

    def accepted(self: Ledger, *args: Any) -> None:
        accept(self, *args)
        if point == "after-accept":
            _die()

    def sent(self: QueueClient, *args: Any, **kwargs: Any) -> Any:
        result = send(self, *args, **kwargs)
        if point == "after-send":
            _die()
        return result

    Ledger.claim = claimed  # type: ignore[method-assign,assignment]
    Ledger.prepare_claim = prepared  # type: ignore[method-assign,assignment]
    Ledger.record_accepted = accepted  # type: ignore[method-assign,assignment]
    QueueClient.send_message = sent  # type: ignore[method-assign]


def main() -> int:
    vm_id, point = sys.argv[1], sys.argv[2]
    _install(point)
    settings = Settings.from_env()
    queue = RequestQueue(queue_client(settings, settings.queue_name), Ledger.from_settings(settings))
    AlertIntake(queue, settings, None).handle(alert_body(vm_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
