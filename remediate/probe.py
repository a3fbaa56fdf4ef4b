"""The RDP protocol probe: X.224 negotiation, TLS handshake and a look at the listener's certificate.

Error 0x904 is a TLS tunnel that cannot be built while TCP port 3389 still accepts connections, so "the port
is open" proves nothing. The probe does what an RDP client does up to the moment it would send credentials,
and stops there: X.224 Connection Request with an RDP Negotiation Request offering TLS and CredSSP
(MS-RDPBCGR 2.2.1.1), the Connection Confirm (2.2.1.2), then, when the server picked a TLS-based protocol, the
TLS handshake on the same connection. It reads the server certificate, closes the TLS session cleanly and
never starts CredSSP.

Every outcome is one of the `ProbeStatus` strings; network conditions never escape as exceptions. The parsing
and the classification (`parse_tpkt_header`, `parse_connection_confirm`, `negotiation_verdict`,
`describe_certificate`, `certificate_verdict`) are pure functions; `probe_async` does the I/O around them,
`probe` is its synchronous face for the engine and `probe_many` probes a fleet with bounded concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import errno
import functools
import ipaddress
import logging
import socket
import ssl
import struct
import time
import warnings
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_PORT = 3389
DEFAULT_TIMEOUT_SECONDS = 5.0
DEFAULT_EXPIRY_WARNING_DAYS = 14
DEFAULT_CONCURRENCY = 200

# --- MS-RDPBCGR vocabulary -----------------------------------------------------------------------------

PROTOCOL_RDP, PROTOCOL_SSL, PROTOCOL_HYBRID = 0x0, 0x1, 0x2
PROTOCOL_NAMES: dict[int, str] = {
    0x00: "PROTOCOL_RDP",
    0x01: "PROTOCOL_SSL",
    0x02: "PROTOCOL_HYBRID",
    0x04: "PROTOCOL_RDSTLS",
    0x08: "PROTOCOL_HYBRID_EX",
    0x10: "PROTOCOL_RDSAAD",
}
SSL_REQUIRED_BY_SERVER = 1
SSL_NOT_ALLOWED_BY_SERVER = 2
SSL_CERT_NOT_ON_SERVER = 3
FAILURE_NAMES: dict[int, str] = {
    1: "SSL_REQUIRED_BY_SERVER",
    2: "SSL_NOT_ALLOWED_BY_SERVER",
    3: "SSL_CERT_NOT_ON_SERVER",
    4: "INCONSISTENT_FLAGS",
    5: "HYBRID_REQUIRED_BY_SERVER",
    6: "SSL_WITH_USER_AUTH_REQUIRED_BY_SERVER",
}
TYPE_RDP_NEG_REQ, TYPE_RDP_NEG_RSP, TYPE_RDP_NEG_FAILURE = 0x01, 0x02, 0x03
X224_CONNECTION_REQUEST, X224_CONNECTION_CONFIRM = 0xE0, 0xD0

# The probe offers what mstsc offers by default; it never goes further than the TLS handshake.
REQUESTED_PROTOCOLS = PROTOCOL_SSL | PROTOCOL_HYBRID
TPKT_HEADER_BYTES = 4
X224_FIXED_BYTES = 7  # LI, code, DST-REF (2), SRC-REF (2), class
NEGOTIATION_BYTES = 8
# A Connection Confirm is 11 or 19 bytes; anything near this bound is not RDP, and the probe never reads more
# than this before TLS, whatever length the peer claims.
MAX_CONFIRM_BYTES = 1024
_CLOSE_GRACE_SECONDS = 1.0
_TLS_READ_BYTES = 16 * 1024  # one TLS record at most per read


def protocol_name(value: int) -> str:
    return PROTOCOL_NAMES.get(value, f"UNKNOWN_PROTOCOL_0x{value:08X}")


def failure_name(code: int) -> str:
    return FAILURE_NAMES.get(code, f"UNKNOWN_FAILURE_0x{code:08X}")


def connection_request(requested_protocols: int = REQUESTED_PROTOCOLS) -> bytes:
    """TPKT + X.224 Connection Request + RDP_NEG_REQ, without the optional routing cookie (19 bytes)."""
    negotiation = struct.pack("<BBHI", TYPE_RDP_NEG_REQ, 0, NEGOTIATION_BYTES, requested_protocols)
    tpdu_rest = struct.pack(">BHHB", X224_CONNECTION_REQUEST, 0, 0, 0) + negotiation
    tpdu = bytes([len(tpdu_rest)]) + tpdu_rest  # LI counts the bytes after itself
    return struct.pack(">BBH", 3, 0, TPKT_HEADER_BYTES + len(tpdu)) + tpdu


# --- Results -------------------------------------------------------------------------------------------


class ProbeStatus(enum.StrEnum):
    HEALTHY = "healthy"
    EXPIRING_SOON = "expiring-soon"
    CERTIFICATE_EXPIRED = "certificate-expired"
    CERTIFICATE_NOT_YET_VALID = "certificate-not-yet-valid"
    NO_CERTIFICATE = "no-certificate"
    TLS_NOT_OFFERED = "tls-not-offered"
    NEGOTIATION_FAILED = "negotiation-failed"
    TLS_HANDSHAKE_FAILED = "tls-handshake-failed"
    NOT_RDP = "not-rdp"
    # TCP accepted, then no answer to the Connection Request: something holds the port without serving it (a
    # listener exhausted by a logon storm, a hung TermService): not a network path problem.
    NO_ANSWER = "no-answer"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"

    @property
    def rdp_works(self) -> bool:
        """A client can connect: the certificate is valid (perhaps not for long)."""
        return self in (ProbeStatus.HEALTHY, ProbeStatus.EXPIRING_SOON)


Verdict = tuple[ProbeStatus, str]


@dataclass(frozen=True)
class CertificateInfo:
    """The listener's certificate as an admin compares it with `SSLCertificateSHA1Hash`."""

    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    days_remaining: int  # whole days until not_after; negative once expired (-20: expired 20 days ago)
    thumbprint_sha1: str  # upper-case hex, the form Windows shows
    self_signed: bool

    @property
    def label(self) -> str:
        """Short identification for a sentence: the common name (or whole subject) and the thumbprint."""
        return f"{_common_name(self.subject)}, thumbprint {self.thumbprint_sha1}"

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "not_before": _iso(self.not_before),
            "not_after": _iso(self.not_after),
            "days_remaining": self.days_remaining,
            "thumbprint_sha1": self.thumbprint_sha1,
            "self_signed": self.self_signed,
        }


@dataclass(frozen=True)
class ProbeResult:
    """What one probe found. `detail` is the sentence an admin reads first."""

    host: str
    port: int
    status: ProbeStatus
    detail: str
    selected_protocol: str | None = None  # MS-RDPBCGR name, when the server sent RDP_NEG_RSP
    negotiation_failure: str | None = None  # MS-RDPBCGR name, when it sent RDP_NEG_FAILURE
    tls_version: str | None = None
    tls_cipher: str | None = None
    certificate: CertificateInfo | None = None
    elapsed_ms: float = 0.0

    @property
    def rdp_works(self) -> bool:
        return self.status.rdp_works

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "status": str(self.status),
            "detail": self.detail,
            "selected_protocol": self.selected_protocol,
            "negotiation_failure": self.negotiation_failure,
            "tls_version": self.tls_version,
            "tls_cipher": self.tls_cipher,
            "certificate": None if self.certificate is None else self.certificate.to_json(),
            "elapsed_ms": self.elapsed_ms,
        }


# --- Pure parsing and classification -------------------------------------------------------------------


class MalformedReply(Exception):
    """The peer answered, but not with an X.224 Connection Confirm; `reason` says what it sent."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Negotiation:
    """The Connection Confirm's verdict: a selected protocol, a failure code, or neither (standard RDP)."""

    selected_protocol: int | None = None
    failure_code: int | None = None


def parse_tpkt_header(header: bytes) -> int:
    """The total length a TPKT header announces; MalformedReply when it is no TPKT or an absurd length."""
    if len(header) < TPKT_HEADER_BYTES or header[0] != 3:
        raise MalformedReply(f"answered {_describe_bytes(header)} instead of a TPKT header")
    length = int.from_bytes(header[2:4], "big")
    if not TPKT_HEADER_BYTES + X224_FIXED_BYTES <= length <= MAX_CONFIRM_BYTES:
        raise MalformedReply(f"announced a TPKT of {length} bytes, impossible for a Connection Confirm")
    return length


def parse_connection_confirm(tpdu: bytes) -> Negotiation:
    """Parse the X.224 part of a Connection Confirm (the bytes after the TPKT header)."""
    if len(tpdu) < X224_FIXED_BYTES or tpdu[0] != len(tpdu) - 1:
        raise MalformedReply("sent an X.224 TPDU whose length indicator does not match its TPKT length")
    if tpdu[1] & 0xF0 != X224_CONNECTION_CONFIRM:
        raise MalformedReply(f"sent X.224 TPDU code 0x{tpdu[1]:02X} instead of a Connection Confirm")
    data = tpdu[X224_FIXED_BYTES:]
    if not data:
        return Negotiation()
    if len(data) != NEGOTIATION_BYTES:
        raise MalformedReply(f"sent {len(data)} bytes of negotiation data (expected {NEGOTIATION_BYTES})")
    kind, _flags, length, value = struct.unpack("<BBHI", data)
    if length != NEGOTIATION_BYTES:
        raise MalformedReply(f"sent negotiation data announcing {length} bytes (expected 8)")
    if kind == TYPE_RDP_NEG_RSP:
        return Negotiation(selected_protocol=value)
    if kind == TYPE_RDP_NEG_FAILURE:
        return Negotiation(failure_code=value)
    raise MalformedReply(f"sent negotiation data of unknown type 0x{kind:02X}")


def negotiation_verdict(negotiation: Negotiation, requested: int = REQUESTED_PROTOCOLS) -> Verdict | None:
    """The final verdict when the negotiation already decides it; None when the TLS handshake comes next."""
    lowered = (
        "its SecurityLayer was lowered: raise it back to TLS "
        "(rdp-remediate reports this and never changes security settings)"
    )
    if negotiation.failure_code is not None:
        code = negotiation.failure_code
        name = failure_name(code)
        if code == SSL_CERT_NOT_ON_SERVER:
            return ProbeStatus.NO_CERTIFICATE, (
                f"the server has no usable certificate for TLS ({name}): "
                "repair the MachineKeys store, then renew the certificate"
            )
        if code == SSL_NOT_ALLOWED_BY_SERVER:
            return ProbeStatus.TLS_NOT_OFFERED, f"the server refuses TLS ({name}): {lowered}"
        return ProbeStatus.NEGOTIATION_FAILED, (
            f"the server rejected the connection request with {name}: "
            "check its RDP security settings (SecurityLayer, UserAuthentication)"
        )
    selected = negotiation.selected_protocol
    if selected is None or selected == PROTOCOL_RDP:
        return ProbeStatus.TLS_NOT_OFFERED, f"the server offers only standard RDP security, no TLS: {lowered}"
    if selected & requested != selected or selected.bit_count() != 1:
        name = protocol_name(selected)
        return ProbeStatus.NEGOTIATION_FAILED, (
            f"the server selected {name}, which was not offered: check its RDP security settings"
        )
    return None


def describe_certificate(der: bytes, now: dt.datetime) -> CertificateInfo:
    """Parse a DER certificate; raises ValueError when it is not one."""
    cert = x509.load_der_x509_certificate(der)
    not_after = cert.not_valid_after_utc
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=not_after,
        # Truncated towards zero: "expires in 2 days" while 2 days 23 hours remain, "expired 20 days ago".
        days_remaining=int((not_after - now).total_seconds() / 86400),
        # SHA-1 here is an identifier (the thumbprint Windows pins), not a security check.
        thumbprint_sha1=cert.fingerprint(hashes.SHA1()).hex().upper(),  # noqa: S303
        self_signed=_is_self_signed(cert),
    )


def certificate_verdict(cert: CertificateInfo, now: dt.datetime, expiry_warning_days: int) -> Verdict:
    """Classify a certificate read from a completed TLS handshake."""
    if now < cert.not_before:
        wait = _span(cert.not_before - now)
        return ProbeStatus.CERTIFICATE_NOT_YET_VALID, (
            f"certificate is not valid before {_iso(cert.not_before)}, {wait} from now "
            f"({cert.label}): check the server's clock, then renew it"
        )
    if now >= cert.not_after:
        return ProbeStatus.CERTIFICATE_EXPIRED, (
            f"certificate expired {_span(now - cert.not_after)} ago ({cert.label}): renew it"
        )
    left = cert.not_after - now
    if left < dt.timedelta(days=expiry_warning_days):
        return ProbeStatus.EXPIRING_SOON, (
            f"RDP works, but the certificate expires in {_span(left)}, on {_iso(cert.not_after)} "
            f"({cert.label}): renew it soon"
        )
    return ProbeStatus.HEALTHY, f"RDP works: certificate valid for another {_span(left)} ({cert.label})"


# Beyond this the guest's clock is "far off": Kerberos' default maximum tolerance for computer clock
# synchronization is 5 minutes (Microsoft Learn, "Maximum tolerance for computer clock synchronization").
CLOCK_SKEW_TOLERANCE = dt.timedelta(minutes=5)


def clock_skew(
    not_before: dt.datetime, not_after: dt.datetime, now: dt.datetime, guest_offset: dt.timedelta
) -> str | None:
    """A sentence when the certificate's validity reads differently by our clock and by the guest's.

    `guest_offset` is the guest clock minus true time (the diagnose fact). The guest makes and judges its own
    certificate by its clock: one valid by ours but not by the guest's (the guest thinks it expired, or not yet
    valid) or valid by the guest's but not by ours (made with a clock running ahead) is a clock problem, and a
    renewal on that clock would only make another such certificate. None when the clocks agree on the verdict
    or the offset is within tolerance.
    """
    if abs(guest_offset) <= CLOCK_SKEW_TOLERANCE:
        return None
    guest_now = now + guest_offset
    ours, theirs = not_before <= now < not_after, not_before <= guest_now < not_after
    if ours == theirs:
        return None
    ahead = "ahead" if guest_offset > dt.timedelta(0) else "behind"
    by_ours = "valid" if ours else ("not yet valid" if now < not_before else "expired")
    by_guest = "valid" if theirs else ("not yet valid" if guest_now < not_before else "expired")
    return (
        f"clock skew: the guest's clock runs {_span(abs(guest_offset))} {ahead}; the certificate valid "
        f"{_iso(not_before)} to {_iso(not_after)} is {by_ours} by ours and {by_guest} by the guest's"
    )


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError):
        return False
    except (TypeError, UnsupportedAlgorithm):
        return True  # a key type cryptography cannot verify with: the names match, which is what we can tell
    return True


def _common_name(subject: str) -> str:
    for part in subject.split(","):
        if part.strip().upper().startswith("CN="):
            return part.strip()
    return subject or "no subject"


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _span(delta: dt.timedelta) -> str:
    days = int(delta.total_seconds() // 86400)
    if days >= 1:
        return f"{days} day" + ("s" if days != 1 else "")
    hours = int(delta.total_seconds() // 3600)
    return f"{hours} hour" + ("s" if hours != 1 else "") if hours >= 1 else "less than an hour"


def _describe_bytes(data: bytes) -> str:
    head = data[:16]
    if head and all(32 <= b < 127 for b in head):
        return repr(head.decode("ascii"))
    return head.hex(" ") or "nothing"


# --- Network failures ----------------------------------------------------------------------------------

_UNREACHABLE_ERRNOS = {
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EHOSTDOWN,
    errno.EADDRNOTAVAIL,
}
_CLOSED_DOOR = "check that TermService runs and the Remote Desktop firewall rule is enabled"


def timeout_verdict(phase: str, port: int, timeout: float) -> Verdict:
    if phase == "connect":
        return ProbeStatus.TIMEOUT, (
            f"no TCP connection to port {port} within {timeout:g} s: check the network path "
            "(NSG rules, VNet routing or integration) and that the VM is running"
        )
    if phase == "negotiate":
        # The TCP handshake completed, so the path is open: what is wrong is what holds the port.
        return ProbeStatus.NO_ANSWER, (
            f"connected to port {port}, but no RDP answer within {timeout:g} s: the port accepts connections "
            "and then stays silent (a listener exhausted by failed logons, a hung TermService, or another "
            "program holding the port)"
        )
    return ProbeStatus.TIMEOUT, (
        f"the TLS handshake on port {port} did not finish within {timeout:g} s: "
        "check the network path and the server's TLS settings"
    )


def network_verdict(exc: OSError | EOFError, phase: str, host: str, port: int) -> Verdict:
    """Turn what the socket layer raised during `phase` into a status and a sentence."""
    if phase == "tls":
        return ProbeStatus.TLS_HANDSHAKE_FAILED, (
            f"the TLS handshake failed ({_reason(exc)}): check that TLS 1.2 is enabled on the server "
            "(Schannel event 36871) and that the listener can use its certificate's key"
        )
    if isinstance(exc, EOFError):  # asyncio.IncompleteReadError, while waiting for the Connection Confirm
        partial = getattr(exc, "partial", b"")
        said = "sent a truncated answer" if partial else "closed the connection without answering"
        return ProbeStatus.NOT_RDP, f"the service on port {port} {said} to the RDP connection request"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        # A reset before any answer (it may even land while the connect completes) is the host turning the
        # connection away, like a closed port.
        return ProbeStatus.REFUSED, f"port {port} reset the connection before answering: {_CLOSED_DOOR}"
    return _connect_verdict(exc, host, port)


def _connect_verdict(exc: OSError | EOFError, host: str, port: int) -> Verdict:
    if isinstance(exc, ConnectionRefusedError):
        return ProbeStatus.REFUSED, f"connection to port {port} refused: {_CLOSED_DOOR}"
    if isinstance(exc, socket.gaierror):
        return ProbeStatus.UNREACHABLE, f"cannot resolve {host!r} ({_reason(exc)}): check the name and DNS"
    unreachable = getattr(exc, "errno", None) in _UNREACHABLE_ERRNOS
    where = f"{host} is unreachable" if unreachable else f"cannot reach port {port} on {host}"
    return ProbeStatus.UNREACHABLE, (
        f"{where} ({_reason(exc)}): check the network path (NSG rules, VNet routing or integration)"
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, EOFError):
        return "the server closed the connection"
    if isinstance(exc, ConnectionResetError):
        return "the server reset the connection"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# --- I/O -----------------------------------------------------------------------------------------------


@dataclass
class _Conversation:
    """What one probe has learnt so far; the error handlers read it to say where things went wrong."""

    phase: str = "connect"  # connect -> negotiate -> tls -> done
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    tls: ssl.SSLObject | None = None
    tls_out: ssl.MemoryBIO = field(default_factory=ssl.MemoryBIO)
    negotiation: Negotiation | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    certificate: CertificateInfo | None = None


@functools.cache
def _client_context() -> ssl.SSLContext:
    """No chain validation (RDP certificates are self-signed) and every TLS version from 1.0, so a legacy
    server is measured rather than rejected: the probe sends nothing secret over it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0 is deprecated; that is the point
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("ALL:!aNULL:!eNULL:@SECLEVEL=0")
    return context


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def _resolve(host: str, port: int) -> list[tuple[int, str]]:
    """(family, address) to try in order. IP literals skip the resolver (and its thread pool)."""
    literal = _ip_literal(host)
    if literal is not None:
        return [(socket.AF_INET6 if literal.version == 6 else socket.AF_INET, host)]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, int] = {}
    for family, _type, _proto, _name, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), family)
    return [(family, address) for address, family in seen.items()]


async def _connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    errors: list[OSError] = []
    for family, address in await _resolve(host, port):
        try:
            # A small stream limit keeps what a chatty peer can make us buffer before TLS bounded.
            return await asyncio.open_connection(address, port, family=family, limit=MAX_CONFIRM_BYTES)
        except OSError as exc:
            errors.append(exc)
    if not errors:
        raise socket.gaierror(socket.EAI_NONAME, "no address")
    # With several addresses, "refused" says more than "unreachable" about the one that answered.
    raise next((e for e in errors if isinstance(e, ConnectionRefusedError)), errors[0])


async def _converse(
    host: str, port: int, state: _Conversation, now: Callable[[], dt.datetime], expiry_warning_days: int
) -> Verdict:
    reader, writer = await _connect(host, port)
    state.reader, state.writer = reader, writer
    state.phase = "negotiate"
    writer.write(connection_request())
    await writer.drain()
    length = parse_tpkt_header(await reader.readexactly(TPKT_HEADER_BYTES))
    state.negotiation = parse_connection_confirm(await reader.readexactly(length - TPKT_HEADER_BYTES))
    verdict = negotiation_verdict(state.negotiation)
    if verdict is not None:
        return verdict
    state.phase = "tls"
    server_name = None if _ip_literal(host) is not None else host
    tls = await _tls_handshake(reader, writer, state.tls_out, server_name)
    state.tls = tls
    state.phase = "done"
    state.tls_version = tls.version()
    cipher = tls.cipher()
    state.tls_cipher = cipher[0] if cipher else None
    der = tls.getpeercert(binary_form=True)
    if not der:
        return ProbeStatus.TLS_HANDSHAKE_FAILED, "the server completed TLS without presenting a certificate"
    # X.509 times have whole seconds: compare at that resolution, so a certificate made "3 days from now"
    # reads 3 days, not 2 days 23:59:59.
    moment = _aware(now()).replace(microsecond=0)
    try:
        state.certificate = describe_certificate(der, moment)
    except ValueError as exc:
        return ProbeStatus.TLS_HANDSHAKE_FAILED, f"the server's certificate cannot be parsed ({exc})"
    return certificate_verdict(state.certificate, moment, expiry_warning_days)


async def _tls_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, outgoing: ssl.MemoryBIO, server_name: str | None
) -> ssl.SSLObject:
    """Run the client side of the TLS handshake over memory BIOs on the already negotiated connection.

    Driving OpenSSL directly (rather than StreamWriter.start_tls) keeps the end of the session in our hands:
    the probe sends close_notify itself and never waits on asyncio's 30-second TLS shutdown.
    """
    incoming = ssl.MemoryBIO()
    tls = _client_context().wrap_bio(incoming, outgoing, server_hostname=server_name)
    while True:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            await _flush(writer, outgoing)
            data = await reader.read(_TLS_READ_BYTES)
            if not data:
                raise EOFError from None
            incoming.write(data)
        else:
            await _flush(writer, outgoing)  # the client's Finished
            return tls


async def _flush(writer: asyncio.StreamWriter, outgoing: ssl.MemoryBIO) -> None:
    data = outgoing.read()
    if data:
        writer.write(data)
        await writer.drain()


async def _close(state: _Conversation, *, clean: bool, deadline: float) -> None:
    """End the connection. After a finished conversation: TLS close_notify, FIN, then read until the peer's
    own FIN (briefly), so neither side sees a reset. After a failure: abort, nothing is left to say."""
    reader, writer = state.reader, state.writer
    if reader is None or writer is None:
        return
    if not clean:
        writer.transport.abort()
        return
    grace = min(_CLOSE_GRACE_SECONDS, max(0.0, deadline - time.monotonic()))
    try:
        async with asyncio.timeout(grace):
            if state.tls is not None:
                _start_tls_shutdown(state.tls)
                await _flush(writer, state.tls_out)
            writer.write_eof()
            while await reader.read(_TLS_READ_BYTES):
                pass  # whatever the server still sends (TLS 1.3 session tickets, its close_notify)
    except (TimeoutError, OSError):
        writer.transport.abort()
    else:
        writer.close()


def _start_tls_shutdown(tls: ssl.SSLObject) -> None:
    """Queue our close_notify; the peer's answer is read (and ignored) with the rest of the stream."""
    # SSLWantReadError is the normal case: ours is written, the peer's has not arrived yet.
    with contextlib.suppress(ssl.SSLError):
        tls.unwrap()


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _check_arguments(host: str, port: int, timeout: float, expiry_warning_days: int) -> None:
    if not isinstance(host, str) or not host.strip():
        raise ValueError("host must be a non-empty host name or IP address")
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, got {timeout}")
    if expiry_warning_days < 0:
        raise ValueError(f"expiry_warning_days must be >= 0, got {expiry_warning_days}")


async def probe_async(
    host: str,
    port: int = DEFAULT_PORT,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    expiry_warning_days: int = DEFAULT_EXPIRY_WARNING_DAYS,
    now: Callable[[], dt.datetime] | None = None,
) -> ProbeResult:
    """Probe one endpoint within `timeout` seconds overall. Raises only for invalid arguments."""
    _check_arguments(host, port, timeout, expiry_warning_days)
    host = host.strip().removeprefix("[").removesuffix("]")
    started = time.monotonic()
    state = _Conversation()
    clean = False
    try:
        async with asyncio.timeout(timeout):
            status, detail = await _converse(host, port, state, now or _utcnow, expiry_warning_days)
        clean = True
    except TimeoutError:  # the deadline, or the kernel's own ETIMEDOUT
        status, detail = timeout_verdict(state.phase, port, timeout)
    except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError, IncompleteReadError an EOFError
        status, detail = network_verdict(exc, state.phase, host, port)
    except MalformedReply as exc:
        status = ProbeStatus.NOT_RDP
        detail = f"the service on port {port} does not speak RDP: it {exc.reason}"
    except UnicodeError:  # the IDNA codec refusing a name, e.g. a label longer than 63 characters
        status, detail = ProbeStatus.UNREACHABLE, f"{host!r} is not a valid host name"
    elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    await _close(state, clean=clean, deadline=started + timeout + _CLOSE_GRACE_SECONDS)
    result = _result(host, port, status, detail, state, elapsed_ms)
    _log.debug(
        "rdp probe finished",
        extra={"probe_host": host, "probe_port": port, "probe_status": str(status), "elapsed_ms": elapsed_ms},
    )
    return result


def _result(
    host: str, port: int, status: ProbeStatus, detail: str, state: _Conversation, elapsed_ms: float
) -> ProbeResult:
    negotiation = state.negotiation or Negotiation()
    selected = negotiation.selected_protocol
    failure = negotiation.failure_code
    return ProbeResult(
        host=host,
        port=port,
        status=status,
        detail=detail,
        selected_protocol=None if selected is None else protocol_name(selected),
        negotiation_failure=None if failure is None else failure_name(failure),
        tls_version=state.tls_version,
        tls_cipher=state.tls_cipher,
        certificate=state.certificate,
        elapsed_ms=elapsed_ms,
    )


async def probe_many_async(
    endpoints: Sequence[tuple[str, int]],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    expiry_warning_days: int = DEFAULT_EXPIRY_WARNING_DAYS,
    now: Callable[[], dt.datetime] | None = None,
) -> list[ProbeResult]:
    """Probe every (host, port), at most `concurrency` at a time; results in input order."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    items = list(endpoints)
    for host, port in items:  # reject bad input before any connection is made
        _check_arguments(host, port, timeout, expiry_warning_days)
    results: dict[int, ProbeResult] = {}
    pending = iter(range(len(items)))

    async def worker() -> None:
        # Workers share one iterator: on a single event loop, `next` is never interleaved.
        for index in pending:
            host, port = items[index]
            results[index] = await probe_async(
                host, port, timeout=timeout, expiry_warning_days=expiry_warning_days, now=now
            )

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(items)))))
    return [results[index] for index in range(len(items))]


def probe(
    host: str,
    port: int = DEFAULT_PORT,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    expiry_warning_days: int = DEFAULT_EXPIRY_WARNING_DAYS,
    now: Callable[[], dt.datetime] | None = None,
) -> ProbeResult:
    """Synchronous `probe_async`, for callers without an event loop (the engine, the command line)."""
    return _run(probe_async(host, port, timeout=timeout, expiry_warning_days=expiry_warning_days, now=now))


def probe_many(
    endpoints: Sequence[tuple[str, int]],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    expiry_warning_days: int = DEFAULT_EXPIRY_WARNING_DAYS,
    now: Callable[[], dt.datetime] | None = None,
) -> list[ProbeResult]:
    """Synchronous `probe_many_async` (the sweep)."""
    return _run(
        probe_many_async(
            endpoints,
            concurrency=concurrency,
            timeout=timeout,
            expiry_warning_days=expiry_warning_days,
            now=now,
        )
    )


def _run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # Called from inside an event loop (an async Function handler): that loop must not be blocked on
    # itself, so the probe gets a private loop on a worker thread.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rdp-probe") as pool:
        return pool.submit(asyncio.run, coroutine).result()
