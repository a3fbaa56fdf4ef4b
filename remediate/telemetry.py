"""Telemetry that reaches Application Insights: OpenTelemetry logs and traces, configured once, lazily.

Why OpenTelemetry: the Functions Python worker forwards a log record's level, message and category to
Application Insights but not its `extra` fields, so `customDimensions` stayed empty. With host.json
`telemetryMode: OpenTelemetry` and the app setting `PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true`, the
worker itself calls `configure_azure_monitor()` before loading the app and streams every record's attributes as
`customDimensions`. Anywhere else (the CLI, the demo, tests) `APPLICATIONINSIGHTS_CONNECTION_STRING` alone turns it
on, and this module calls `configure_azure_monitor()` itself, the first time telemetry is needed, so that
`import function_app` never pays for the OpenTelemetry SDK.

One trace per remediation request: intake starts it (`start_request_trace`, a new root linked to the trigger's
own span) and puts its W3C `traceparent` in the queue message; the worker continues it (`request_trace`), each
workflow step is a child span, and the Azure SDK's calls are children of the step that made them.

The events this module writes are the schema the workbook and the report query (customDimensions, camelCase):
`event` is one of `EVENTS`; see docs/operations.md.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from remediate.model import RemediationRequest

log = logging.getLogger("remediate.telemetry")
events = logging.getLogger("remediate.events")

EVENT_OUTCOME = "remediation.outcome"
EVENT_STEP = "remediation.step"
EVENT_SWEEP_VM = "sweep.vm"
EVENT_SWEEP = "sweep.summary"
EVENT_CONTROL = "remediation.control"  # held, released, approved, rejected: a fleet-wide control acted
EVENTS = (EVENT_OUTCOME, EVENT_STEP, EVENT_SWEEP_VM, EVENT_SWEEP, EVENT_CONTROL)
TRACER = "rdp-remediate"
# Only the Azure SDK's own spans are wanted: the HTTP libraries underneath would record every call twice.
_OFF = ("django", "fastapi", "flask", "psycopg2", "requests", "urllib", "urllib3")

Progress = Callable[[str, str], None]

_lock = threading.Lock()
_configured = False
_enabled = False


def _true(text: str | None) -> bool:
    return (text or "").strip().lower() in {"1", "true", "yes", "on"}


def configure(env: Mapping[str, str] | None = None) -> bool:
    """Turn telemetry on if this process should send it; idempotent. True when it is on."""
    global _configured, _enabled  # noqa: PLW0603 - one OpenTelemetry pipeline per process
    source = os.environ if env is None else env
    with _lock:
        if _configured:
            return _enabled
        _configured = True
        if _true(source.get("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY")):
            _enabled = True  # the Functions worker configured Azure Monitor before it loaded our code
        elif source.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
            _enabled = _configure_azure_monitor(source["APPLICATIONINSIGHTS_CONNECTION_STRING"])
        if _enabled:
            logging.getLogger("remediate").setLevel(logging.INFO)
        return _enabled


def _configure_azure_monitor(connection_string: str) -> bool:
    try:
        from azure.monitor.opentelemetry import configure_azure_monitor
        from opentelemetry.sdk.resources import Resource
    except ImportError:
        log.warning("azure-monitor-opentelemetry is not installed: no telemetry is sent")
        return False
    configure_azure_monitor(
        connection_string=connection_string,
        logger_name="remediate",
        resource=Resource.create({"service.name": "rdp-remediate"}),
        sampling_ratio=1.0,  # remediations are rare and each one matters: keep every trace
        disable_metrics=True,
        enable_live_metrics=False,
        enable_performance_counters=False,
        instrumentation_options={name: {"enabled": False} for name in _OFF},
    )
    return True


def enabled() -> bool:
    return _enabled


def flush(timeout_millis: int = 10_000) -> None:
    """Send what is buffered (the CLI calls it before exiting; the exporters also flush at exit)."""
    if not _enabled:
        return
    from opentelemetry import _logs, trace

    for provider in (trace.get_tracer_provider(), _logs.get_logger_provider()):
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is not None:
            force_flush(timeout_millis)


# --- one trace per request ----------------------------------------------------------------------------------


def start_request_trace(request: RemediationRequest) -> dict[str, str]:
    """Start the request's trace at intake; returns the W3C carrier (`traceparent`) for the queue message.

    The trace is a new root, linked to the trigger's span (an alert or a sweep starts many requests, and each
    request is followed on its own); empty when telemetry is off.
    """
    if not _enabled:
        return {}
    from opentelemetry import context, propagate, trace

    trigger = trace.get_current_span().get_span_context()
    with trace.get_tracer(TRACER).start_as_current_span(
        "enqueue remediation",
        context=context.Context(),
        kind=trace.SpanKind.PRODUCER,
        links=[trace.Link(trigger)] if trigger.is_valid else [],
        attributes=_request_attributes(request),
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
    return carrier


def carrier_of(message: Mapping[str, Any]) -> dict[str, str]:
    """The trace context a queue message carries (only the W3C fields, only strings)."""
    return {k: v for k in ("traceparent", "tracestate") if isinstance(v := message.get(k), str) and len(v) < 512}


@dataclass
class RequestTrace:
    """The span of one request's workflow, and a progress hook that makes each step a child span."""

    request: RemediationRequest
    span: Span | None = None
    _steps: dict[str, tuple[Span, object]] = field(default_factory=dict)

    def progress(self, forward: Progress | None) -> Progress:
        def hook(step: str, detail: str) -> None:
            self._on_progress(step, detail)
            if forward is not None:
                forward(step, detail)

        return hook

    def _on_progress(self, step: str, detail: str) -> None:
        if detail == "started":
            self._start_step(step)
            return
        status, reason = _step_status(detail)
        self._end_step(step, status, reason)
        events.info(
            "remediation step %s: %s",
            step,
            status,
            extra={
                "event": EVENT_STEP,
                **_request_dims(self.request),
                "step": step,
                "status": status,
                "reason": reason,
            },
        )

    def _start_step(self, step: str) -> None:
        if self.span is None:
            return
        from opentelemetry import context, trace

        span = trace.get_tracer(TRACER).start_span(f"step {step}", attributes={"step": step})
        token = context.attach(trace.set_span_in_context(span))
        self._steps[step] = (span, token)

    def _end_step(self, step: str, status: str, reason: str) -> None:
        opened = self._steps.pop(step, None)
        if opened is None:
            return
        from opentelemetry import context, trace

        span, token = opened
        span.set_attribute("status", status)
        span.set_attribute("reason", reason[:1000])
        if status == "failed":
            span.set_status(trace.StatusCode.ERROR, reason[:200])
        span.end()
        context.detach(token)  # type: ignore[arg-type]

    def close(self) -> None:
        """A step left open by an unexpected exception ends with the request (innermost first)."""
        for step in reversed(list(self._steps)):
            self._end_step(step, "interrupted", "the workflow ended inside this step")

    def finish(self, outcome: str, reason: str, failed_step: str | None, rebooted: bool, seconds: float) -> None:
        dims: dict[str, str | bool | float] = {
            "event": EVENT_OUTCOME,
            **_request_dims(self.request),
            "outcome": outcome,
            "reason": reason,
            "failedStep": failed_step or "",
            "rebooted": rebooted,
            "durationSeconds": round(seconds, 3),
        }
        if self.span is not None:
            for key in ("outcome", "reason", "failedStep", "rebooted", "durationSeconds"):
                self.span.set_attribute(key, dims[key])
        events.info("remediation %s: %s", outcome, reason, extra=dims)


@contextmanager
def request_trace(request: RemediationRequest, carrier: Mapping[str, str] | None = None) -> Iterator[RequestTrace]:
    """The workflow's span: a child of the intake's when the message carried one, else of the current context."""
    if not _enabled:
        yield RequestTrace(request)
        return
    from opentelemetry import propagate, trace

    parent = propagate.extract(dict(carrier)) if carrier else None
    with trace.get_tracer(TRACER).start_as_current_span(
        "remediation",
        context=parent,
        kind=trace.SpanKind.CONSUMER if carrier else trace.SpanKind.INTERNAL,
        attributes=_request_attributes(request),
    ) as span:
        current = RequestTrace(request, span)
        try:
            yield current
        finally:
            current.close()


def _step_status(detail: str) -> tuple[str, str]:
    if detail.startswith("failed: "):
        return "failed", detail.removeprefix("failed: ")
    if detail.startswith("already done"):
        return "resumed", detail
    return "finished", detail


def _request_dims(request: RemediationRequest) -> dict[str, str]:
    return {
        "requestId": request.request_id,
        "vm": str(request.vm),
        "vmName": request.vm.name,
        "subscriptionId": request.vm.subscription,
        "resourceGroup": request.vm.resource_group,
        "trigger": request.trigger.value,
        "dryRun": str(request.options.dry_run).lower(),
    }


def _request_attributes(request: RemediationRequest) -> dict[str, str]:
    return _request_dims(request)


def sweep_event(message: str, dims: Mapping[str, Any]) -> None:
    """One sweep record (`sweep.vm` per VM, `sweep.summary` per sweep) with primitive dimensions only."""
    events.info(message, extra={k: v for k, v in dims.items() if isinstance(v, str | int | float | bool)})


def control_event(action: str, request_id: str, reason: str) -> None:
    """A fleet-wide control acted on a request (`action`: "request held", "request released", ...)."""
    events.info(
        action, extra={"event": EVENT_CONTROL, "action": action, "requestId": request_id, "reason": reason[:1000]}
    )
