"""The request queue: where intake hands over one message per VM and the Functions host fans out workers.

Messages are base64-encoded JSON, the encoding the Functions queue trigger expects by default.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from remediate import telemetry
from remediate.ledger import Ledger
from remediate.model import ConfigurationError, Outcome, RemediationRequest, TransientError
from remediate.settings import Settings

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient

    from remediate.engine.storm import StormGuard

log = logging.getLogger(__name__)


class RequestQueue:
    """Records each request in the ledger, then queues it. Implements intake's `IntakeSink`."""

    def __init__(
        self, queue: QueueClient, ledger: Ledger, poison: QueueClient | None = None, guard: StormGuard | None = None
    ) -> None:
        self.queue = queue
        self.poison = poison
        self.ledger = ledger
        self.guard = guard  # the storm guard: every trigger's requests count against its budget

    @classmethod
    def from_settings(cls, settings: Settings, ledger: Ledger) -> RequestQueue:
        from remediate.engine.storm import StormGuard

        return cls(
            queue_client(settings, settings.queue_name),
            ledger,
            queue_client(settings, f"{settings.queue_name}-poison"),
            StormGuard.from_settings(settings),  # every trigger counts against the storm budget
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
        return self.ledger.claim(dedup_key)

    def enqueue(self, request: RemediationRequest) -> None:
        """The ledger row first, then the message: a request is never queued without an audit record.

        If either write fails, the record is closed as failed (when it exists) and the dedup key is given
        back, so the sender's retry starts clean and nothing stays `queued` forever.
        """
        try:
            self.ledger.record_accepted(request)
            # The message carries the request's trace (W3C traceparent), so the worker continues it.
            message = {**request.to_message(), **telemetry.start_request_trace(request)}
            hold = self.guard.admit() if self.guard is not None else None
            if hold is None:
                self.queue.send_message(json.dumps(message))
            else:  # accepted and kept, not dropped: its message comes back when the budget frees
                from remediate.intake.gate import hold_request

                hold_request(self.queue, self.ledger, request.request_id, json.dumps(message), hold)
        except Exception as exc:
            self._undo(request, exc)
            raise TransientError(f"the request could not be queued: {exc}") from exc
        log.info(
            "request queued",
            extra={"vm": str(request.vm), "request_id": request.request_id, "trigger": request.trigger.value},
        )

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

    encode, decode = TextBase64EncodePolicy(), TextBase64DecodePolicy()
    verify = settings.emulator_ca_cert if settings.emulator and settings.emulator_ca_cert else True
    if settings.storage_connection:
        return QueueClient.from_connection_string(
            settings.storage_connection,
            name,
            connection_verify=verify,
            message_encode_policy=encode,
            message_decode_policy=decode,
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
    )
