"""Who is calling, from the caller's own Azure credential: the claims of its access token for Resource Manager.

The command line runs with the operator's credential (Azure CLI sign-in, a service principal, a managed identity).
Its token for `https://management.azure.com/.default` is a JWT whose payload names the identity (Microsoft Learn,
"Access token claims reference"): `oid` (the object id: immutable, what an audit trail should key on), `tid`
(the tenant), for users `upn` / `unique_name` (v1.0 tokens, which Resource Manager is issued) or
`preferred_username` (v2.0), and for applications `appid` (v1.0) / `azp` (v2.0), with the optional `idtyp`
claim saying `app` or `user`. The payload is read without verifying the signature: the token is the caller's own,
just obtained from the credential, and nothing here grants access on its strength (Resource Manager and the
ledger's storage do their own checks); it only names the caller in the record.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from remediate.model import PermanentError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

ARM_SCOPE = "https://management.azure.com/.default"


class UnknownCaller(PermanentError):
    """The credential's token does not say who the caller is: nothing may be recorded in its name."""


@dataclass(frozen=True)
class Caller:
    object_id: str
    tenant_id: str
    name: str  # the user's sign-in name, or the application's id
    kind: str  # "user" | "app"

    def __str__(self) -> str:
        what = "application" if self.kind == "app" else "user"
        return f"{self.name} (Entra ID {what}, object id {self.object_id}, tenant {self.tenant_id})"

    def to_json(self) -> dict[str, str]:
        return {"objectId": self.object_id, "tenantId": self.tenant_id, "name": self.name, "kind": self.kind}


def token_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT (header.payload.signature, each base64url without padding), unverified."""
    parts = token.split(".")
    if len(parts) != 3:
        raise UnknownCaller("caller: the Azure credential's token is not a JWT, so it names nobody")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise UnknownCaller("caller: the Azure credential's token payload cannot be read") from exc
    if not isinstance(claims, dict):
        raise UnknownCaller("caller: the Azure credential's token payload is not a JSON object")
    return claims


def caller_from_claims(claims: dict[str, Any]) -> Caller:
    oid, tid = claims.get("oid"), claims.get("tid")
    if not isinstance(oid, str) or not oid or not isinstance(tid, str) or not tid:
        raise UnknownCaller("caller: the Azure credential's token has no object id (oid) and tenant (tid)")
    app = claims.get("appid") or claims.get("azp")
    user = claims.get("upn") or claims.get("preferred_username") or claims.get("unique_name")
    # `idtyp` is optional; without it a token with no user name is an application's (client credentials).
    is_app = claims.get("idtyp") == "app" or not user
    name = app if is_app else user
    if not isinstance(name, str) or not name:
        raise UnknownCaller("caller: the Azure credential's token names neither a user nor an application")
    return Caller(oid, tid, name, "app" if is_app else "user")


def current_caller(credential: TokenCredential) -> Caller:
    """The identity the credential signs in as, from its Resource Manager token."""
    return caller_from_claims(token_claims(credential.get_token(ARM_SCOPE).token))
