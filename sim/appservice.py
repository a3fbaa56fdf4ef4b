"""What App Service authentication (Microsoft Entra ID) hands the app for an authenticated caller.

The platform validates the caller's token and injects `X-MS-CLIENT-PRINCIPAL`: Base64-encoded JSON with
`auth_typ`, `name_typ`, `role_typ` and `claims`, a list of `{"typ", "val"}` (Microsoft Learn, "Work with user
identities in Azure App Service authentication", "Decoding the client principal header"). A caller's app roles
arrive as `roles` claims. It also sets `WEBSITE_AUTH_ENABLED=True` in the app's environment (Microsoft Learn,
"Environment variables and app settings in Azure App Service"). Tests and the demo play that part here.
"""

from __future__ import annotations

import base64
import json

PLATFORM_SETTING = ("WEBSITE_AUTH_ENABLED", "True")
OPERATOR = "Remediation.Operator"
APPROVER = "Remediation.Approver"


# The claim types App Service uses for Microsoft Entra ID: "typically a URI" (Microsoft Learn, "Work with user
# identities in Azure App Service authentication"); the role claim type is the .NET role URI.
NAME_TYPE = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress"
ROLE_TYPE = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
OBJECT_ID_TYPE = "http://schemas.microsoft.com/identity/claims/objectidentifier"


def client_principal(name: str, *roles: str, object_id: str = "") -> str:
    """The `X-MS-CLIENT-PRINCIPAL` value for a signed-in user `name` holding the app `roles`."""
    claims = [{"typ": NAME_TYPE, "val": name}, *({"typ": ROLE_TYPE, "val": role} for role in roles)]
    if object_id:
        claims.append({"typ": OBJECT_ID_TYPE, "val": object_id})
    data = {"auth_typ": "aad", "name_typ": NAME_TYPE, "role_typ": ROLE_TYPE, "claims": claims}
    return base64.b64encode(json.dumps(data).encode()).decode()


def app_principal(client_id: str, object_id: str, *roles: str) -> str:
    """The header for an application's own (app-only, v2) token: no user name, the client id in `azp`, the app
    roles granted to it as `roles` claims (Microsoft Learn, "Access token claims reference")."""
    claims = [
        {"typ": "azp", "val": client_id},
        {"typ": OBJECT_ID_TYPE, "val": object_id},
        *({"typ": "roles", "val": role} for role in roles),
    ]
    data = {"auth_typ": "aad", "name_typ": NAME_TYPE, "role_typ": ROLE_TYPE, "claims": claims}
    return base64.b64encode(json.dumps(data).encode()).decode()


def operator_headers(name: str = "runbook-identity") -> dict[str, str]:
    """The headers a runbook's request carries once App Service authentication has let it in."""
    return {"x-ms-client-principal": client_principal(name, OPERATOR)}
