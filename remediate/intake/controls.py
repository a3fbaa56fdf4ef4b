"""The HTTP side of the operator's controls (runbook requests, status, release, approve, reject): the caller
checked, input checked, 4xx named.

Every route but the alert route needs a caller that App Service authentication (Microsoft Entra ID) vouches
for, holding the route's app role. The function key alone opens none of them: the action group holds that key
(host keys open every function-level route), so whoever can read the action group's receiver can post alerts
and nothing else. Bad input changes nothing: the caller, the request id and the body are checked before the
ledger is touched, and a request in the wrong state is refused with 409 naming the state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from remediate.intake.principal import Principal, platform_authenticates, principal_of
from remediate.intake.service import IntakeAnswer
from remediate.model import NotFound, TransientError

if TYPE_CHECKING:
    from remediate.intake.app import App

MAX_REASON = 1000


def _error(status: int, code: str, field: str | None, message: str) -> IntakeAnswer:
    return IntakeAnswer(status, {"error": {"code": code, "field": field, "message": message}})


def request_id_error(request_id: str) -> IntakeAnswer | None:
    if not request_id or len(request_id) > 64 or not request_id.isalnum():
        return _error(
            400, "InvalidRequestId", "request_id", "request_id: expected the id returned when the request was accepted"
        )
    return None


def read_reason(body: bytes, *, required: bool) -> str | IntakeAnswer:
    """The `reason` field of a JSON body: text, at most 1,000 characters."""
    data: Any = {}
    if body.strip():
        try:
            data = json.loads(body)
        except ValueError:
            return _error(400, "InvalidJson", None, 'the body is not JSON: send {"reason": "..."}')
    if not isinstance(data, dict):
        return _error(400, "InvalidBody", None, 'the body must be a JSON object: {"reason": "..."}')
    reason = data.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON or (required and not reason.strip()):
        return _error(400, "InvalidReason", "reason", f"reason: text of 1 to {MAX_REASON} characters, saying why")
    return reason.strip() or "no reason given"


def authorised(headers: Mapping[str, str], *roles: str) -> Principal | IntakeAnswer:
    """The caller App Service authentication vouches for, holding one of `roles`; else the 401/403."""
    principal = principal_of(headers)
    if principal is None:
        why = (
            "no authenticated principal in X-MS-CLIENT-PRINCIPAL"
            if platform_authenticates()
            else "App Service authentication is off on this app, so no caller can be trusted (deploy with "
            "authClientId: docs/deploy.md)"
        )
        return _error(
            401,
            "Unauthenticated",
            "caller",
            f"caller: {why}; this route needs a Microsoft Entra token (the function key opens only /api/alerts)",
        )
    if not principal.roles & set(roles):
        names = " or ".join(repr(role) for role in roles)
        return _error(403, "MissingAppRole", "caller", f"caller: {principal.name} lacks the app role {names}")
    return principal


def release_answer(app: App, request_id: str, body: bytes, headers: Mapping[str, str]) -> IntakeAnswer:
    """POST /api/remediations/{id}/release: run a request the storm guard holds, now. Releasing passes a safety
    control, so it needs the approver role."""
    from remediate.intake.gate import NotHeld, release

    checked = _checked_control(app, request_id, body, headers, reason_required=False)
    if isinstance(checked, IntakeAnswer):
        return checked
    caller, reason = checked
    try:
        when = release(app.ledger, app.queue.queue, app.storm, request_id, caller, reason)
    except NotFound as exc:
        return _error(404, "NotFound", "request_id", exc.reason)
    except NotHeld as exc:
        return _error(409, "NotHeld", "request_id", exc.reason)
    except TransientError as exc:
        return _error(503, "ServiceUnavailable", None, exc.reason)
    return IntakeAnswer(
        200, {"requestId": request_id, "state": "queued", "releasedBy": caller, "releasedAt": when.isoformat()}
    )


def decision_answer(
    app: App, request_id: str, body: bytes, headers: Mapping[str, str], *, approve: bool
) -> IntakeAnswer:
    """POST /api/remediations/{id}/approve and /reject: only an authenticated caller with the approver role."""
    from remediate.intake.approval import NotAwaiting, decide

    checked = _checked_control(app, request_id, body, headers, reason_required=True)
    if isinstance(checked, IntakeAnswer):
        return checked
    who, reason = checked
    try:
        decided = decide(app.ledger, app.queue.queue, request_id, who, reason, approve=approve)
    except NotFound as exc:
        return _error(404, "NotFound", "request_id", exc.reason)
    except NotAwaiting as exc:
        return _error(409, exc.code, "request_id", exc.reason)
    except TransientError as exc:
        return _error(503, "ServiceUnavailable", None, exc.reason)
    return IntakeAnswer(200, decided)


def _checked_control(
    app: App, request_id: str, body: bytes, headers: Mapping[str, str], *, reason_required: bool
) -> tuple[str, str] | IntakeAnswer:
    """(who, why) of an approver's control, or the 4xx: checked before the ledger is touched."""
    bad = request_id_error(request_id)
    if bad is not None:
        return bad
    principal = authorised(headers, app.settings.approver_role)
    if isinstance(principal, IntakeAnswer):
        return principal
    reason = read_reason(body, required=reason_required)
    if isinstance(reason, IntakeAnswer):
        return reason
    return str(principal), reason
