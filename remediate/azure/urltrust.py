"""Where a URL really goes: the one function that decides which endpoint a credential-bearing request reaches.

The trust check must read a URL the way the transport will. azure-core sends through `requests`, which parses
with urllib3's `parse_url`; the standard library's `urlparse` reads some URLs differently. The classic case is
`https://evil.example\\@management.azure.com/`: `urlparse` sees host `management.azure.com` (the backslash is
part of the user-info), urllib3 sees host `evil.example` (the backslash ends the authority) and connects there.
A check built on one parser and a transport built on the other would send the bearer token to `evil.example`.

So a URL is trusted only when it is unambiguous: no backslash, whitespace or control character anywhere, no
user-info (`@`) in the authority, a host of DNS letters or an IP literal, and urllib3 and `urlparse` agree on
scheme, host and port. The endpoint is then taken from urllib3's reading, the one the transport acts on.
Anything else gets no key, and a URL with no key is never trusted.
"""

from __future__ import annotations

import re
from urllib.parse import urlparse

HostKey = tuple[str, str, int]

# Backslash (urllib3 and WHATWG end the authority there; RFC 3986 parsers do not), any Unicode whitespace and
# any C0/C1 control or DEL (parsers strip or reject them differently, and requests strips leading whitespace).
_AMBIGUOUS = re.compile(r"[\\\s\x00-\x1f\x7f-\x9f]")
_DEFAULT_PORTS = {"https": 443, "http": 80}
# A DNS name or an IP literal, nothing else: no percent-escapes, no IDNA guesswork, no zone ids.
_HOST = re.compile(r"[a-z0-9.-]+|\[[0-9a-f:.]+\]", re.ASCII)


def host_key(url: str) -> HostKey | None:
    """(scheme, host, port) the transport would connect to, host lower-cased; None unless it is unambiguous."""
    from urllib3.exceptions import LocationParseError  # lazy: urllib3 comes with requests, imported anyway
    from urllib3.util import parse_url

    if not url or _AMBIGUOUS.search(url):
        return None
    try:
        theirs = parse_url(url)
        ours = urlparse(url)
        our = (ours.scheme.lower(), (ours.hostname or "").lower(), ours.port)
    except (LocationParseError, ValueError):  # an unparseable host, a port that is not a number or out of range
        return None
    if theirs.auth is not None or "@" in ours.netloc:  # user-info: the classic place to hide a second host
        return None
    return _agreed(theirs.scheme, theirs.host, theirs.port, our)


def _agreed(scheme: str | None, host: str | None, port: int | None, our: tuple[str, str, int | None]) -> HostKey | None:
    """urllib3's (scheme, host, port) when it names an http(s) host and `urlparse`'s reading is the same."""
    scheme, host = (scheme or "").lower(), (host or "").lower()
    if scheme not in _DEFAULT_PORTS or not _HOST.fullmatch(host):
        return None
    key = (scheme, host, port if port is not None else _DEFAULT_PORTS[scheme])
    our_port = our[2] if our[2] is not None else _DEFAULT_PORTS[scheme]
    agree = our[0] == scheme and our[1] == host.strip("[]") and our_port == key[2]  # IPv6: urllib3 keeps brackets
    return key if agree else None


# A string inside a stored operation that a poller could follow: an absolute URL (`scheme:/` or `scheme:\`)
# or a network-path reference (`//host`, `\\host`), anywhere after optional whitespace.
_URL_LIKE = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:[/\\]|[/\\]{2})", re.IGNORECASE)


def looks_like_url(text: str) -> bool:
    """Whether `text` could name a host (and so must be checked before anything follows it)."""
    return bool(_URL_LIKE.match(text)) or "://" in text
