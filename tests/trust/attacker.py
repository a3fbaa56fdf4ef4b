"""A second loopback HTTPS server standing in for an attacker who wants the product's bearer token.

It presents a certificate the product's clients trust (the emulator's, made once per process), so that if a
client were willing to go there, TLS would succeed and the `Authorization` header would arrive. It counts every
TCP connection it accepts, before any TLS, and keeps every header it is sent.
"""

from __future__ import annotations

import socket
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from sim.certs import server_certificate


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.context = context
        self.connections = 0
        self.tokens: list[str] = []
        self.lock = threading.Lock()

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        with self.lock:
            self.connections += 1
        return self.context.wrap_socket(sock, server_side=True), address


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _answer(self) -> None:
        with self.server.lock:
            self.server.tokens.append(self.headers.get("Authorization", ""))
        # An error ends a client's polling at once, so a client that does come here fails fast, not forever.
        body = b'{"error": {"code": "NotFound", "message": "gotcha"}}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class Attacker:
    def __init__(self) -> None:
        cert_pem, key_pem = server_certificate()
        self._dir = Path(tempfile.mkdtemp(prefix="rdpr-attacker-"))
        (self._dir / "cert.pem").write_bytes(cert_pem)
        (self._dir / "key.pem").write_bytes(key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._dir / "cert.pem", self._dir / "key.pem")
        self._server = _Server(context)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def connections(self) -> int:
        with self._server.lock:
            return self._server.connections

    @property
    def tokens(self) -> list[str]:
        with self._server.lock:
            return list(self._server.tokens)

    def __enter__(self) -> Attacker:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        for path in self._dir.iterdir():
            path.unlink()
        self._dir.rmdir()


def reachable(url: str) -> bool:
    """The attacker really listens: a plain connect succeeds (so zero connections is the client's choice)."""
    host, port = url.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=2):
        return True
