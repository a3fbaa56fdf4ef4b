"""The probe against local servers that behave like healthy, broken and hostile hosts, on IPv4 and IPv6."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import socket
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from remediate.probe import ProbeResult, ProbeStatus, probe, probe_many
from tests.probe import servers
from tests.probe.conftest import NOW, CertFactory, ServeFactory

SSL, HYBRID, RDSTLS = 0x1, 0x2, 0x4


def run_probe(host: str, port: int, **kwargs: Any) -> ProbeResult:
    kwargs.setdefault("timeout", 5.0)
    return probe(host, port, now=lambda: NOW, **kwargs)


# --- Certificates ----------------------------------------------------------------------------------------


def test_healthy_server_is_measured_without_sending_anything_secret(
    loopback: str, serve: ServeFactory, certificate: CertFactory
) -> None:
    bundle, context = certificate(-30, 335)
    server = serve(servers.rdp(servers.connection_confirm(servers.neg_rsp(SSL)), context), loopback)

    result = run_probe(*server.endpoint)

    assert result.status == ProbeStatus.HEALTHY and result.rdp_works
    assert result.selected_protocol == "PROTOCOL_SSL"
    assert result.negotiation_failure is None
    assert result.tls_version in {"TLSv1.2", "TLSv1.3"} and result.tls_cipher
    cert = result.certificate
    assert cert is not None
    assert cert.subject == "CN=vm01" and cert.issuer == "CN=vm01" and cert.self_signed
    assert cert.thumbprint_sha1 == hashlib.sha1(bundle.der).hexdigest().upper()
    assert cert.days_remaining == 335
    assert cert.not_after == bundle.cert.not_valid_after_utc
    assert "RDP works" in result.detail and cert.thumbprint_sha1 in result.detail
    # The server saw one Connection Request offering TLS and CredSSP, then a TLS session closed with
    # close_notify that carried no application data: no credentials, no CredSSP.
    # The bytes are MS-RDPBCGR 4.1.1 without the routing cookie: TPKT, X.224 CR, RDP_NEG_REQ(SSL | HYBRID).
    server.settle()
    (connection,) = server.connections
    assert connection.request == bytes.fromhex("030000130ee000000000000100080003000000")
    assert connection.tls_application_data == b""
    assert connection.tls_closed_cleanly is True


def test_hybrid_selection_still_stops_after_the_tls_handshake(
    loopback: str, serve: ServeFactory, certificate: CertFactory
) -> None:
    _, context = certificate(-1, 100)
    server = serve(servers.rdp(servers.connection_confirm(servers.neg_rsp(HYBRID)), context), loopback)

    result = run_probe(*server.endpoint)

    assert result.status == ProbeStatus.HEALTHY
    assert result.selected_protocol == "PROTOCOL_HYBRID"
    server.settle()
    assert server.connections[0].tls_application_data == b""  # no CredSSP TSRequest
    assert server.connections[0].tls_closed_cleanly is True


@pytest.mark.parametrize(
    ("not_before", "not_after", "warning_days", "status", "days", "phrase"),
    [
        (-177, 3, 14, ProbeStatus.EXPIRING_SOON, 3, "expires in 3 days"),
        (-177, 3, 2, ProbeStatus.HEALTHY, 3, "valid for another 3 days"),
        (-200, -20, 14, ProbeStatus.CERTIFICATE_EXPIRED, -20, "expired 20 days ago"),
        (2, 180, 14, ProbeStatus.CERTIFICATE_NOT_YET_VALID, 180, "not valid before 2026-03-03T12:00:00Z"),
    ],
    ids=["expiring-soon", "expiring-but-below-the-threshold", "expired", "not-yet-valid"],
)
def test_certificate_dates_decide_the_status(
    loopback: str,
    serve: ServeFactory,
    certificate: CertFactory,
    not_before: int,
    not_after: int,
    warning_days: int,
    status: ProbeStatus,
    days: int,
    phrase: str,
) -> None:
    _, context = certificate(not_before, not_after)
    server = serve(servers.rdp(servers.connection_confirm(servers.neg_rsp(SSL)), context), loopback)

    result = run_probe(*server.endpoint, expiry_warning_days=warning_days)

    assert result.status == status
    assert result.certificate is not None and result.certificate.days_remaining == days
    assert phrase in result.detail
    assert result.rdp_works == (status in {ProbeStatus.HEALTHY, ProbeStatus.EXPIRING_SOON})


def test_expired_certificate_verdict_tells_the_admin_what_to_do(serve: ServeFactory, certificate: CertFactory) -> None:
    bundle, context = certificate(-200, -20, common_name="vm07")
    server = serve(servers.rdp(servers.connection_confirm(servers.neg_rsp(SSL)), context))

    result = run_probe(*server.endpoint)

    thumbprint = hashlib.sha1(bundle.der).hexdigest().upper()
    assert result.detail == f"certificate expired 20 days ago (CN=vm07, thumbprint {thumbprint}): renew it"


def test_ca_issued_certificate_is_not_self_signed(serve: ServeFactory, certificate: CertFactory) -> None:
    _, context = certificate(-1, 100, issued_by_ca=True)
    server = serve(servers.rdp(servers.connection_confirm(servers.neg_rsp(SSL)), context))

    result = run_probe(*server.endpoint)

    assert result.certificate is not None
    assert result.certificate.issuer == "CN=Test CA" and not result.certificate.self_signed


def test_legacy_tls10_server_is_still_measured(loopback: str, serve: ServeFactory, certificate: CertFactory) -> None:
    _, context = certificate(-1, 100, version=ssl.TLSVersion.TLSv1)
    server = serve(servers.rdp(servers.connection_confirm(servers.neg_rsp(SSL)), context), loopback)

    result = run_probe(*server.endpoint)

    assert result.status == ProbeStatus.HEALTHY
    assert result.tls_version == "TLSv1"


# --- Negotiation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "name"),
    [
        (1, ProbeStatus.NEGOTIATION_FAILED, "SSL_REQUIRED_BY_SERVER"),
        (2, ProbeStatus.TLS_NOT_OFFERED, "SSL_NOT_ALLOWED_BY_SERVER"),
        (3, ProbeStatus.NO_CERTIFICATE, "SSL_CERT_NOT_ON_SERVER"),
        (4, ProbeStatus.NEGOTIATION_FAILED, "INCONSISTENT_FLAGS"),
        (5, ProbeStatus.NEGOTIATION_FAILED, "HYBRID_REQUIRED_BY_SERVER"),
        (6, ProbeStatus.NEGOTIATION_FAILED, "SSL_WITH_USER_AUTH_REQUIRED_BY_SERVER"),
        (0x99, ProbeStatus.NEGOTIATION_FAILED, "UNKNOWN_FAILURE_0x00000099"),
    ],
)
def test_negotiation_failures_are_named(
    loopback: str, serve: ServeFactory, code: int, status: ProbeStatus, name: str
) -> None:
    server = serve(servers.rdp(servers.connection_confirm(servers.neg_failure(code))), loopback)

    result = run_probe(*server.endpoint)

    assert result.status == status
    assert result.negotiation_failure == name and name in result.detail
    assert result.selected_protocol is None and result.certificate is None


def test_no_certificate_points_at_machinekeys(serve: ServeFactory) -> None:
    server = serve(servers.rdp(servers.connection_confirm(servers.neg_failure(3))))

    result = run_probe(*server.endpoint)

    assert "MachineKeys" in result.detail and "renew" in result.detail


@pytest.mark.parametrize(
    "reply",
    [servers.connection_confirm(), servers.connection_confirm(servers.neg_rsp(0))],
    ids=["no-negotiation-data", "selects-PROTOCOL_RDP"],
)
def test_standard_rdp_security_only_is_tls_not_offered(loopback: str, serve: ServeFactory, reply: bytes) -> None:
    server = serve(servers.rdp(reply), loopback)

    result = run_probe(*server.endpoint)

    assert result.status == ProbeStatus.TLS_NOT_OFFERED
    assert result.tls_version is None and result.certificate is None
    assert "SecurityLayer" in result.detail


def test_a_protocol_that_was_not_offered_is_a_negotiation_failure(serve: ServeFactory) -> None:
    server = serve(servers.rdp(servers.connection_confirm(servers.neg_rsp(RDSTLS))))

    result = run_probe(*server.endpoint)

    assert result.status == ProbeStatus.NEGOTIATION_FAILED
    assert result.selected_protocol == "PROTOCOL_RDSTLS"


# --- TLS failures ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("handler", [servers.tls_then_alert, servers.tls_then_hang_up], ids=["alert", "hang-up"])
def test_tls_handshake_aborted_by_the_server(loopback: str, serve: ServeFactory, handler: servers.Handler) -> None:
    server = serve(handler, loopback)

    result = run_probe(*server.endpoint)

    assert result.status == ProbeStatus.TLS_HANDSHAKE_FAILED
    assert result.selected_protocol == "PROTOCOL_SSL"
    assert result.certificate is None and result.tls_version is None
    assert "TLS 1.2" in result.detail


# --- Peers that are not RDP, and no peer at all ----------------------------------------------------------


def test_http_server_is_not_rdp(loopback: str, serve: ServeFactory) -> None:
    server = serve(servers.http, loopback)

    result = run_probe(*server.endpoint)

    assert result.status == ProbeStatus.NOT_RDP
    assert "'HTTP'" in result.detail


def test_server_that_closes_without_answering_is_not_rdp(loopback: str, serve: ServeFactory) -> None:
    server = serve(servers.hang_up, loopback)

    result = run_probe(*server.endpoint)

    assert result.status == ProbeStatus.NOT_RDP
    assert "without answering" in result.detail


def test_lying_tpkt_length_is_rejected_without_reading_it(loopback: str, serve: ServeFactory) -> None:
    server = serve(servers.huge_tpkt, loopback)

    result = run_probe(*server.endpoint)

    assert result.status == ProbeStatus.NOT_RDP
    assert "65535 bytes" in result.detail


def test_truncated_answer_runs_into_the_deadline(loopback: str, serve: ServeFactory) -> None:
    server = serve(servers.short_tpkt, loopback)

    result = run_probe(*server.endpoint, timeout=0.3)

    assert result.status == ProbeStatus.NO_ANSWER
    assert "no RDP answer within 0.3 s" in result.detail


def test_a_silent_server_is_not_a_network_path_problem(loopback: str, serve: ServeFactory) -> None:
    server = serve(servers.silent, loopback)

    result = run_probe(*server.endpoint, timeout=0.3)

    assert result.status == ProbeStatus.NO_ANSWER
    assert result.detail.startswith("connected to port") and "network path" not in result.detail


def test_closed_port_is_refused(loopback: str, closed_port: Callable[[str], int]) -> None:
    result = run_probe(loopback, closed_port(loopback))

    assert result.status == ProbeStatus.REFUSED
    assert "firewall" in result.detail


def test_reset_before_any_answer_is_refused(loopback: str, serve: ServeFactory) -> None:
    server = serve(servers.reset, loopback)

    result = run_probe(*server.endpoint)

    assert result.status == ProbeStatus.REFUSED


def test_host_name_with_several_addresses(serve: ServeFactory, certificate: CertFactory) -> None:
    _, context = certificate(-1, 100)
    server = serve(servers.rdp(servers.connection_confirm(servers.neg_rsp(SSL)), context))
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo("localhost", server.port, type=socket.SOCK_STREAM)}
    except socket.gaierror:
        pytest.skip("localhost does not resolve here")
    if "127.0.0.1" not in addresses:
        pytest.skip("localhost does not resolve to 127.0.0.1 here")

    # "localhost" may resolve to ::1 first, where nothing listens: the probe moves on to 127.0.0.1.
    result = run_probe("localhost", server.port)

    assert result.status == ProbeStatus.HEALTHY and result.host == "localhost"


def test_bracketed_address_is_accepted(loopback: str, serve: ServeFactory, certificate: CertFactory) -> None:
    _, context = certificate(-1, 100)
    server = serve(servers.rdp(servers.connection_confirm(servers.neg_rsp(SSL)), context), loopback)

    result = run_probe(f"[{loopback}]", server.port)

    assert result.status == ProbeStatus.HEALTHY and result.host == loopback


def test_unresolvable_name_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_name(*args: object, **kwargs: object) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)  # never ask a real resolver

    result = run_probe("vm01.example.internal", 3389)

    assert result.status == ProbeStatus.UNREACHABLE
    assert "cannot resolve" in result.detail


def test_no_route_to_host_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_route(*args: object, **kwargs: object) -> Any:
        raise OSError(errno.EHOSTUNREACH, "No route to host")

    monkeypatch.setattr(asyncio, "open_connection", no_route)  # no packet may leave loopback

    result = run_probe("10.0.0.4", 3389)

    assert result.status == ProbeStatus.UNREACHABLE
    assert "No route to host" in result.detail and "NSG" in result.detail


def test_invalid_arguments_raise_instead_of_probing() -> None:
    with pytest.raises(ValueError, match="port"):
        probe("127.0.0.1", 0)
    with pytest.raises(ValueError, match="host"):
        probe("  ", 3389)


# --- Many endpoints --------------------------------------------------------------------------------------


def test_probe_many_keeps_input_order(
    serve: ServeFactory, certificate: CertFactory, closed_port: Callable[[str], int]
) -> None:
    _, good = certificate(-1, 100)
    _, expired = certificate(-100, -1)
    healthy = serve(servers.rdp(servers.connection_confirm(servers.neg_rsp(SSL)), good))
    stale = serve(servers.rdp(servers.connection_confirm(servers.neg_rsp(SSL)), expired))
    no_key = serve(servers.rdp(servers.connection_confirm(servers.neg_failure(3))))
    web = serve(servers.http)
    closed = ("127.0.0.1", closed_port("127.0.0.1"))
    endpoints = [healthy.endpoint, closed, stale.endpoint, web.endpoint, no_key.endpoint] * 3
    expected = [
        ProbeStatus.HEALTHY,
        ProbeStatus.REFUSED,
        ProbeStatus.CERTIFICATE_EXPIRED,
        ProbeStatus.NOT_RDP,
        ProbeStatus.NO_CERTIFICATE,
    ] * 3

    results = probe_many(endpoints, concurrency=4, timeout=5.0, now=lambda: NOW)

    assert [r.status for r in results] == expected
    assert [(r.host, r.port) for r in results] == endpoints


def test_probe_many_never_exceeds_its_concurrency(serve: ServeFactory, certificate: CertFactory) -> None:
    _, context = certificate(-1, 100)
    handler = servers.slow_rdp(servers.connection_confirm(servers.neg_rsp(SSL)), context, delay=0.05)
    server = serve(handler)

    results = probe_many([server.endpoint] * 8, concurrency=2, now=lambda: NOW)

    assert all(r.status == ProbeStatus.HEALTHY for r in results)
    server.settle()
    assert len(server.connections) == 8
    assert 1 <= handler.max_held <= 2  # never more than the limit


def test_probe_many_of_nothing_is_nothing() -> None:
    assert probe_many([]) == []


def test_probe_works_when_called_from_inside_an_event_loop(serve: ServeFactory, certificate: CertFactory) -> None:
    _, context = certificate(-1, 100)
    server = serve(servers.rdp(servers.connection_confirm(servers.neg_rsp(SSL)), context))

    async def async_caller() -> ProbeResult:
        return run_probe(*server.endpoint)  # e.g. an async Function handler calling the engine

    assert asyncio.run(async_caller()).status == ProbeStatus.HEALTHY
