"""The request queue: where intake hands over one message per VM and the Functions host fans out workers.

Messages are base64-encoded JSON, the encoding the Functions queue trigger expects by default.

A message lives `message_ttl_seconds` (not Azure's default of seven days), so a request that no delivery
reached can be closed by the reconciler (`queued_stale_seconds` after its last message was sent) knowing that no
copy of its message can still arrive: the lifetime ends one lock lifetime before that threshold. A message sent
later than the request's acceptance records its expiry on the request row (`MessageExpires`), and the reconciler
waits for that too.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import TYPE_CHECKING

from remediate import telemetry
from remediate.ledger import Claim, Ledger, VmState, utcnow
from remediate.model import ConfigurationError, Outcome, RemediationRequest, TransientError, VmId
from remediate.settings import Settings

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient

    from remediate.engine.storm import StormGuard

log = logging.getLogger(__name__)


def message_ttl_seconds(settings: Settings) -> int:
    """How long a request's message lives in the queue: every delivery the host would make (one lock lifetime
    each) but the last, so it ends a lock lifetime before the reconciler may call the request abandoned."""
    lock = settings.lock_minutes * 60
    return lock * max(settings.max_dequeue_count - 1, 1)


def queued_stale_seconds(settings: Settings) -> float:
    """How long after its last message was sent a request nobody ran is closed: the message's lifetime plus one
    lock lifetime, for a delivery that took the message just before it expired (RDPR_LOCK_MINUTES *
    RDPR_MAX_DEQUEUE_COUNT with the defaults: 225 minutes)."""
    return float(message_ttl_seconds(settings) + settings.lock_minutes * 60)


def lifetime(ttl_seconds: int | None, visibility_seconds: int = 0) -> dict[str, int]:
    """`send_message` keywords for a message that lives `ttl_seconds` once visible (None: Azure's default).
    Azure refuses a visibility timeout past the message's expiry, so an invisible message lives that much longer."""
    return {} if ttl_seconds is None else {"time_to_live": ttl_seconds + visibility_seconds}


class RequestQueue:
    """Records each request in the ledger, then queues it. Implements intake's `IntakeSink`."""

    def __init__(
        self,
        queue: QueueClient,
        ledger: Ledger,
        poison: QueueClient | None = None,
        guard: StormGuard | None = None,
        *,
        claim_stale_seconds: float = 60.0,
        message_ttl: int | None = None,
    ) -> None:
        self.queue = queue
        self.poison = poison
        self.ledger = ledger
        # An intake answers within seconds (an action group waits at most 10 s): a claim older than this that
        # never prepared its message belongs to an intake that died.
        self.claim_stale_seconds = claim_stale_seconds
        self.guard = guard  # the storm guard the gate and the workflow share (counted at a request's first change)
        self.message_ttl = message_ttl  # seconds; None: Azure's default (seven days)

    @classmethod
    def from_settings(cls, settings: Settings, ledger: Ledger) -> RequestQueue:
        from remediate.engine.storm import StormGuard

        return cls(
            queue_client(settings, settings.queue_name),
            ledger,
            queue_client(settings, f"{settings.queue_name}-poison"),
            StormGuard.from_settings(settings),  # every trigger counts against the storm budget
            message_ttl=message_ttl_seconds(settings),
        )

    def create(self) -> None:
        """Idempotent; in Azure the Bicep creates the queues, this serves the emulator and first runs."""
        from azure.core.exceptions import ResourceExistsError

        for client in (self.queue, self.poison):
            try:
                if client is not None:
                    client.create_queue()
            except ResourceExistsError:
                pass

    def claim(self, dedup_key: str) -> bool:
        """True when this intake should create the request for `dedup_key`.

        A key already claimed is a duplicate, unless a crash left its claim half done: a claim whose message
        was prepared (the outbox) is finished here (its request queued) and answered as the duplicate it is;
        a claim that never prepared a message and is older than any intake takes is taken over.
        """
        if self.ledger.claim(dedup_key):
            return True
        claim = self.ledger.unfinished_claim(dedup_key)
        if claim is None:
            return False
        if claim.message:
            self.complete_outbox(claim)
            return False
        age = (utcnow() - claim.claimed_at).total_seconds()
        return age >= self.claim_stale_seconds and self.ledger.retake_claim(claim)

    # Coalescing and the cooldown read at intake (the ledger's intake row; never the lock's row).
    def admit(self, request: RemediationRequest, pending_for: dt.timedelta) -> str | None:
        return self.ledger.admit(request, pending_for=pending_for)

    def unclaim(self, dedup_key: str) -> None:
        self.ledger.unclaim(dedup_key)

    def release(self, request: RemediationRequest) -> None:
        self.ledger.release_pending(request.vm, request.request_id)

    def vm_state(self, vm: VmId) -> VmState:
        return self.ledger.vm_state(vm)

    def enqueue(self, request: RemediationRequest) -> None:
        """The outbox entry, the ledger row, then the message: a request is never queued without an audit
        record, and a claimed dedup key never stays without its message (a retry or the reconciler sends it).

        If a write fails, the record is closed as failed (when it exists) and the dedup key is given back, so
        the sender's retry starts clean and nothing stays `queued` forever.
        """
        # The message carries the request's trace (W3C traceparent), so the worker continues it.
        message = json.dumps({**request.to_message(), **telemetry.start_request_trace(request)})
        try:
            if request.dedup_key:
                self.ledger.prepare_claim(request.dedup_key, request.request_id, message)
            self.ledger.record_accepted(request)
            # Not counted against the storm budget here: a request counts when it is about to change its VM.
            # Sent right after the request row: its acceptance time stands for the message's (reconcile.py).
            self.queue.send_message(message, **lifetime(self.message_ttl))
        except Exception as exc:
            self._undo(request, exc)
            raise TransientError(f"the request could not be queued: {exc}") from exc
        if request.dedup_key:
            try:
                self.ledger.confirm_claim(request.dedup_key)
            except TransientError:  # the message is out; the reconciler confirms it (sending a copy is harmless)
                log.warning("could not confirm a dedup key", extra={"request_id": request.request_id})
        log.info(
            "request queued",
            extra={"vm": str(request.vm), "request_id": request.request_id, "trigger": request.trigger.value},
        )

    def complete_outbox(self, claim: Claim) -> None:
        """Finish an outbox entry a crash left: the request row (insert-only), the message, the confirmation.

        A second copy of a message that did go out is harmless: a request runs once under its execution lease
        and a done request is never run again.
        """
        if not claim.message:
            return
        request = RemediationRequest.from_message(json.loads(claim.message))
        self.ledger.record_accepted(request)
        sent = self.queue.send_message(claim.message, **lifetime(self.message_ttl))
        # Sent later than the request was accepted: the reconciler must not close it before this copy expires.
        self.ledger.note(request.request_id, MessageExpires=sent.expires_on)
        self.ledger.confirm_claim(claim.key)
        log.warning("an accepted request's message was sent by the outbox", extra={"request_id": request.request_id})

    def _undo(self, request: RemediationRequest, cause: Exception) -> None:
        try:
            if self.ledger.get(request.request_id) is not None:
                self.ledger.record_outcome(request.request_id, Outcome.FAILED, f"could not be queued: {cause}")
        except Exception:  # the ledger may be what failed; giving the key back matters more
            log.warning(
                "could not close the record of an unqueued request",
                exc_info=True,
                extra={"request_id": request.request_id},
            )
        if request.dedup_key:
            self.ledger.unclaim(request.dedup_key)


def queue_client(settings: Settings, name: str) -> QueueClient:
    """A queue client speaking base64, the encoding the Functions queue trigger expects by default."""
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

    from remediate.ledger import storage_retry_options

    encode, decode = TextBase64EncodePolicy(), TextBase64DecodePolicy()
    verify = settings.emulator_ca_cert if settings.emulator and settings.emulator_ca_cert else True
    retries = storage_retry_options(settings)
    if settings.storage_connection:
        return QueueClient.from_connection_string(
            settings.storage_connection,
            name,
            connection_verify=verify,
            message_encode_policy=encode,
            message_decode_policy=decode,
            **retries,
        )
    if not settings.storage_account:
        raise ConfigurationError("no queue storage: set RDPR_STORAGE_CONNECTION or AzureWebJobsStorage__accountName")
    from remediate.azure.clients import get_clients

    return QueueClient(
        f"https://{settings.storage_account}.queue.core.windows.net",
        name,
        credential=get_clients(settings).credential,
        message_encode_policy=encode,
        message_decode_policy=decode,
        **retries,
    )
