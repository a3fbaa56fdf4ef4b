"""Azure Functions entry point (Python v2 model): triggers only; the work is in `remediate`.

* POST /api/alerts                   Azure Monitor action group, common alert schema
* POST /api/remediations             runbook / operator: VM ids or a subscription/group/tag selector
* GET  /api/remediations/{id}        a request's state, steps and outcome
* POST /api/remediations/{id}/release  an approver releases a request the storm guard holds
* POST /api/remediations/{id}/approve  an approver lets a diagnosed request run (approval mode)
* POST /api/remediations/{id}/reject   an approver ends it unchanged
* timer  sweep                       scheduled discovery (RDPR_SWEEP_SCHEDULE, NCRONTAB)
* queue  worker                      one message = one VM's workflow (RDPR_QUEUE_NAME)
* queue  poison                      closes the record of a message the host gave up on
* timer  reconcile                   every 5 minutes: finishes what crashes and storage outages left half done

Every HTTP route needs a function key (`?code=` or `x-functions-key`). The action group holds that key, and a host
key opens every function-level route, so every route but /api/alerts also needs a caller that App Service
authentication (Microsoft Entra ID) vouches for (X-MS-CLIENT-PRINCIPAL), with the route's app role: operator for
requests and status, approver for approve, reject and release. Without App Service authentication those routes
answer 401: the key alone can only post alerts.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import azure.functions as func

from remediate.intake.app import get_app
from remediate.intake.principal import Principal
from remediate.model import valid_request_id

if TYPE_CHECKING:
    from remediate.ledger import Ledger
    from remediate.settings import Settings

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
log = logging.getLogger("rdp_remediate")


def _json(status: int, body: Any) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, default=str), status_code=status, mimetype="application/json")


@app.function_name("alerts")
@app.route(route="alerts", methods=["POST"])
def alerts(req: func.HttpRequest) -> func.HttpResponse:
    answer = get_app().alerts.handle(req.get_body())
    return _json(answer.status, answer.body)


@app.function_name("remediations")
@app.route(route="remediations", methods=["POST"])
def remediations(req: func.HttpRequest) -> func.HttpResponse:
    from remediate.intake.controls import authorised

    current = get_app()
    caller = authorised(dict(req.headers), current.settings.operator_role)
    if not isinstance(caller, Principal):
        return _json(caller.status, caller.body)
    answer = current.runbook.handle(req.get_body(), str(caller))
    return _json(answer.status, answer.body)


@app.function_name("remediation_status")
@app.route(route="remediations/{request_id}", methods=["GET"])
def remediation_status(req: func.HttpRequest) -> func.HttpResponse:
    from remediate.intake.controls import authorised

    settings = get_app().settings
    caller = authorised(dict(req.headers), settings.operator_role, settings.approver_role)
    if not isinstance(caller, Principal):
        return _json(caller.status, caller.body)
    request_id = req.route_params.get("request_id", "")
    if not valid_request_id(request_id):
        return _json(
            400,
            {
                "error": {
                    "code": "InvalidRequestId",
                    "field": "request_id",
                    "message": "request_id: expected the id returned when the request was accepted",
                }
            },
        )
    record = get_app().ledger.get(request_id)
    if record is None:
        return _json(
            404,
            {
                "error": {
                    "code": "NotFound",
                    "field": "request_id",
                    "message": f"request_id: no request {request_id} in the ledger",
                }
            },
        )
    from remediate.intake.approval import FIELDS

    extra = get_app().ledger.request_fields(request_id, "AlertState", "AlertNote", *FIELDS)
    alert = {k: extra.pop(k) for k in ("AlertState", "AlertNote")}
    approval = {k: v for k, v in extra.items() if v is not None}
    return _json(
        200, {**record.to_json(), "alert": alert if alert.get("AlertState") else None, "approval": approval or None}
    )


@app.function_name("remediation_release")
@app.route(route="remediations/{request_id}/release", methods=["POST"])
def remediation_release(req: func.HttpRequest) -> func.HttpResponse:
    from remediate.intake.controls import release_answer

    answer = release_answer(get_app(), req.route_params.get("request_id", ""), req.get_body(), dict(req.headers))
    return _json(answer.status, answer.body)


@app.function_name("remediation_approve")
@app.route(route="remediations/{request_id}/approve", methods=["POST"])
def remediation_approve(req: func.HttpRequest) -> func.HttpResponse:
    from remediate.intake.controls import decision_answer

    answer = decision_answer(
        get_app(), req.route_params.get("request_id", ""), req.get_body(), dict(req.headers), approve=True
    )
    return _json(answer.status, answer.body)


@app.function_name("remediation_reject")
@app.route(route="remediations/{request_id}/reject", methods=["POST"])
def remediation_reject(req: func.HttpRequest) -> func.HttpResponse:
    from remediate.intake.controls import decision_answer

    answer = decision_answer(
        get_app(), req.route_params.get("request_id", ""), req.get_body(), dict(req.headers), approve=False
    )
    return _json(answer.status, answer.body)


@app.function_name("sweep")
@app.timer_trigger(schedule="%RDPR_SWEEP_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def sweep(timer: func.TimerRequest) -> None:
    from remediate.intake.sweep import run_sweep

    current = get_app()
    report = run_sweep(current.settings, current.clients, current.queue, current.ledger, store=current.fleet)
    prune_ledger(current.settings, current.ledger)
    log.info(
        "sweep finished",
        extra={
            "mode": report.mode,
            "findings": len(report.findings),
            "enqueued": len(report.enqueued),
            "stopped": report.stopped,
            "past_due": timer.past_due,
        },
    )


def prune_ledger(settings: Settings, ledger: Ledger) -> None:
    """Retention, a bounded batch per sweep; a failure is logged, never a reason to fail the sweep."""
    from remediate.ledger import apply_retention

    try:
        apply_retention(ledger, settings)
    except Exception:
        log.warning("ledger retention failed; the next sweep tries again", exc_info=True)


@app.function_name("worker")
@app.queue_trigger(arg_name="msg", queue_name="%RDPR_QUEUE_NAME%", connection="AzureWebJobsStorage")
def worker(msg: func.QueueMessage) -> None:
    # The gate: a request held by the storm guard, or finding every fleet-wide slot taken, comes back later.
    get_app().gate.deliver(msg.get_body().decode("utf-8", errors="replace"), msg.dequeue_count or 1)


@app.function_name("poison")
@app.queue_trigger(arg_name="msg", queue_name="%RDPR_QUEUE_NAME%-poison", connection="AzureWebJobsStorage")
def poison(msg: func.QueueMessage) -> None:
    from remediate.engine.evidence import activity_log_evidence
    from remediate.intake.worker import handle_poison

    current = get_app()
    handle_poison(
        msg.get_body().decode("utf-8", errors="replace"),
        current.ledger,
        msg.dequeue_count or 1,
        current.settings.max_dequeue_count,
        activity_log_evidence(current.clients, current.settings),
        requeue=current.queue.queue.send_message,
    )


# Every five minutes: cheap (a few table queries) and well inside the lock and claim expiries it works with.
@app.function_name("reconcile")
@app.timer_trigger(schedule="0 */5 * * * *", arg_name="timer", run_on_startup=False, use_monitor=True)
def reconcile(timer: func.TimerRequest) -> None:
    from remediate.engine.evidence import activity_log_evidence
    from remediate.intake.queue import queued_stale_seconds
    from remediate.intake.reconcile import reconcile as run_reconcile

    current = get_app()
    settings = current.settings
    # A running request whose lease ran out and whose journal has not moved for a lock's lifetime will not be
    # resumed by any delivery; a queued one waits until no copy of its message can arrive any more.
    report = run_reconcile(
        current.ledger,
        current.queue,
        running_stale_seconds=settings.lock_minutes * 60.0,
        queued_stale_seconds=queued_stale_seconds(settings),
        restart_evidence=activity_log_evidence(current.clients, settings),
    )
    log.info(
        "reconcile finished",
        extra={"closed": len(report.closed), "resent": len(report.resent), "past_due": timer.past_due},
    )
