"""The execution lease: one request runs in one place at a time.

The per-VM lock is re-entrant for a request id (a redelivery must be able to resume), so on its own it lets
two deliveries of the same request (a storage retry of `send_message` whose answer was lost leaves two
messages) run side by side. The lease closes that: each execution (one delivery in one process) takes the
request's lease with an ETag-conditional write and renews it from a heartbeat thread while it works. A
SIGKILLed worker stops renewing, so its lease runs out after `RDPR_LEASE_SECONDS` and the next delivery takes
over. Before each step the workflow checks that it still holds the lease; the journal's conditional rows are
the second fence for the moment between that check and the write.
"""

from __future__ import annotations

import logging
import threading
import uuid

from remediate.ledger import ExecutionConflict, Ledger
from remediate.model import TransientError

log = logging.getLogger(__name__)


class Lease:
    def __init__(self, ledger: Ledger, request_id: str, seconds: float) -> None:
        self._ledger = ledger
        self._request_id = request_id
        self._seconds = seconds
        self.holder = uuid.uuid4().hex  # this execution, distinct from every other delivery of the request
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None
        self._held = False

    def acquire(self) -> None:
        """Take the lease or raise ExecutionConflict (another execution runs the request right now)."""
        taken, holder = self._ledger.take_lease(self._request_id, self.holder, self._seconds)
        if not taken:
            raise ExecutionConflict(
                f"request {self._request_id} is being run by another execution ({holder}); not run twice"
            )
        self._held = True
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self._request_id}", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Renew now; raise ExecutionConflict if another execution took the lease over (ours ran out)."""
        if self._lost:
            raise ExecutionConflict(self._lost)
        taken, holder = self._ledger.take_lease(self._request_id, self.holder, self._seconds)
        if not taken:
            self._lost = f"the execution lease of {self._request_id} was taken over by {holder}; this one stops"
            raise ExecutionConflict(self._lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._held:
            try:
                self._ledger.drop_lease(self._request_id, self.holder)
            except TransientError:
                log.warning("could not drop an execution lease; it expires", extra={"request_id": self._request_id})

    def _heartbeat(self) -> None:
        while not self._stop.wait(self._seconds / 3):
            try:
                taken, holder = self._ledger.take_lease(self._request_id, self.holder, self._seconds)
            except TransientError:
                continue  # storage is down: the next step's check() decides; the lease may still be ours
            if not taken:
                self._lost = f"the execution lease of {self._request_id} was taken over by {holder}; this one stops"
                return
