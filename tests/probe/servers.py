"""Local servers and certificates for the probe's tests: each behaves like one kind of real (or broken) host.

The wire format is written out here independently of `remediate.probe`, so the tests check the probe
against a second reading of MS-RDPBCGR rather than against itself.
"""

from __future__ import annotations

import datetime as dt
import selectors
import socket
import ssl
import struct
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# --- Certificates ----------------------------------------------------------------------------------------

_KEY = ec.generate_private_key(ec.SECP256R1())  # EC keys are instant to make; RSA would slow every test
_CA_KEY = ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class CertBundle:
    cert: x509.Certificate
    cert_pem: bytes
    key_pem: bytes

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


def make_certificate(
    common_name: str,
    not_before: dt.datetime,
    not_after: dt.datetime,
    *,
    issued_by_ca: bool = False,
    forged_self_name: bool = False,
) -> CertBundle:
    """A server certificate. `issued_by_ca`: signed by a separate CA; `forged_self_name`: issuer equals
    subject, but signed by a key other than its own (looks self-signed, is not)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")]) if issued_by_ca else name
    signer = _CA_KEY if issued_by_ca or forged_self_name else _KEY
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(signer, hashes.SHA256())
    )
    key_pem = _KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return CertBundle(cert, cert.public_bytes(serialization.Encoding.PEM), key_pem)


def server_context(certificate: CertBundle, directory: Path, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A TLS server context for `certificate`; `version` pins one TLS version (e.g. a legacy TLS 1.0 host)."""
    cert_file = directory / f"{certificate.cert.serial_number}.pem"
    key_file = directory / f"{certificate.cert.serial_number}.key"
    cert_file.write_bytes(certificate.cert_pem)
    key_file.write_bytes(certificate.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0: deprecated, still out there
            context.minimum_version = context.maximum_version = version
        context.set_ciphers("ALL:@SECLEVEL=0")  # TLS 1.0 needs the legacy security level with OpenSSL 3
    context.load_cert_chain(cert_file, key_file)
    return context


# --- Wire format -----------------------------------------------------------------------------------------

CONNECTION_REQUEST_BYTES = 19


def tpkt(tpdu: bytes) -> bytes:
    return struct.pack(">BBH", 3, 0, 4 + len(tpdu)) + tpdu


def connection_confirm(negotiation: bytes = b"") -> bytes:
    """TPKT + X.224 Connection Confirm, with optional RDP negotiation data."""
    return tpkt(bytes([6 + len(negotiation), 0xD0, 0, 0, 0x12, 0x34, 0]) + negotiation)


def neg_rsp(protocol: int) -> bytes:
    return struct.pack("<BBHI", 0x02, 0x01, 8, protocol)


def neg_failure(code: int) -> bytes:
    return struct.pack("<BBHI", 0x03, 0, 8, code)


TLS_HANDSHAKE_FAILURE_ALERT = bytes([21, 3, 3, 0, 2, 2, 40])


# --- The server ------------------------------------------------------------------------------------------


@dataclass
class Connection:
    """What one client did: the bytes it sent before TLS, and what it did inside TLS."""

    request: bytes = b""
    tls_application_data: bytes = b""
    tls_closed_cleanly: bool | None = None  # True: the client sent close_notify


Handler = Callable[[socket.socket, Connection], None]


@dataclass
class FakeServer:
    """A loopback TCP server running `handler` on its own thread for every connection."""

    handler: Handler
    host: str = "127.0.0.1"
    connections: list[Connection] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._listener = socket.create_server((self.host, 0), family=family, backlog=64)
        self.port: int = self._listener.getsockname()[1]
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._acceptor = threading.Thread(target=self._accept_loop, name="fake-rdp-accept", daemon=True)
        self._acceptor.start()

    @property
    def endpoint(self) -> tuple[str, int]:
        return self.host, self.port

    def settle(self) -> None:
        """Wait until every connection accepted so far has been handled (before reading its record)."""
        for thread in list(self._threads):
            thread.join(timeout=5)

    def stop(self) -> None:
        self._stop.set()
        self._wake_writer.send(b"x")  # ends the accept loop's select() at once
        self._acceptor.join(timeout=5)
        self._listener.close()
        self._wake_reader.close()
        self._wake_writer.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while True:
                selector.select()
                if self._stop.is_set():
                    return
                conn, _ = self._listener.accept()
                record = Connection()
                self.connections.append(record)
                thread = threading.Thread(target=self._serve, args=(conn, record), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _serve(self, conn: socket.socket, record: Connection) -> None:
        conn.settimeout(5)  # no handler may outlive a test by much, whatever the client does
        try:
            self.handler(conn, record)
        except (OSError, ValueError) as exc:
            self.errors.append(exc)
        finally:
            conn.close()


# --- Behaviours ------------------------------------------------------------------------------------------


def read_request(conn: socket.socket, record: Connection) -> None:
    """Read the client's TPKT (header first, then the length it announces)."""
    header = _recv_exactly(conn, 4)
    record.request = header + _recv_exactly(conn, int.from_bytes(header[2:4], "big") - 4)


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("client closed early")
        data += chunk
    return data


def _wait_for_close(conn: socket.socket) -> None:
    while conn.recv(4096):
        pass


def rdp(reply: bytes, tls: ssl.SSLContext | None = None) -> Handler:
    """Answer the Connection Request with `reply`; then, given a context, serve TLS until the client closes."""

    def handle(conn: socket.socket, record: Connection) -> None:
        read_request(conn, record)
        conn.sendall(reply)
        if tls is None:
            _wait_for_close(conn)
            return
        with tls.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False) as session:
            try:
                while chunk := session.recv(4096):
                    record.tls_application_data += chunk
                record.tls_closed_cleanly = True  # recv() gave b"": the client's close_notify
                session.unwrap().close()
            except ssl.SSLEOFError:
                record.tls_closed_cleanly = False

    return handle


def tls_then_alert(conn: socket.socket, record: Connection) -> None:
    """Select TLS, then refuse the ClientHello with a fatal alert (a server with TLS 1.2 disabled)."""
    read_request(conn, record)
    conn.sendall(connection_confirm(neg_rsp(0x1)))
    conn.recv(4096)
    conn.sendall(TLS_HANDSHAKE_FAILURE_ALERT)


def tls_then_hang_up(conn: socket.socket, record: Connection) -> None:
    """Select TLS, then drop the connection as soon as the ClientHello arrives."""
    read_request(conn, record)
    conn.sendall(connection_confirm(neg_rsp(0x1)))
    conn.recv(4096)


def http(conn: socket.socket, record: Connection) -> None:
    record.request = conn.recv(4096)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def silent(conn: socket.socket, record: Connection) -> None:
    """Accept, read, never answer (until the client gives up)."""
    read_request(conn, record)
    _wait_for_close(conn)


def hang_up(conn: socket.socket, record: Connection) -> None:
    """Read the request and close without a word (FIN)."""
    read_request(conn, record)


def reset(conn: socket.socket, record: Connection) -> None:
    """Reset the connection at once (RST), as a host that turns connections away."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def huge_tpkt(conn: socket.socket, record: Connection) -> None:
    """Announce a 65,535-byte TPKT and keep sending: the probe must not read (or buffer) it all."""
    read_request(conn, record)
    conn.sendall(b"\x03\x00\xff\xff" + b"\x00" * 60_000)
    _wait_for_close(conn)


def short_tpkt(conn: socket.socket, record: Connection) -> None:
    """Announce a 19-byte Connection Confirm, send 11 bytes, then stall."""
    read_request(conn, record)
    conn.sendall(b"\x03\x00\x00\x13" + connection_confirm()[4:])
    _wait_for_close(conn)


class SlowRdp:
    """Like `rdp`, after holding the connection for `delay` seconds, counting how many are held at once.

    While the server holds a connection, its client is still waiting for the negotiation reply, so
    `max_held` is exactly the client's concurrency; the server's own handler threads may outlive a closed
    connection for a moment under load, which is why they are not what is counted.
    """

    def __init__(self, reply: bytes, tls: ssl.SSLContext, delay: float) -> None:
        self._inner = rdp(reply, tls)
        self._delay = delay
        self._lock = threading.Lock()
        self._held = 0
        self.max_held = 0

    def __call__(self, conn: socket.socket, record: Connection) -> None:
        with self._lock:
            self._held += 1
            self.max_held = max(self.max_held, self._held)
        try:
            threading.Event().wait(self._delay)
        finally:
            with self._lock:
                self._held -= 1
        self._inner(conn, record)


def slow_rdp(reply: bytes, tls: ssl.SSLContext, delay: float) -> SlowRdp:
    """Like `rdp`, after holding the connection for `delay` seconds (to observe concurrency)."""
    return SlowRdp(reply, tls, delay)
