"""Application Insights ingestion ("Breeze") for tests and the demo: the track API a real exporter posts to.

The product's telemetry goes through the unmodified `azure-monitor-opentelemetry` exporter, pointed here by an
ordinary connection string (`InstrumentationKey=...;IngestionEndpoint=https://127.0.0.1:PORT/`). What the
exporter sends and what it expects back, with the sources:

* `POST {IngestionEndpoint}/v2.1/track`, a JSON array of envelopes: the exporter's generated client
  (azure-sdk-for-python, sdk/monitor/azure-monitor-opentelemetry-exporter, `_generated/exporter/_client.py`
  builds `{host}/{apiVersion}` with api version `v2.1`; `_operations.py` appends `/track`).
* Envelope fields `ver`, `name`, `time`, `iKey`, `tags` (`ai.operation.id` is the trace id), `data.baseType` and
  `data.baseData.properties` (customDimensions): azure-rest-api-specs
  specification/applicationinsights/data-plane/Monitor.Exporters/preview/2020-09-15_Preview/examples/track.json.
* Answers `{"itemsReceived", "itemsAccepted", "errors": [{"index", "statusCode", "message"}]}`: 200 when all
  were accepted, 206 when some were not, 400 when none was; an envelope older than 48 hours is refused with
  "103: Field 'time' on type 'Envelope' is older than the allowed min date" (same example file).
* The Python exporter posts plain JSON (its pipeline has no compression policy: `export/_base.py`); a body sent
  with `Content-Encoding: gzip` is decoded as HTTP defines it (RFC 9110, section 8.4).

Unkind where Azure is: an envelope whose `iKey` is not this resource's is refused, not stored.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import ssl
import tempfile
import threading
import uuid
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sim.certs import server_certificate
from sim.transport import HttpsServer, Response

_JSON = "application/json; charset=utf-8"
MAX_AGE = dt.timedelta(milliseconds=172_800_000)  # the 48 hours of the spec example's error 103


class Ingestion:
    """One Application Insights resource's ingestion endpoint, on a loopback port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.instrumentation_key = str(uuid.uuid4())
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self._envelopes: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self._server: HttpsServer | None = None
        self._thread: threading.Thread | None = None
        self._tempdir: Path | None = None
        self.ca_cert = ""

    # --- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> Ingestion:
        cert_pem, key_pem = server_certificate()
        self._tempdir = Path(tempfile.mkdtemp(prefix="rdpr-ingestion-"))
        cert_path, key_path = self._tempdir / "ca.pem", self._tempdir / "key.pem"
        cert_path.write_bytes(cert_pem)
        key_path.write_bytes(key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_path, key_path)
        key_path.unlink()
        self.ca_cert = str(cert_path)
        self._server = HttpsServer((self.host, self.port), self, context)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="sim-ingestion", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server.server_close()
            self._server.close_connections()
            self._server = None

    def __enter__(self) -> Ingestion:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def connection_string(self) -> str:
        return f"InstrumentationKey={self.instrumentation_key};IngestionEndpoint=https://{self.host}:{self.port}/"

    # --- what arrived -----------------------------------------------------------------------------------

    def envelopes(self, base_type: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._envelopes)
        return [e for e in items if base_type is None or e.get("data", {}).get("baseType") == base_type]

    def messages(self) -> list[dict[str, Any]]:
        """Log records (`traces` in Application Insights): message, severity, customDimensions, operation id."""
        return [_row(e) for e in self.envelopes("MessageData")]

    def spans(self) -> list[dict[str, Any]]:
        """Spans (`requests` and `dependencies`): name, id, customDimensions, operation id and parent."""
        return [_row(e) for e in self.envelopes() if e["data"]["baseType"] in ("RequestData", "RemoteDependencyData")]

    # --- the track API ----------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Response:
        path = target.split("?", 1)[0].rstrip("/").lower()
        if method != "POST" or path not in ("/v2.1/track", "/v2/track"):
            return _answer(404, {"itemsReceived": 0, "itemsAccepted": 0, "errors": []})
        try:
            envelopes = _decode(body, headers.get("Content-Encoding", ""))
        except ValueError as exc:
            return _answer(400, {"itemsReceived": 0, "itemsAccepted": 0, "errors": [_error(0, 400, str(exc))]})
        errors = []
        now = dt.datetime.now(dt.UTC)
        for index, envelope in enumerate(envelopes):
            problem = self._problem(envelope, now)
            if problem:
                errors.append(_error(index, 400, problem))
                with self._lock:
                    self.rejected.append({"envelope": envelope, "reason": problem})
                continue
            with self._lock:
                self._envelopes.append(envelope)
        accepted = len(envelopes) - len(errors)
        status = 200 if not errors else 206 if accepted else 400
        return _answer(status, {"itemsReceived": len(envelopes), "itemsAccepted": accepted, "errors": errors})

    def _problem(self, envelope: Any, now: dt.datetime) -> str | None:
        if not isinstance(envelope, dict) or not isinstance(envelope.get("data"), dict):
            return "envelope is not an object with data"
        if envelope.get("iKey") != self.instrumentation_key:
            return "Invalid instrumentation key"
        if not envelope.get("name") or not envelope["data"].get("baseType"):
            return "Field 'name' or 'data.baseType' on type 'Envelope' is required"
        try:
            sent = dt.datetime.fromisoformat(str(envelope.get("time")).replace("Z", "+00:00"))
        except ValueError:
            return "Field 'time' on type 'Envelope' is not a valid date"
        if sent.tzinfo is None or now - sent > MAX_AGE:
            return "103: Field 'time' on type 'Envelope' is older than the allowed min date"
        return None


def _decode(body: bytes, encoding: str) -> list[Any]:
    if encoding.strip().lower() == "gzip":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"body is not gzip: {exc}") from None
    try:
        data = json.loads(body.decode("utf-8", errors="strict"))
    except ValueError as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    return data if isinstance(data, list) else [data]


def _row(envelope: dict[str, Any]) -> dict[str, Any]:
    base = envelope["data"]["baseData"]
    tags = envelope.get("tags", {})
    return {
        "type": envelope["data"]["baseType"],
        "name": base.get("name"),
        "message": base.get("message"),
        "id": base.get("id"),
        "success": base.get("success"),
        "customDimensions": dict(base.get("properties") or {}),
        "operationId": tags.get("ai.operation.id"),
        "parentId": tags.get("ai.operation.parentId"),
    }


def _error(index: int, status: int, message: str) -> dict[str, Any]:
    return {"index": index, "statusCode": status, "message": message}


def _answer(status: int, body: dict[str, Any]) -> Response:
    return Response(status, json.dumps(body).encode(), {"Content-Type": _JSON})
