"""Who the caller is, read from the claims of its own access token (Microsoft Learn, "Access token claims
reference"): users by sign-in name, applications by application id, always with the object id and tenant."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from remediate.azure.clients import EMULATOR_CLAIMS, StaticTokenCredential
from remediate.azure.identity import ARM_SCOPE, UnknownCaller, caller_from_claims, current_caller, token_claims


def _token(payload: Any) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    return ".".join((part(b'{"typ":"JWT","alg":"RS256"}'), part(json.dumps(payload).encode()), part(b"sig")))


def test_the_emulator_token_is_a_jwt_with_the_claims_of_a_signed_in_user() -> None:
    token = StaticTokenCredential().get_token(ARM_SCOPE)
    claims = token_claims(token.token)
    assert claims["aud"] == "https://management.azure.com/" and claims["ver"] == "1.0"
    assert claims["exp"] == token.expires_on and claims["iat"] <= claims["nbf"] < claims["exp"]
    caller = current_caller(StaticTokenCredential())
    assert (caller.name, caller.kind, caller.object_id) == ("operator@contoso.example", "user", EMULATOR_CLAIMS["oid"])


def test_v2_tokens_and_applications_are_named_by_their_own_claims() -> None:
    user = caller_from_claims({"oid": "o1", "tid": "t1", "preferred_username": "bob@contoso.com", "azp": "a1"})
    assert (user.name, user.kind) == ("bob@contoso.com", "user")
    app = caller_from_claims({"oid": "o2", "tid": "t1", "azp": "a2", "idtyp": "app"})
    assert (app.name, app.kind) == ("a2", "app") and "Entra ID application, object id o2" in str(app)
    managed = caller_from_claims({"oid": "o3", "tid": "t1", "appid": "a3"})  # no idtyp, no user: an application
    assert managed.kind == "app" and managed.name == "a3"


@pytest.mark.parametrize(
    "token",
    [
        "opaque",
        "a.b",
        "a.!!!.c",
        _token(["not", "an", "object"]),
        _token({"tid": "t1", "upn": "x@y"}),  # no object id
        _token({"oid": "o1", "tid": "t1"}),  # names neither a user nor an application
    ],
)
def test_a_token_that_names_nobody_is_refused(token: str) -> None:
    with pytest.raises(UnknownCaller) as caught:
        caller_from_claims(token_claims(token))
    assert caught.value.reason.startswith("caller:")
