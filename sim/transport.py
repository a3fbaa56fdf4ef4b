"""HTTPS plumbing for the emulator: TLS, HTTP/1.1 keep-alive, one thread per connection.

Knows nothing about Azure: every request goes to `app.handle(method, target, headers, body)`, which answers a
`Response` (or asks for the connection to be dropped, as a failing front end does).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import struct
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 120.0  # seconds an idle keep-alive connection is kept open


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering (a TCP reset)


class App(Protocol):
    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Response: ...


class HttpsServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], app: App, context: ssl.SSLContext) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self.context = context
        self._connections: set[ssl.SSLSocket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's own thread, so a slow client never blocks accept().
        request.settimeout(IDLE_TIMEOUT)
        # Headers and body leave in separate writes: without NODELAY, Nagle plus the client's delayed ACK
        # would stall every keep-alive response by tens of milliseconds.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake failed", extra={"client": client_address, "error": str(exc)})
            return
        with self._connections_lock:
            self._connections.add(tls)
        try:
            handler: Any = self.RequestHandlerClass
            handler(tls, client_address, self)
        finally:
            with self._connections_lock:
                self._connections.discard(tls)
            tls.close()

    def close_connections(self) -> None:
        """Unblock every keep-alive connection still waiting for a request (used by stop())."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        del request  # a client that vanished mid-request is routine, not an emulator fault
        log.debug("connection error", extra={"client": client_address, "error": repr(sys.exc_info()[1])})


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    server: HttpsServer

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        body = self._read_body()
        if body is None:
            return
        response = self.server.app.handle(self.command, self.path, _HeaderView(self.headers), body)
        if response.drop:
            self._reset()
            return
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def _read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self._plain_error(411, "LengthRequired", "Send a Content-Length; chunked bodies are not supported.")
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._plain_error(400, "InvalidRequestContent", "The Content-Length header is not a number.")
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _plain_error(self, status: int, code: str, message: str) -> None:
        response = Response(
            status,
            json.dumps({"error": {"code": code, "message": message}}).encode(),
            {"Content-Type": "application/json; charset=utf-8"},
        )
        self.close_connection = True
        self.send_response(status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(response.body)

    def _reset(self) -> None:
        """Drop the connection with a TCP reset, as a failing front end does."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)  # noqa: G003 - the base class hands us a %-format


class _HeaderView(Mapping[str, str]):
    """Case-insensitive read-only view of the request headers."""

    def __init__(self, message: Message) -> None:
        self._message = message

    def __getitem__(self, key: str) -> str:
        value = self._message.get(key)
        if value is None:
            raise KeyError(key)
        return str(value)

    def get(self, key: str, default: Any = None) -> Any:
        value = self._message.get(key)
        return default if value is None else str(value)

    def __iter__(self) -> Any:
        return iter(self._message.keys())

    def __len__(self) -> int:
        return len(self._message.keys())
