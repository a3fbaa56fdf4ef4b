"""The probe's pure half: the bytes it sends, how it reads answers, and how it classifies certificates."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remediate.probe import (
    MAX_CONFIRM_BYTES,
    CertificateInfo,
    MalformedReply,
    Negotiation,
    ProbeResult,
    ProbeStatus,
    certificate_verdict,
    clock_skew,
    connection_request,
    describe_certificate,
    negotiation_verdict,
    parse_connection_confirm,
    parse_tpkt_header,
)
from tests.probe import servers
from tests.probe.conftest import DAY, NOW


def test_connection_request_offers_tls_and_credssp_and_nothing_else() -> None:
    # MS-RDPBCGR 4.1.1 without the routing cookie: TPKT v3 (19 bytes), X.224 CR, RDP_NEG_REQ (SSL | HYBRID).
    assert connection_request() == bytes.fromhex("030000130ee000000000000100080003000000")


# --- Connection Confirm ----------------------------------------------------------------------------------


def test_negotiation_response_gives_the_selected_protocol() -> None:
    confirm = servers.connection_confirm(servers.neg_rsp(0x2))
    assert parse_tpkt_header(confirm[:4]) == len(confirm) == 19
    assert parse_connection_confirm(confirm[4:]) == Negotiation(selected_protocol=0x2)


def test_negotiation_failure_gives_the_code() -> None:
    confirm = servers.connection_confirm(servers.neg_failure(5))
    assert parse_connection_confirm(confirm[4:]) == Negotiation(failure_code=5)


def test_confirm_without_negotiation_data_means_standard_rdp_security() -> None:
    confirm = servers.connection_confirm()
    assert parse_tpkt_header(confirm[:4]) == 11
    assert parse_connection_confirm(confirm[4:]) == Negotiation()


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"HTTP", "'HTTP' instead of a TPKT header"),
        (b"\x16\x03\x01\x00", "16 03 01 00 instead of a TPKT header"),  # a TLS server speaking first
        (b"\x03\x00\xff\xff", "65535 bytes"),
        (b"\x03\x00\x00\x05", "5 bytes"),
        (b"\x03\x00", "instead of a TPKT header"),
    ],
)
def test_impossible_tpkt_headers_are_rejected(header: bytes, message: str) -> None:
    with pytest.raises(MalformedReply, match=message):
        parse_tpkt_header(header)


def _tpdu(code: int, data: bytes = b"", length_indicator: int | None = None) -> bytes:
    rest = bytes([code, 0, 0, 0, 0, 0]) + data
    return bytes([len(rest) if length_indicator is None else length_indicator]) + rest


@pytest.mark.parametrize(
    ("tpdu", "message"),
    [
        (_tpdu(0x80), "code 0x80"),  # X.224 Disconnect Request
        (_tpdu(0xD0, length_indicator=9), "length indicator"),
        (_tpdu(0xD0, b"\x02\x00\x08"), "3 bytes of negotiation data"),
        (_tpdu(0xD0, struct.pack("<BBHI", 2, 0, 12, 1)), "announcing 12 bytes"),
        (_tpdu(0xD0, struct.pack("<BBHI", 7, 0, 8, 1)), "unknown type 0x07"),
    ],
    ids=["disconnect-request", "bad-length-indicator", "short-negotiation", "bad-negotiation-length", "bad-type"],
)
def test_malformed_confirms_are_rejected(tpdu: bytes, message: str) -> None:
    with pytest.raises(MalformedReply, match=message):
        parse_connection_confirm(tpdu)


@given(st.binary(max_size=64))
def test_any_bytes_parse_or_raise_malformed_reply(data: bytes) -> None:
    """A hostile peer can make the parser say "not RDP", never crash it."""
    try:
        length = parse_tpkt_header(data[:4])
        assert 11 <= length <= MAX_CONFIRM_BYTES
        parse_connection_confirm(data[4:])
    except MalformedReply:
        pass


# --- Negotiation verdicts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("negotiation", "status"),
    [
        (Negotiation(selected_protocol=0x1), None),
        (Negotiation(selected_protocol=0x2), None),
        (Negotiation(selected_protocol=0x0), ProbeStatus.TLS_NOT_OFFERED),
        (Negotiation(), ProbeStatus.TLS_NOT_OFFERED),
        (Negotiation(selected_protocol=0x8), ProbeStatus.NEGOTIATION_FAILED),  # HYBRID_EX, never offered
        (Negotiation(selected_protocol=0x3), ProbeStatus.NEGOTIATION_FAILED),  # two protocols at once
        (Negotiation(failure_code=3), ProbeStatus.NO_CERTIFICATE),
        (Negotiation(failure_code=2), ProbeStatus.TLS_NOT_OFFERED),
        (Negotiation(failure_code=1), ProbeStatus.NEGOTIATION_FAILED),
        (Negotiation(failure_code=6), ProbeStatus.NEGOTIATION_FAILED),
    ],
)
def test_negotiation_verdicts(negotiation: Negotiation, status: ProbeStatus | None) -> None:
    verdict = negotiation_verdict(negotiation)
    assert (verdict[0] if verdict else None) == status


def test_tls_not_offered_is_reported_not_fixed() -> None:
    verdict = negotiation_verdict(Negotiation())
    assert verdict is not None and "never changes security settings" in verdict[1]


# --- Certificates ----------------------------------------------------------------------------------------


def _info(not_before_days: float, not_after_days: float, now: dt.datetime = NOW) -> CertificateInfo:
    bundle = servers.make_certificate("vm01", NOW + not_before_days * DAY, NOW + not_after_days * DAY)
    return describe_certificate(bundle.der, now)


def test_describe_certificate_reads_what_windows_shows() -> None:
    bundle = servers.make_certificate("vm01", NOW - 10 * DAY, NOW + 170 * DAY)

    info = describe_certificate(bundle.der, NOW)

    assert info.subject == info.issuer == "CN=vm01"
    assert info.thumbprint_sha1 == hashlib.sha1(bundle.der).hexdigest().upper()
    assert info.not_before == NOW - 10 * DAY and info.not_after == NOW + 170 * DAY
    assert info.days_remaining == 170
    assert info.self_signed


def test_same_names_but_a_foreign_signature_is_not_self_signed() -> None:
    bundle = servers.make_certificate("vm01", NOW - DAY, NOW + DAY, forged_self_name=True)
    assert not describe_certificate(bundle.der, NOW).self_signed


def test_garbage_is_not_a_certificate() -> None:
    with pytest.raises(ValueError):
        describe_certificate(b"\x30\x03\x02\x01\x00", NOW)


def test_days_remaining_counts_whole_days() -> None:
    assert _info(-10, 3, now=NOW + dt.timedelta(minutes=5)).days_remaining == 2  # 2 days 23:55 left
    assert _info(-200, -20, now=NOW + dt.timedelta(minutes=5)).days_remaining == -20  # 20 days 5 min ago


@pytest.mark.parametrize(
    ("moment", "status"),
    [
        (NOW - dt.timedelta(seconds=1), ProbeStatus.CERTIFICATE_NOT_YET_VALID),
        (NOW, ProbeStatus.HEALTHY),  # not_before itself is valid
        (NOW + 16 * DAY, ProbeStatus.HEALTHY),  # exactly 14 days left: not yet "fewer than 14"
        (NOW + 16 * DAY + dt.timedelta(seconds=1), ProbeStatus.EXPIRING_SOON),
        (NOW + 30 * DAY - dt.timedelta(seconds=1), ProbeStatus.EXPIRING_SOON),
        (NOW + 30 * DAY, ProbeStatus.CERTIFICATE_EXPIRED),  # not_after itself is expired
    ],
)
def test_certificate_boundaries(moment: dt.datetime, status: ProbeStatus) -> None:
    info = _info(0, 30, now=moment)
    assert certificate_verdict(info, moment, expiry_warning_days=14)[0] == status


def test_verdicts_say_what_to_do() -> None:
    expiring = certificate_verdict(_info(-170, 3), NOW, 14)[1]
    assert "expires in 3 days" in expiring and "renew it soon" in expiring
    not_yet = certificate_verdict(_info(1, 30), NOW, 14)[1]
    assert "clock" in not_yet


# --- Result ----------------------------------------------------------------------------------------------


def test_result_json_has_the_documented_fields() -> None:
    info = _info(-10, 170)
    result = ProbeResult("10.0.0.4", 3389, ProbeStatus.HEALTHY, "RDP works", "PROTOCOL_SSL", None, "TLSv1.2",
                         "ECDHE-RSA-AES256-GCM-SHA384", info, 12.5)  # fmt: skip

    document = json.loads(json.dumps(result.to_json()))

    assert set(document) >= {
        "host", "port", "status", "detail", "selected_protocol", "negotiation_failure", "tls_version",
        "certificate", "elapsed_ms",
    }  # fmt: skip
    assert document["status"] == "healthy" and document["port"] == 3389
    assert document["certificate"] == {
        "subject": "CN=vm01",
        "issuer": "CN=vm01",
        "not_before": "2026-02-19T12:00:00Z",
        "not_after": "2026-08-18T12:00:00Z",
        "days_remaining": 170,
        "thumbprint_sha1": info.thumbprint_sha1,
        "self_signed": True,
    }


def test_statuses_are_exactly_the_documented_strings() -> None:
    assert {str(s) for s in ProbeStatus} == {
        "healthy", "expiring-soon", "certificate-expired", "certificate-not-yet-valid", "no-certificate",
        "tls-not-offered", "negotiation-failed", "tls-handshake-failed", "not-rdp", "no-answer", "refused", "timeout",
        "unreachable",
    }  # fmt: skip
    assert {s for s in ProbeStatus if s.rdp_works} == {ProbeStatus.HEALTHY, ProbeStatus.EXPIRING_SOON}


# --- clock skew: the certificate read by our clock and by the guest's ---------------------------------------------


def test_a_certificate_valid_by_our_clock_but_expired_by_the_guests_is_clock_skew() -> None:
    now = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)
    not_before, not_after = now - dt.timedelta(days=170), now + dt.timedelta(days=2)
    sentence = clock_skew(not_before, not_after, now, dt.timedelta(days=3))
    assert sentence is not None and "runs 3 days ahead" in sentence
    assert "valid by ours and expired by the guest's" in sentence


def test_a_certificate_made_on_a_clock_running_ahead_is_clock_skew() -> None:
    now = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)
    made = now + dt.timedelta(days=3)
    sentence = clock_skew(made, made + dt.timedelta(days=180), now, dt.timedelta(days=3))
    assert sentence is not None and "not yet valid by ours and valid by the guest's" in sentence


def test_clocks_that_agree_on_the_verdict_or_are_within_tolerance_are_not_skew() -> None:
    now = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)
    expired = (now - dt.timedelta(days=200), now - dt.timedelta(days=20))
    assert clock_skew(*expired, now, dt.timedelta(days=3)) is None  # expired by both: the ladder's to renew
    near = (now - dt.timedelta(days=10), now + dt.timedelta(minutes=2))
    assert clock_skew(*near, now, dt.timedelta(minutes=4)) is None  # within Kerberos' 5-minute tolerance
    assert clock_skew(*near, now, dt.timedelta(minutes=6)) is not None
