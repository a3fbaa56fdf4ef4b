"""The request queue: where intake hands over one message per VM and the Functions host fans out workers.

Messages are base64-encoded JSON, the encoding the Functions queue trigger expects by default.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from remediate.ledger import Ledger
from remediate.model import ConfigurationError, Outcome, RemediationRequest, TransientError
from remediate.settings import Settings

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient

log = logging.getLogger(__name__)


class RequestQueue:
    """Records each request in the ledger, then queues it. Implements intake's `IntakeSink`."""

    def __init__(self, queue: QueueClient, ledger: Ledger, poison: QueueClient | None = None) -> None:
        self.queue = queue
        self.poison = poison
        self.ledger = ledger

    @classmethod
    def from_settings(cls, settings: Settings, ledger: Ledger) -> RequestQueue:
        return cls(
            queue_client(settings, settings.queue_name), ledger, queue_client(settings, f"{settings.queue_name}-poison")
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

        If the message cannot be sent, the record is closed as failed and the dedup key (if any) is given
        back, so the caller's retry starts clean and nothing stays `queued` forever.
        """
        from azure.core.exceptions import AzureError

        self.ledger.record_accepted(request)
        try:
            self.queue.send_message(json.dumps(request.to_message()))
        except AzureError as exc:
            self.ledger.record_outcome(request.request_id, Outcome.FAILED, f"could not be queued: {exc}")
            if request.dedup_key:
                self.ledger.unclaim(request.dedup_key)
            raise TransientError(f"the request queue is unavailable: {exc}") from exc
        log.info(
            "request queued",
            extra={"vm": str(request.vm), "request_id": request.request_id, "trigger": request.trigger.value},
        )


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
