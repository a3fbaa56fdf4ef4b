"""The gate between the queue and the engine: the storm guard's holds and the fleet-wide slots.

A queue message comes back later, rather than waiting in a worker, whenever its request may not start yet:

* held by the storm guard (the workflow stopped before its first change, `Held`): it is re-sent invisible until
  the budget frees (`held` in the ledger, with the reason); back, it runs only if the budget has room by then;
* every slot taken (`RDPR_MAX_ACTIVE`): it is re-sent invisible for `RDPR_SLOT_RETRY_SECONDS`;
* its reboot waits for the VM's change window: it is re-sent invisible until the window opens (`waiting`).

Re-sending (rather than raising) keeps the wait from counting as a failed delivery: a request waiting for room
never reaches the poison queue. The new message is sent before the trigger returns and the host deletes the old
one, so a crash in between leaves two messages for one request, never none.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from remediate import telemetry
from remediate.engine.slots import Slots
from remediate.engine.storm import Held, Hold, StormGuard
from remediate.engine.windows import OutsideWindow
from remediate.intake import approval
from remediate.intake.queue import lifetime, message_ttl_seconds
from remediate.intake.worker import handle_message
from remediate.ledger import AWAITING_APPROVAL, DONE, HELD, QUEUED, WAITING, Ledger, utcnow
from remediate.model import NotFound, PermanentError, RemediationRequest
from remediate.settings import Settings

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient

    from remediate.azure.clients import AzureClients

log = logging.getLogger(__name__)
MAX_INVISIBLE = 7 * 24 * 3600 - 60  # a queue message may stay invisible for at most seven days


@dataclass
class Gate:
    settings: Settings
    ledger: Ledger
    clients: AzureClients
    queue: QueueClient
    slots: Slots
    guard: StormGuard

    def deliver(self, body: str, dequeue_count: int) -> None:
        """What the queue trigger calls: wait for room (by coming back later), then run the request."""
        try:
            request = RemediationRequest.from_message(json.loads(body))
        except (ValueError, PermanentError):
            handle_message(body, dequeue_count, self.settings, self.ledger, self.clients)  # records and drops it
            return
        record = self.ledger.get(request.request_id)
        state = record.state if record is not None else None
        if self._not_yet(request, state, body):
            return
        needs_slot = state != DONE and not (request.options.dry_run or self.settings.dry_run)
        lease = self.slots.try_acquire(request.vm, request.request_id) if needs_slot else None
        if needs_slot and lease is None:
            self._wait_for_slot(request, body, state)
            return
        try:
            handle_message(body, dequeue_count, self.settings, self.ledger, self.clients, self.guard)
        except Held as held:
            # Stopped before its first change, its VM untouched: back when the budget has room again.
            hold_request(self.queue, self.ledger, request.request_id, body, held.hold)
        except OutsideWindow as wait:
            # Not a failure: the message comes back when the window opens (the queue allows 7 days at most).
            seconds = (wait.opens_at - utcnow()).total_seconds()
            put_back(self.queue, self.ledger, request.request_id, body, min(max(1, math.ceil(seconds)), MAX_INVISIBLE))
            self.ledger.mark_waiting(request.request_id, WAITING, wait.reason, WaitingUntil=wait.opens_at)
            log.info("request waits for its change window", extra={"request_id": request.request_id})
        finally:
            if lease is not None:
                self.slots.release(lease)

    def _not_yet(self, request: RemediationRequest, state: str | None, body: str) -> bool:
        """True when the request may not run yet (held, awaiting approval, just diagnosed): its message is back in
        the queue, or it ended (an expired approval, a diagnosis with nothing to approve)."""
        if state == HELD:
            # Counted only when it reaches its first change again; while the budget is still full nothing runs.
            hold = self.guard.check()
            if hold is not None:
                hold_request(self.queue, self.ledger, request.request_id, body, hold)
                return True
            self.ledger.mark_waiting(request.request_id, QUEUED, "released: the storm guard's budget has room again")
            telemetry.control_event("request released", request.request_id, "storm budget has room")
        if state == AWAITING_APPROVAL:
            expired = approval.expired(self.ledger, request.request_id)
            if not (expired and approval.close_expired(self.ledger, request.request_id)):
                # Delivered early (a duplicate), or decided a moment before it expired: its message comes back.
                put_back(self.queue, self.ledger, request.request_id, body, self.settings.slot_retry_seconds)
            return True
        approval.withdraw_if_stale(self.settings, self.ledger, request, state)
        if state != DONE and approval.needs_approval(self.settings, self.ledger, request):
            waiting = approval.diagnose_and_wait(self.settings, self.ledger, self.clients, request)
            if waiting is not None:
                put_back(self.queue, self.ledger, request.request_id, body, min(waiting[1], MAX_INVISIBLE))
            return True
        if state == WAITING:
            # Back from its change-window wait: queued again, so the workflow marks it running as usual.
            self.ledger.mark_waiting(request.request_id, QUEUED, "back from waiting for its change window")
        return False

    def _wait_for_slot(self, request: RemediationRequest, body: str, state: str | None) -> None:
        delay = self.settings.slot_retry_seconds
        # Nobody releases a slot wait early: no receipt kept. Its lifetime and expiry keep the reconciler from
        # closing the request while this copy can still arrive (remediate.intake.queue).
        sent = self.queue.send_message(
            body, visibility_timeout=delay, **lifetime(message_ttl_seconds(self.settings), delay)
        )
        if state == WAITING:
            # Back from its change window with a repaired VM and no slot yet: the VM stays reserved for it while
            # it waits for a slot too, or another request could start on it before its reboot.
            taken, _vm = self.ledger.acquire(request.vm, request.request_id, self.settings.lock_minutes)
            if not taken:
                log.warning("lost the VM's lock while waiting for a slot", extra={"request_id": request.request_id})
        if state not in (None, QUEUED):
            # A duplicate (or resumed) delivery of a request that started: its state is the running delivery's.
            log.info("no slot free for a second delivery", extra={"request_id": request.request_id})
            return
        self.ledger.mark_waiting(
            request.request_id,
            QUEUED,
            f"waiting for a slot: {self.settings.max_active} remediations are active (RDPR_MAX_ACTIVE); "
            f"tried again every {delay} s",
            MessageExpires=sent.expires_on,
        )
        log.info("no slot free; request put back", extra={"request_id": request.request_id, "delay_seconds": delay})


def put_back(queue: QueueClient, ledger: Ledger, request_id: str, body: str, seconds: int) -> None:
    """Send the request's message again, invisible for `seconds`; its id and receipt go on the request row so
    an operator's release (or approval) can make it visible at once."""
    sent = queue.send_message(body, visibility_timeout=seconds)
    ledger.note(request_id, MessageId=sent.id, PopReceipt=sent.pop_receipt, MessageExpires=sent.expires_on)


def hold_request(queue: QueueClient, ledger: Ledger, request_id: str, body: str, hold: Hold) -> None:
    """Record the hold first, then send the message invisible until the budget frees: a held request always has
    its message, so it runs when the window passes even if nobody releases it."""
    ledger.mark_waiting(request_id, HELD, hold.reason, HeldUntil=hold.until)
    put_back(queue, ledger, request_id, body, hold.delay_seconds(utcnow()))
    telemetry.control_event("request held", request_id, hold.reason)
    log.warning("request held by the storm guard", extra={"request_id": request_id, "until": hold.until.isoformat()})


class NotHeld(PermanentError):
    """Releasing a request that is not held: the caller's mistake, nothing changed."""


def release(ledger: Ledger, queue: QueueClient, guard: StormGuard, request_id: str, who: str, why: str) -> dt.datetime:
    """An operator releases a held request now: counted against the budget at its first change, never refused
    by it (the request row says who released it)."""
    from azure.core.exceptions import HttpResponseError

    record = ledger.get(request_id)
    if record is None:
        raise NotFound(f"request_id: no request {request_id} in the ledger")
    if record.state != HELD:
        raise NotHeld(f"request_id: request {request_id} is not held (state {record.state})")
    del guard  # counted by the workflow, at the change the release lets through
    now = utcnow()
    ledger.mark_waiting(
        request_id, QUEUED, f"released by {who} at {now.isoformat(timespec='seconds')}: {why}", StormReleased=who
    )
    message = ledger.request_fields(request_id, "MessageId", "PopReceipt")
    try:
        if message.get("MessageId") and message.get("PopReceipt"):
            queue.update_message(message["MessageId"], pop_receipt=message["PopReceipt"], visibility_timeout=0)
    except HttpResponseError:
        # A worker has the message in hand (it reads the request as queued and runs it) or already re-sent it.
        log.info("held message not made visible; it runs at its next delivery", extra={"request_id": request_id})
    telemetry.control_event("request released", request_id, f"by {who}: {why}")
    return now
