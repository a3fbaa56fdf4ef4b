"""The HTTP side of the operator's controls on one request (release a held request): input checked, 4xx named.

Bad input changes nothing: the request id and the body are checked before the ledger is touched, and a
request in the wrong state is refused with 409 naming the state.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

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


def release_answer(app: App, request_id: str, body: bytes, caller: str) -> IntakeAnswer:
    """POST /api/remediations/{id}/release: run a request the storm guard holds, now."""
    from remediate.intake.gate import NotHeld, release

    bad = request_id_error(request_id)
    if bad is not None:
        return bad
    reason = read_reason(body, required=False)
    if isinstance(reason, IntakeAnswer):
        return reason
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
