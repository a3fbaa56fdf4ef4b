"""A worker process for the crash-consistency tests: the Functions host's queue-trigger loop, run for real.

`python -m tests.crash.worker` reads the product's settings from the environment and serves the request queue
(the `worker` function's job) and its poison queue (the `poison` function's job) the way the Functions host's
queue listener does (azure-webjobs-sdk, `Queues/Listeners/QueueListener.cs`, `QueueListenerFactory.cs` and
`Queues/QueueProcessor.cs`), with its times scaled down:

* a message is received with a visibility timeout (the host's is 10 minutes; `CRASH_VISIBILITY_SECONDS` here)
  and kept invisible while its function runs: the host renews the timeout when it is half gone. So a running
  delivery's own message never comes back; a killed worker's message comes back when the timeout ends;
* a failed delivery is released with host.json's `visibilityTimeout` (1 s here), and after
  `RDPR_MAX_DEQUEUE_COUNT` deliveries it is copied to `<queue>-poison` and deleted;
* a queue whose name ends in `-poison` gets no poison queue of its own: a failed delivery from it is left
  invisible until its receive timeout ends, and is delivered again, for as long as the message lives.

It exits when both queues have been empty for a while. Storage errors in the loop itself are waited out, as the
host does.

`CRASH_PLAN` (JSON: request id -> crash point) makes the process SIGKILL itself at an exact step boundary the
first time a request reaches it (a marker file in `CRASH_DIR` makes it once per request, across processes):

* `after-start:<step>`    the step's `started` row is written, the step has not run
* `before-finish:<step>`  the step ran (a script changed the guest, Azure accepted the restart), its end is
                          not yet written
* `after-outcome`         the outcome is written, the VM row (cooldown, lock) is not
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from azure.storage.queue import QueueClient, QueueMessage

from remediate.azure.clients import AzureClients
from remediate.engine.evidence import activity_log_evidence
from remediate.intake.queue import queue_client
from remediate.intake.worker import handle_message, handle_poison
from remediate.ledger import Ledger
from remediate.model import Outcome, StepResult
from remediate.settings import Settings

PLAN: dict[str, str] = json.loads(os.environ.get("CRASH_PLAN", "{}"))
CRASH_DIR = Path(os.environ.get("CRASH_DIR", "."))
VISIBILITY = int(os.environ.get("CRASH_VISIBILITY_SECONDS", "2"))
RETRY_VISIBILITY = 1  # host.json `visibilityTimeout`, scaled down
BATCH = int(os.environ.get("CRASH_BATCH", "4"))
IDLE_SECONDS = float(os.environ.get("CRASH_IDLE_SECONDS", "1.5"))


def _crash_if(request_id: str, point: str) -> None:
    if PLAN.get(request_id) != point:
        return
    marker = CRASH_DIR / f"{request_id}.crashed"
    if marker.exists():
        return
    marker.write_text(point, encoding="utf-8")
    os.kill(os.getpid(), signal.SIGKILL)


def _install_crash_points() -> None:
    append, update, outcome = Ledger.append_step, Ledger.update_step, Ledger.record_outcome

    def append_step(self: Ledger, request_id: str, index: int, step: StepResult) -> str:
        etag = append(self, request_id, index, step)
        _crash_if(request_id, f"after-start:{step.name}")
        return etag

    def update_step(self: Ledger, request_id: str, index: int, step: StepResult, etag: str) -> str:
        if step.status == "started":
            new = update(self, request_id, index, step, etag)
            _crash_if(request_id, f"after-start:{step.name}")
            return new
        _crash_if(request_id, f"before-finish:{step.name}")
        return update(self, request_id, index, step, etag)

    def record_outcome(self: Ledger, request_id: str, result: Outcome, reason: str, **kw: Any) -> bool:
        wrote = outcome(self, request_id, result, reason, **kw)
        if wrote:
            _crash_if(request_id, "after-outcome")
        return wrote

    Ledger.append_step = append_step  # type: ignore[method-assign]
    Ledger.update_step = update_step  # type: ignore[method-assign]
    Ledger.record_outcome = record_outcome  # type: ignore[method-assign,assignment]


class Host:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ledger = Ledger.from_settings(settings)
        self.clients = AzureClients(settings)
        name = settings.queue_name
        self.main = queue_client(settings, name)
        self.poison = queue_client(settings, f"{name}-poison")

    def run(self) -> None:
        idle_since: float | None = None
        with ThreadPoolExecutor(max_workers=BATCH) as pool:
            in_flight: set[Future[None]] = set()
            while True:
                in_flight = {f for f in in_flight if not f.done()}
                received = 0
                for queue, target in ((self.main, self.poison), (self.poison, None)):
                    free = BATCH - len(in_flight)
                    if free <= 0:
                        break
                    for message in self._receive(queue, free):
                        received += 1
                        in_flight.add(pool.submit(self._deliver, queue, target, message))
                if received or in_flight or not self._empty():
                    idle_since = None
                else:
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since >= IDLE_SECONDS:
                        return
                time.sleep(0.05)

    def _receive(self, queue: QueueClient, count: int) -> list[QueueMessage]:
        try:
            return list(queue.receive_messages(max_messages=min(count, 32), visibility_timeout=VISIBILITY))
        except Exception:
            time.sleep(0.2)  # storage is down: the host waits and polls again
            return []

    def _empty(self) -> bool:
        try:
            counts = [q.get_queue_properties().approximate_message_count for q in (self.main, self.poison)]
        except Exception:
            return False
        return not any(counts)

    def _deliver(self, queue: QueueClient, target: QueueClient | None, message: QueueMessage) -> None:
        body = str(message.content)
        count = message.dequeue_count or 1
        with _KeptInvisible(queue, message) as held:
            try:
                if queue is self.main:
                    handle_message(body, count, self.settings, self.ledger, self.clients)
                else:
                    evidence = activity_log_evidence(self.clients, self.settings)
                    handle_poison(
                        body, self.ledger, count, self.settings.max_dequeue_count, evidence, self.main.send_message
                    )
                failed = False
            except Exception:
                failed = True
        message = held.message  # the newest pop receipt
        with contextlib.suppress(Exception):  # storage is down: the message reappears when its timeout ends
            if not failed:
                queue.delete_message(message)  # a copy that comes back anyway is answered from the ledger
            elif target is None:
                pass  # no poison queue of its own: left invisible until its receive timeout ends
            elif count >= self.settings.max_dequeue_count:
                target.send_message(message.content)
                queue.delete_message(message)
            else:
                queue.update_message(message, visibility_timeout=RETRY_VISIBILITY)


class _KeptInvisible:
    """Renews a message's visibility timeout when half of it is gone, while its delivery runs (the host's
    `UpdateQueueMessageVisibilityCommand`). A SIGKILL stops the renewals with the process."""

    def __init__(self, queue: QueueClient, message: QueueMessage) -> None:
        self.queue = queue
        self.message = message
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True)

    def __enter__(self) -> _KeptInvisible:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _renew(self) -> None:
        while not self._stop.wait(VISIBILITY / 2):
            with contextlib.suppress(Exception):  # storage is down: the host logs it and tries again
                renewed = self.queue.update_message(self.message, visibility_timeout=VISIBILITY)
                self.message = _with_receipt(self.message, renewed)


def _with_receipt(message: QueueMessage, renewed: QueueMessage) -> QueueMessage:
    message.pop_receipt = renewed.pop_receipt
    message.next_visible_on = renewed.next_visible_on
    return message


def main() -> int:
    faulthandler.register(signal.SIGUSR1)  # a stuck worker can be asked where it is
    _install_crash_points()
    Host(Settings.from_env()).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
