"""Fixtures for the probe's tests: loopback addresses, certificates and the local servers that play hosts."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.probe import servers

# Every certificate date in these tests is relative to this instant, and the probe is given the same clock.
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe_socket:
            probe_socket.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture(
    params=[
        "127.0.0.1",
        pytest.param(
            "::1",
            marks=pytest.mark.skipif(not _ipv6_loopback_available(), reason="no IPv6 loopback (::1) here"),
        ),
    ],
    ids=["ipv4", "ipv6"],
)
def loopback(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs once on IPv4 and once on IPv6 loopback."""
    host: str = request.param
    return host


ServeFactory = Callable[..., servers.FakeServer]


@pytest.fixture
def serve() -> Iterator[ServeFactory]:
    """Start a FakeServer (`serve(handler, host=...)`); every one started is stopped after the test."""
    started: list[servers.FakeServer] = []

    def start(handler: servers.Handler, host: str = "127.0.0.1") -> servers.FakeServer:
        server = servers.FakeServer(handler, host)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


CertFactory = Callable[..., tuple[servers.CertBundle, ssl.SSLContext]]


@pytest.fixture
def certificate(tmp_path: Path) -> CertFactory:
    """`certificate(not_before_days, not_after_days, ...)` -> (certificate, server TLS context), dates in
    days relative to NOW."""

    def make(
        not_before_days: float,
        not_after_days: float,
        *,
        common_name: str = "vm01",
        version: ssl.TLSVersion | None = None,
        **kwargs: bool,
    ) -> tuple[servers.CertBundle, ssl.SSLContext]:
        bundle = servers.make_certificate(
            common_name, NOW + not_before_days * DAY, NOW + not_after_days * DAY, **kwargs
        )
        return bundle, servers.server_context(bundle, tmp_path, version)

    return make


@pytest.fixture
def closed_port() -> Callable[[str], int]:
    """A port on which nothing listens (bound, then released) for the given loopback address."""

    def pick(host: str) -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        return port

    return pick
