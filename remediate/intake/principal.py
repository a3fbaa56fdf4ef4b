"""The caller of an HTTP route, as App Service authentication (Microsoft Entra ID) vouches for it.

App Service injects `X-MS-CLIENT-PRINCIPAL`: a Base64-encoded JSON object with `auth_typ`, `name_typ`, `role_typ`
and `claims` (a list of `{"typ", "val"}`); external requests cannot set it, so it is present only when the platform
authenticated the caller (Microsoft Learn, "Work with user identities in Azure App Service authentication",
"Decoding the client principal header"). The name is the claim of type `name_typ`, the roles the claims of type
`role_typ` (app roles assigned to the user or the calling application).

That guarantee holds only while App Service authentication is on: without it the header is whatever the client
sent. The platform tells the app in `WEBSITE_AUTH_ENABLED` (Microsoft Learn, "Environment variables and app
settings in Azure App Service": read-only, injected to say whether authentication is enabled), so the header is
believed only when that says `true`; otherwise there is no authenticated caller at all.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

HEADER = "x-ms-client-principal"
PLATFORM_AUTH = "WEBSITE_AUTH_ENABLED"
_ROLE_CLAIMS = ("roles", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role")
# A name when the token has none of type `name_typ`: users have a UPN; app-only tokens only the client's id
# (`appid` in v1 tokens, `azp` in v2: Microsoft Learn, "Access token claims reference").
_NAME_FALLBACKS = ("preferred_username", "upn", "appid", "azp")
# The object id never changes while a display name or UPN can be renamed or reused: the audit keeps both.
_OBJECT_ID_CLAIMS = ("http://schemas.microsoft.com/identity/claims/objectidentifier", "oid")


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[str]
    identity_provider: str
    object_id: str = ""

    def __str__(self) -> str:
        who = f"{self.identity_provider}, oid {self.object_id}" if self.object_id else self.identity_provider
        return f"{self.name} ({who})"


def platform_authenticates(environ: Mapping[str, str] | None = None) -> bool:
    """True when App Service authentication is on, so the platform (not the client) sets the principal header."""
    value = (os.environ if environ is None else environ).get(PLATFORM_AUTH, "")
    return value.strip().lower() == "true"


def principal_of(headers: Mapping[str, str], environ: Mapping[str, str] | None = None) -> Principal | None:
    """The authenticated caller, or None when the platform sent no (readable) principal, or cannot have."""
    if not platform_authenticates(environ):
        return None  # a client-set header is not an identity
    raw = next((value for key, value in headers.items() if key.lower() == HEADER), None)
    if not raw:
        return None
    try:
        data = json.loads(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
        return None
    claims = [c for c in data["claims"] if isinstance(c, dict) and isinstance(c.get("val"), str)]
    name_type = data.get("name_typ") or "name"
    role_types = {data.get("role_typ"), *_ROLE_CLAIMS} - {None}
    by_type = {c.get("typ"): c["val"] for c in claims}
    object_id = next((by_type[t] for t in _OBJECT_ID_CLAIMS if by_type.get(t)), "")
    name = by_type.get(name_type) or next((by_type[t] for t in _NAME_FALLBACKS if by_type.get(t)), "") or object_id
    roles = frozenset(c["val"] for c in claims if c.get("typ") in role_types)
    if not name:
        return None
    return Principal(name[:200], roles, str(data.get("auth_typ") or "unknown")[:50], object_id[:64])
