"""A local stand-in for the Azure Functions host's queue trigger, for tests, the demo and benchmarks.

The Functions host cannot be installed here, so this plays its documented part: receive messages from the
queue (Azurite), invoke the decorated queue-trigger function with a `func.QueueMessage`, delete the message
when the function returns, let it reappear after the visibility timeout when the function raises, and move it
to `<queue>-poison` once it has been delivered `maxDequeueCount` times.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func
from azure.functions.queue import QueueMessage as TriggerMessage
from azure.storage.queue import QueueClient, QueueMessage

log = logging.getLogger(__name__)


@dataclass
class HostStats:
    invocations: int = 0
    succeeded: int = 0
    failed_deliveries: int = 0
    poisoned: list[str] = field(default_factory=list)  # message ids moved to the poison queue


class LocalQueueHost:
    def __init__(
        self,
        function: Callable[[func.QueueMessage], Any],
        queue: QueueClient,
        poison: QueueClient,
        *,
        max_dequeue_count: int = 5,
        batch_size: int = 8,
        retry_visibility_seconds: int = 1,
    ) -> None:
        self._function = function
        self._queue = queue
        self._poison = poison
        self._max_dequeue = max_dequeue_count
        self._batch = batch_size
        self._retry_visibility = retry_visibility_seconds
        self._lock = threading.Lock()
        self.stats = HostStats()

    def drain(self, timeout: float = 120.0, idle_seconds: float = 0.5) -> HostStats:
        """Process until the queue has been empty, with nothing in flight, for `idle_seconds`."""
        deadline = time.monotonic() + timeout
        idle_since: float | None = None
        with ThreadPoolExecutor(max_workers=self._batch) as pool:
            in_flight: set[Future[None]] = set()
            while time.monotonic() < deadline:
                for done in [f for f in in_flight if f.done()]:
                    done.result()  # a failure of this stand-in itself must surface, not vanish in a future
                in_flight = {f for f in in_flight if not f.done()}
                free = self._batch - len(in_flight)
                messages = (
                    list(self._queue.receive_messages(max_messages=min(32, free), visibility_timeout=300))
                    if free > 0
                    else []
                )
                for message in messages:
                    in_flight.add(pool.submit(self._deliver, message))
                if messages or in_flight:
                    idle_since = None
                else:
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since >= idle_seconds:
                        return self.stats
                time.sleep(0.05)
        raise TimeoutError(f"the queue did not drain within {timeout} s: {self.stats}")

    def _deliver(self, message: QueueMessage) -> None:
        body = message.content if isinstance(message.content, bytes) else str(message.content).encode()
        # The class the host itself passes to a queue-triggered function: it carries dequeue_count.
        trigger_message = TriggerMessage(  # type: ignore[no-untyped-call]  # the library leaves it untyped
            id=message.id, body=body, dequeue_count=message.dequeue_count, pop_receipt=message.pop_receipt
        )
        with self._lock:
            self.stats.invocations += 1
        try:
            self._function(trigger_message)
        except Exception:
            log.warning(
                "delivery failed",
                exc_info=True,
                extra={"message_id": message.id, "dequeue_count": message.dequeue_count},
            )
            self._after_failure(message)
            return
        self._queue.delete_message(message)
        with self._lock:
            self.stats.succeeded += 1

    def _after_failure(self, message: QueueMessage) -> None:
        with self._lock:
            self.stats.failed_deliveries += 1
        if (message.dequeue_count or 0) >= self._max_dequeue:
            self._poison.send_message(message.content)
            self._queue.delete_message(message)
            with self._lock:
                self.stats.poisoned.append(message.id)
            return
        self._queue.update_message(message, visibility_timeout=self._retry_visibility)
