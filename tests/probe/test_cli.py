"""`rdp-remediate probe`: what an admin sees, what a script parses, and the exit codes both rely on."""

from __future__ import annotations

import datetime as dt
import json
import ssl
from collections.abc import Callable

import pytest

from remediate import cli
from tests.probe import servers
from tests.probe.conftest import ServeFactory


@pytest.fixture(autouse=True)
def _only_the_probe_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # Build the real parser with just this subcommand, so these tests do not depend on the others.
    monkeypatch.setattr(cli, "COMMANDS", {"probe": cli.COMMANDS["probe"]})
    for name in ("RDPR_RDP_PORT", "RDPR_PROBE_TIMEOUT_SECONDS", "RDPR_EXPIRY_WARNING_DAYS"):
        monkeypatch.delenv(name, raising=False)


def _real_time_context(tmp_path_factory: pytest.TempPathFactory, not_after: dt.timedelta) -> ssl.SSLContext:
    """The command line uses the real clock, so these certificates are dated from it."""
    now = dt.datetime.now(dt.UTC)
    bundle = servers.make_certificate("vm01", now - dt.timedelta(days=200), now + not_after)
    return servers.server_context(bundle, tmp_path_factory.mktemp("certs"))


@pytest.fixture
def rdp_server(serve: ServeFactory, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., servers.FakeServer]:
    def start(not_after: dt.timedelta, host: str = "127.0.0.1") -> servers.FakeServer:
        context = _real_time_context(tmp_path_factory, not_after)
        return serve(servers.rdp(servers.connection_confirm(servers.neg_rsp(0x1)), context), host)

    return start


def test_expired_certificate_verdict_comes_first_and_exits_1(
    rdp_server: Callable[..., servers.FakeServer], capsys: pytest.CaptureFixture[str]
) -> None:
    server = rdp_server(-dt.timedelta(days=20, hours=1))

    code = cli.main(["probe", server.host, "--port", str(server.port)])

    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert lines[0].startswith("certificate expired 20 days ago (CN=vm01, thumbprint ")
    assert lines[0].endswith("): renew it")
    details = "\n".join(lines[1:])
    assert "certificate-expired" in details and "(self-signed)" in details and "expired 20 days ago" in details


def test_json_output_for_a_healthy_host_exits_0(
    rdp_server: Callable[..., servers.FakeServer], capsys: pytest.CaptureFixture[str]
) -> None:
    server = rdp_server(dt.timedelta(days=100, hours=1))

    code = cli.main(["probe", server.host, "--port", str(server.port), "--json"])

    document = json.loads(capsys.readouterr().out)
    assert code == 0
    assert document["host"] == "127.0.0.1" and document["port"] == server.port
    assert document["status"] == "healthy" and document["detail"].startswith("RDP works")
    assert document["selectedProtocol"] == "PROTOCOL_SSL" and document["negotiationFailure"] is None
    assert document["tlsVersion"] in {"TLSv1.2", "TLSv1.3"}
    assert document["certificate"]["daysRemaining"] == 100
    assert document["certificate"]["selfSigned"] is True
    assert document["certificate"]["notAfter"].endswith("Z")
    assert isinstance(document["elapsedMs"], float)


def test_expiring_soon_still_exits_0_and_the_threshold_is_an_option(
    rdp_server: Callable[..., servers.FakeServer], capsys: pytest.CaptureFixture[str]
) -> None:
    server = rdp_server(dt.timedelta(days=10, hours=1))
    args = ["probe", server.host, "--port", str(server.port), "--json"]

    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "expiring-soon"
    assert cli.main([*args, "--expiry-warning-days", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "healthy"


def test_negotiation_failure_exits_1(serve: ServeFactory, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(servers.rdp(servers.connection_confirm(servers.neg_failure(3))))

    code = cli.main(["probe", server.host, "--port", str(server.port), "--json"])

    document = json.loads(capsys.readouterr().out)
    assert code == 1
    assert document["status"] == "no-certificate"
    assert document["negotiationFailure"] == "SSL_CERT_NOT_ON_SERVER" and document["certificate"] is None


def test_refused_exits_1(closed_port: Callable[[str], int], capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["probe", "127.0.0.1", "--port", str(closed_port("127.0.0.1"))])

    out = capsys.readouterr().out
    assert code == 1
    assert "refused" in out.splitlines()[0] and "firewall" in out.splitlines()[0]


def test_timeout_option_bounds_the_probe(serve: ServeFactory, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(servers.silent)

    code = cli.main(["probe", server.host, "--port", str(server.port), "--timeout", "0.2", "--json"])

    assert code == 1
    assert json.loads(capsys.readouterr().out)["status"] == "no-answer"


def test_port_defaults_to_the_setting(
    rdp_server: Callable[..., servers.FakeServer], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server = rdp_server(dt.timedelta(days=100))
    monkeypatch.setenv("RDPR_RDP_PORT", str(server.port))

    code = cli.main(["probe", server.host, "--json"])

    assert code == 0
    assert json.loads(capsys.readouterr().out)["port"] == server.port


def test_bracketed_ipv6_host(
    loopback: str, rdp_server: Callable[..., servers.FakeServer], capsys: pytest.CaptureFixture[str]
) -> None:
    server = rdp_server(dt.timedelta(days=100), host=loopback)
    host = f"[{loopback}]" if ":" in loopback else loopback

    code = cli.main(["probe", host, "--port", str(server.port)])

    out = capsys.readouterr().out
    assert code == 0
    assert (f"[{loopback}]:{server.port}" if ":" in loopback else f"{loopback}:{server.port}") in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["vm01", "--port", "0"], "port 0 is outside 1-65535"),
        (["vm01", "--port", "65536"], "outside 1-65535"),
        (["vm01", "--port", "rdp"], "port 'rdp' is not a number"),
        (["vm 01"], "not a valid host name"),
        (["vm01_bad.example.com"], "not a valid host name"),
        (["https://vm01"], "no URL scheme"),
        (["vm01:3389"], "give the port with --port"),
        (["[10.0.0.4]"], "bracketed IPv6"),
        (["a" * 64 + ".example.com"], "not a valid host name"),
        (["vm01", "--timeout", "0"], "more than 0"),
        (["vm01", "--timeout", "soon"], "not a number of seconds"),
        (["vm01", "--expiry-warning-days", "0"], "at least 1"),
        ([], "required: host"),
    ],
)
def test_usage_errors_exit_2_with_a_message_and_no_traceback(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["probe", *args])

    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in err
    assert "Traceback" not in err


def test_bad_setting_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RDPR_PROBE_TIMEOUT_SECONDS", "-1")

    code = cli.main(["probe", "127.0.0.1", "--port", "3389"])

    assert code == 2
    assert "RDPR_PROBE_TIMEOUT_SECONDS" in capsys.readouterr().err
