"""A URL the trust check accepts is read the same way by every parser on the way to the socket.

The check (`remediate.azure.urltrust.host_key`) and the transport (requests over urllib3) must never disagree
about the host: if they did, the check would approve one host and the token would go to another. Hypothesis
builds URLs from the characters that split parsers (backslash, `@`, whitespace, controls, brackets, percent,
look-alike dots) and checks every accepted one against `urlparse`, urllib3's `parse_url` and the URL requests
actually prepares for sending.
"""

from __future__ import annotations

from urllib.parse import urlparse

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from urllib3.util import parse_url

from remediate.azure.urltrust import host_key, looks_like_url

_TRICKY = "\\@:/?#[]%.\t\n\r \x00\x7f\x85\u00a0\u2028\u3002\uff0e\u212a\u0131"
_HOSTS = ["management.azure.com", "evil.example", "127.0.0.1", "[::1]", "MANAGEMENT.Azure.com", "xn--bcher-kva.example"]
_piece = st.one_of(st.sampled_from(_HOSTS), st.text(alphabet=_TRICKY + "abcevil0129", max_size=8))
_url = st.builds(
    lambda scheme, parts, tail: scheme + "".join(parts) + tail,
    st.sampled_from(["https://", "http://", "HTTPS://", "https:\\\\", "https:/", "//", "ftp://", ""]),
    st.lists(_piece, min_size=1, max_size=5),
    st.sampled_from(["", "/x", "/subscriptions/s?api-version=1", "#f", ":443/x", ":8443", ":99999/x"]),
)


def _port(scheme: str, port: int | None) -> int:
    return port if port is not None else {"https": 443, "http": 80}[scheme]


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_url)
def test_every_parser_agrees_on_an_accepted_url(url: str) -> None:
    key = host_key(url)
    if key is None:
        return
    scheme, host, port = key
    std, ours = urlparse(url), parse_url(url)
    assert (std.scheme.lower(), (std.hostname or "").lower(), _port(scheme, std.port)) == (
        scheme,
        host.strip("[]"),
        port,
    )
    assert (ours.scheme, (ours.host or "").lower(), _port(scheme, ours.port)) == (scheme, host, port)
    try:
        sent = requests.Request("GET", url).prepare().url  # what requests hands urllib3 for the connection
    except requests.exceptions.InvalidURL:
        return  # requests refuses to send it at all: nothing can reach another host
    assert sent is not None
    final = parse_url(sent)
    assert ((final.host or "").lower(), _port(scheme, final.port)) == (host, port)
    assert final.auth is None


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example\\@management.azure.com/x",  # urlparse: management.azure.com; urllib3: evil.example
        "https://evil.example\\\\@management.azure.com/x",
        "https:\\\\management.azure.com/x",
        "https://management.azure.com\\x",
        "https://management.azure.com/x\\y",  # a backslash anywhere: no parser gets a vote on it
        "https://user@management.azure.com/x",  # user-info, even on the right host
        "https://management.azure.com%40evil.example/x",
        " https://management.azure.com/x",  # requests strips this; the check does not guess
        "https://management.azure.com\t/x",
        "https://management.azure.com/\x00",
        "https://management.azure.com\u3002evil.example/x",
        "https://b\u00fccher.example/x",  # urllib3 IDNA-encodes, urlparse does not: not the same host
    ],
)
def test_an_ambiguous_url_has_no_endpoint(url: str) -> None:
    assert host_key(url) is None


@pytest.mark.parametrize(
    ("text", "url_like"),
    [
        ("https://management.azure.com/x", True),
        ("HTTPS:\\\\evil.example", True),
        ("https:/evil.example", True),
        ("//evil.example/x", True),
        ("\\\\evil.example\\x", True),
        ("  https://evil.example", True),
        ("Succeeded", False),
        ("2026-11-29T17:00:00Z", False),
        ("/subscriptions/s/providers/Microsoft.Compute/locations/x/operations/1", False),
    ],
)
def test_strings_a_poller_could_follow_are_recognised(text: str, url_like: bool) -> None:
    assert looks_like_url(text) is url_like
