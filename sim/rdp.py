"""The emulator's RDP listeners: one per Windows VM, on the VM's loopback address, all on one port.

Each listener speaks just enough of MS-RDPBCGR to be probed like a real Windows host: it reads the X.224
Connection Request, answers a Connection Confirm, and then runs a real TLS handshake with the VM's current
certificate. What a connection sees is decided from the VM's state at the moment it arrives (read under
`fleet.lock`), so a repair made by the simulated guest shows on the very next connection:

* VM not running, not Windows, TermService stopped, or the Remote Desktop firewall rule disabled: the
  connection is reset at once (SO_LINGER 0), before a byte is read or sent. A listening socket cannot turn a
  SYN away by itself, and closing and reopening listeners as state changes would lag behind the guest, so
  accept-then-reset is the closest to a closed port; the probe counts a reset before any answer as
  `refused`, like ECONNREFUSED. A Linux VM has no listener at all: a true ECONNREFUSED.
* The listener cannot use its certificate's private key (no certificate, broken MachineKeys): RDP Negotiation
  Failure SSL_CERT_NOT_ON_SERVER.
* TLS 1.2 disabled in SCHANNEL: the negotiation succeeds, then the server answers the ClientHello with a fatal
  handshake_failure alert and closes (what the client sees while Schannel logs event 36871).
* The causes no repair fixes (docs/causes.md): a listener exhausted by a logon storm, or a VM whose NSG denies
  the product (an NSG drops the SYN; a loopback listener cannot, so it accepts and stays silent, which the probe
  reports as no-answer; the product learns why from the effective security rules); another program on the port
  (an HTTP answer, not X.224); the listener bound to another adapter (nothing listens on the primary IP: reset);
  SecurityLayer 0 (RDP_NEG_FAILURE SSL_NOT_ALLOWED_BY_SERVER, MS-RDPBCGR 2.2.1.2.2: the server allows only
  Standard RDP Security); a cipher-suite policy no client suite meets (negotiation, then a handshake_failure
  alert, as Schannel answers when it logs event 36874).
* Otherwise: RDP Negotiation Response selecting PROTOCOL_HYBRID when the client offers it (else PROTOCOL_SSL)
  and a TLS handshake with the VM's certificate.

All listeners are served by one background thread running an asyncio loop: a fleet may have thousands of VMs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import logging
import shutil
import socket
import ssl
import struct
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sim.certs import SimCertificate
from sim.fleet import Fleet, VirtualMachine, utcnow

_log = logging.getLogger(__name__)

PROTOCOL_SSL, PROTOCOL_HYBRID = 0x1, 0x2
SSL_REQUIRED_BY_SERVER, SSL_NOT_ALLOWED_BY_SERVER, SSL_CERT_NOT_ON_SERVER = 1, 2, 3
_NOT_RDP_ANSWER = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_NEG_REQ, _NEG_RSP, _NEG_FAILURE = 0x01, 0x02, 0x03
_EXTENDED_CLIENT_DATA_SUPPORTED = 0x01
_MAX_REQUEST_BYTES = 1024  # a Connection Request with a long routing cookie still fits
_TLS_READ_BYTES = 16 * 1024
_CONNECTION_SECONDS = 30.0  # a client that stalls is dropped after this
# TLS record: alert (21), version 3.3, length 2, level fatal (2), description handshake_failure (40).
_HANDSHAKE_FAILURE_ALERT = bytes([21, 3, 3, 0, 2, 2, 40])


@dataclass(frozen=True)
class ListenerEvent:
    """One connection a listener handled, for tests and the emulator's request log."""

    at: dt.datetime
    vm_name: str
    outcome: str  # refused | no-certificate | tls-required | tls-disabled | tls


@dataclass(frozen=True)
class _Snapshot:
    """The parts of a VM's state one connection depends on, copied under the fleet lock."""

    name: str
    reachable: bool
    key_usable: bool
    tls12_enabled: bool
    certificate: SimCertificate | None
    mode: str = "rdp"  # rdp | silent | not-rdp | rdp-only | no-common-cipher


class _BadRequest(Exception):
    """The client did not send an X.224 Connection Request; the connection is dropped."""


class RdpListeners:
    """Serve RDP for every Windows VM of `fleet` on (vm.private_ip, port) until `stop()`."""

    def __init__(self, fleet: Fleet, port: int, now: Callable[[], dt.datetime] = utcnow) -> None:
        self.fleet = fleet
        self.port = port
        self._now = now
        self.events: collections.deque[ListenerEvent] = collections.deque(maxlen=10_000)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._tempdir: Path | None = None

    def __enter__(self) -> RdpListeners:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def address(self, vm: VirtualMachine) -> tuple[str, int]:
        return vm.private_ip, self.port

    def start(self) -> None:
        """Bind every listener (raises OSError when an address is taken) and serve them in the background."""
        if self._thread is not None:
            raise RuntimeError("the RDP listeners are already running")
        # load_cert_chain reads files only: each certificate is written here once, removed on stop().
        self._tempdir = Path(tempfile.mkdtemp(prefix="sim-rdp-"))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sim-rdp-listeners", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()
        except BaseException:
            self.stop()
            raise
        _log.info("rdp listeners started", extra={"listeners": len(self._servers), "port": self.port})

    def stop(self) -> None:
        """Close every listener and connection, end the thread and remove the certificate files."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()
            self._loop = self._thread = None
            self._contexts.clear()
            if self._tempdir is not None:
                shutil.rmtree(self._tempdir, ignore_errors=True)
                self._tempdir = None

    # --- Loop thread ---------------------------------------------------------------------------------

    async def _open(self) -> None:
        with self.fleet.lock:
            targets = [(vm.key, vm.private_ip) for vm in self.fleet if vm.os_type == "Windows"]
        for key, address in targets:
            server = await asyncio.start_server(
                functools.partial(self._serve, key), address, self.port, limit=_MAX_REQUEST_BYTES
            )
            self._servers.append(server)

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        self._servers.clear()

    async def _serve(self, key: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peer = writer.get_extra_info("peername")
        snapshot = self._snapshot(key, peer[1] if isinstance(peer, tuple) else None)
        try:
            if not snapshot.reachable:
                self._record(snapshot, "refused")
                _reset(writer)
                return
            if snapshot.mode == "silent":
                self._record(snapshot, "silent")
                await _hold_silently(reader, writer)
                return
            async with asyncio.timeout(_CONNECTION_SECONDS):
                await self._converse(snapshot, reader, writer)
            writer.close()
        except (TimeoutError, OSError, EOFError, _BadRequest):
            writer.transport.abort()  # the client went away or spoke nonsense: nothing to close cleanly
        finally:
            if task is not None:
                self._connections.discard(task)

    def _snapshot(self, key: str, client_port: int | None = None) -> _Snapshot:
        with self.fleet.lock:
            vm = self.fleet.get(key)
            if vm is None:
                return _Snapshot(key, False, False, False, None)
            guest = vm.guest
            reachable = (
                vm.power_state == "running"
                and vm.os_type == "Windows"
                and guest.services_running
                and guest.firewall_open
            )
            reachable = reachable and guest.lan_adapter == 0  # bound to another adapter: nothing on this address
            mode = _mode(vm, client_port)
            return _Snapshot(vm.name, reachable, guest.key_usable, guest.tls12_enabled, guest.certificate, mode)

    async def _converse(self, snapshot: _Snapshot, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requested = await _read_connection_request(reader)
        if snapshot.mode == "not-rdp":
            self._record(snapshot, "not-rdp")
            await _send(writer, _NOT_RDP_ANSWER)
            return
        if snapshot.mode == "rdp-only":
            self._record(snapshot, "rdp-only")
            await _send(writer, _connection_confirm(_NEG_FAILURE, SSL_NOT_ALLOWED_BY_SERVER))
            return
        if requested is None or not requested & (PROTOCOL_SSL | PROTOCOL_HYBRID):
            # The listener's SecurityLayer is TLS (the Azure default): standard RDP security is not allowed.
            self._record(snapshot, "tls-required")
            await _send(writer, _connection_confirm(_NEG_FAILURE, SSL_REQUIRED_BY_SERVER))
            return
        if not snapshot.key_usable or snapshot.certificate is None:
            self._record(snapshot, "no-certificate")
            await _send(writer, _connection_confirm(_NEG_FAILURE, SSL_CERT_NOT_ON_SERVER))
            return
        selected = PROTOCOL_HYBRID if requested & PROTOCOL_HYBRID else PROTOCOL_SSL
        await _send(writer, _connection_confirm(_NEG_RSP, selected, flags=_EXTENDED_CLIENT_DATA_SUPPORTED))
        if not snapshot.tls12_enabled or snapshot.mode == "no-common-cipher":
            self._record(snapshot, "tls-disabled" if not snapshot.tls12_enabled else "no-common-cipher")
            await reader.read(_MAX_REQUEST_BYTES)  # the ClientHello
            await _send(writer, _HANDSHAKE_FAILURE_ALERT)
            return
        self._record(snapshot, "tls")
        await _serve_tls(self._context(snapshot.certificate), reader, writer)

    def _context(self, certificate: SimCertificate) -> ssl.SSLContext:
        thumbprint = certificate.thumbprint
        context = self._contexts.get(thumbprint)
        if context is None:
            assert self._tempdir is not None
            cert_file = self._tempdir / f"{thumbprint}.pem"
            key_file = self._tempdir / f"{thumbprint}.key"
            cert_file.write_bytes(certificate.cert_pem)
            key_file.write_bytes(certificate.key_pem)
            key_file.chmod(0o600)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(cert_file, key_file)
            self._contexts[thumbprint] = context
        return context

    def _record(self, snapshot: _Snapshot, outcome: str) -> None:
        self.events.append(ListenerEvent(self._now(), snapshot.name, outcome))
        _log.debug("rdp connection", extra={"vm_name": snapshot.name, "rdp_outcome": outcome})


async def _hold_silently(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read and never answer, until the client gives up (or the listeners stop: then just drop it)."""
    try:
        async with asyncio.timeout(_CONNECTION_SECONDS):
            while await reader.read(_MAX_REQUEST_BYTES):
                pass
    except asyncio.CancelledError:
        pass  # shutting down: the connection goes with the listener
    finally:
        writer.transport.abort()


def _mode(vm: VirtualMachine, client_port: int | None = None) -> str:
    """How the listener answers, from the guest and the VM's network rules (read under the fleet lock)."""
    from sim.network import blocks_product

    guest = vm.guest
    if guest.listener_exhausted or blocks_product(vm, client_port):
        return "silent"
    if guest.port_owner:
        return "not-rdp"
    if guest.security_layer == 0:
        return "rdp-only"
    suites = guest.cipher_suites
    if suites is not None and not any(s.startswith("TLS_ECDHE_") and "_GCM_" in s for s in suites):
        return "no-common-cipher"
    return "rdp"


# --- Wire format -----------------------------------------------------------------------------------------


async def _read_connection_request(reader: asyncio.StreamReader) -> int | None:
    """The client's requestedProtocols, or None when it sent no RDP Negotiation Request."""
    header = await reader.readexactly(4)
    length = int.from_bytes(header[2:4], "big")
    if header[0] != 3 or not 11 <= length <= _MAX_REQUEST_BYTES:
        raise _BadRequest
    tpdu = await reader.readexactly(length - 4)
    if tpdu[0] != len(tpdu) - 1 or tpdu[1] & 0xF0 != 0xE0:
        raise _BadRequest
    # The optional cookie ends with CR LF; the negotiation request, when present, is the last 8 bytes.
    variable = tpdu[7:]
    if len(variable) >= 8:
        kind, _flags, size, requested = struct.unpack("<BBHI", variable[-8:])
        if kind == _NEG_REQ and size == 8:
            return int(requested)
    return None


def _connection_confirm(kind: int, value: int, flags: int = 0) -> bytes:
    negotiation = struct.pack("<BBHI", kind, flags, 8, value)
    tpdu = struct.pack(">BBHHB", 6 + len(negotiation), 0xD0, 0, 0x1234, 0) + negotiation
    return struct.pack(">BBH", 3, 0, 4 + len(tpdu)) + tpdu


async def _serve_tls(context: ssl.SSLContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Server side of TLS over memory BIOs: handshake, discard whatever the client sends, answer its
    close_notify with ours. (asyncio's own start_tls races a quick close_notify and logs spurious warnings.)"""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=True)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            await _send(writer, outgoing.read())
            incoming.write(await _read_some(reader))
    await _send(writer, outgoing.read())
    while True:
        incoming.write(await _read_some(reader))
        try:
            while tls.read(_TLS_READ_BYTES):
                pass  # application data (a real client's CredSSP): never needed here
        except ssl.SSLWantReadError:
            continue
        # read() returned b"": the client's close_notify
        with contextlib.suppress(ssl.SSLError):
            tls.unwrap()
        await _send(writer, outgoing.read())
        return


async def _read_some(reader: asyncio.StreamReader) -> bytes:
    data = await reader.read(_TLS_READ_BYTES)
    if not data:
        raise EOFError
    return data


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    if data:
        writer.write(data)
        await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
