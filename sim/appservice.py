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


def client_principal(name: str, *roles: str) -> str:
    """The `X-MS-CLIENT-PRINCIPAL` value for a caller `name` holding `roles`."""
    claims = [{"typ": "name", "val": name}, *({"typ": "roles", "val": role} for role in roles)]
    data = {"auth_typ": "aad", "name_typ": "name", "role_typ": "roles", "claims": claims}
    return base64.b64encode(json.dumps(data).encode()).decode()


def operator_headers(name: str = "runbook-identity") -> dict[str, str]:
    """The headers a runbook's request carries once App Service authentication has let it in."""
    return {"x-ms-client-principal": client_principal(name, OPERATOR)}
