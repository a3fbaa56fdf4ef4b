"""Which URLs may carry the credential: exactly the configured endpoints' scheme, host and port."""

from __future__ import annotations

import base64
import json

import pytest

from remediate.azure.clients import check_continuation_token, refuse_untrusted, trusted_hosts
from remediate.model import UntrustedHost
from remediate.settings import Settings

TRUSTED = trusted_hosts(Settings.from_env({}))  # management.azure.com and api.loganalytics.io


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://management.azure.com/subscriptions/x?api-version=1", True),
        ("https://MANAGEMENT.azure.com:443/x", True),
        ("https://api.loganalytics.io/v1/workspaces/w/query", True),
        ("http://management.azure.com/x", False),  # no plain HTTP
        ("https://management.azure.com:8443/x", False),  # another port
        ("https://management.azure.com.evil.example/x", False),
        ("https://management.azure.com@evil.example/x", False),  # user-info trick: the host is evil.example
        ("https://evil.example/management.azure.com", False),
        ("https://management.azure.com\u3002evil.example/x", False),  # ideographic full stop
        ("https://managemen\u0442.azure.com/x", False),  # Cyrillic te
        ("https://management.azure.com:99999/x", False),  # not a port
        ("/relative/path", False),
        ("", False),
    ],
)
def test_only_the_configured_endpoints_are_trusted(url: str, allowed: bool) -> None:
    if allowed:
        refuse_untrusted(url, TRUSTED)
    else:
        with pytest.raises(UntrustedHost, match="refused to send the Azure credential"):
            refuse_untrusted(url, TRUSTED)


def _token(**headers: str) -> str:
    state = {
        "request": {"method": "POST", "url": "https://management.azure.com/subscriptions/s/restart", "headers": {}},
        "response": {"status_code": 202, "headers": headers, "content": ""},
        "context": {"deserialized_data": None},
    }
    return base64.b64encode(json.dumps({"version": 1, "data": state}).encode()).decode()


def test_a_token_naming_only_azure_is_accepted() -> None:
    check_continuation_token(_token(Location="https://management.azure.com/op?monitor=true"), TRUSTED)


@pytest.mark.parametrize("header", ["Azure-AsyncOperation", "Location", "Operation-Location", "x-anything"])
def test_a_token_naming_another_host_anywhere_is_refused(header: str) -> None:
    with pytest.raises(UntrustedHost, match=r"evil\.example"):
        check_continuation_token(_token(**{header: "https://evil.example/op"}), TRUSTED)


@pytest.mark.parametrize("token", ["not base64!", base64.b64encode(b"\x80\x04pickle").decode(), ""])
def test_a_token_azure_core_did_not_make_is_refused(token: str) -> None:
    with pytest.raises(UntrustedHost, match="not one azure-core made"):
        check_continuation_token(token, TRUSTED)
