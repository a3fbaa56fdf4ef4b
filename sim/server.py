"""The emulator's HTTPS server: the parts of ARM and Log Analytics that rdp-remediate uses.

The unmodified Azure SDK clients talk to it over TLS (self-signed certificate, trusted through `ca_cert`) with a
bearer token, exactly as they talk to Azure: paths are matched case-insensitively, errors are ARM-shaped
(`{"error": {"code", "message"}}`), long-running operations answer 202 with `Azure-AsyncOperation` AND
`Location`, lists page with `nextLink`. What Azure rejects, the emulator rejects; what the emulator does not
implement, it refuses loudly rather than guessing. See docs/emulator.md for the fidelity rules.

Requests are served one thread per connection (HTTP/1.1 keep-alive); the fleet lock is held only while
reading or changing state, never while serializing or writing to the socket.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import importlib
import ipaddress
import json
import logging
import math
import re
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, cast
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from sim import alerts
from sim.activitylog import DEFAULT_LAG_SECONDS, ActivityLog, FilterError
from sim.certs import server_certificate
from sim.faults import Faults
from sim.fleet import RESOURCE_GROUP, SUBSCRIPTION, Fleet, VirtualMachine
from sim.operations import (
    RUN_COMMAND_IDS,
    Clock,
    GuestModel,
    Latencies,
    Operation,
    Operations,
    Refused,
)
from sim.realism import Realism
from sim.resources import instance_view_json, nic_json, run_command_result, status_document, vm_json
from sim.transport import HttpsServer, Response

log = logging.getLogger(__name__)

WORKSPACE_ID = "11111111-2222-4333-8444-555555555555"
RETRY_AFTER_CAP = 30  # longest polling hint the emulator gives (whole seconds)
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
_JSON = "application/json; charset=utf-8"


# --- Request log -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedRequest:
    time: float  # epoch seconds when the request arrived
    method: str
    path: str  # as sent, without the query string
    api_version: str | None
    status: int  # 0 when the emulator dropped the connection (fault `reset`)
    operation: str  # getVm, listVms, runCommand, ... or "other"


class RequestLog:
    """Every ARM and Log Analytics request the emulator answered (admin requests excluded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[LoggedRequest] = []

    def append(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# --- Requests, responses, errors -------------------------------------------------------------------------


@dataclass
class Call:
    """One request being served; `operation` and `vm` are filled in once the route is known."""

    method: str
    path: str  # percent-decoded
    raw_path: str
    query: dict[str, str]
    headers: Mapping[str, str]
    body: bytes
    operation: str = "other"
    vm: str | None = None

    @property
    def api_version(self) -> str | None:
        return self.query.get("api-version")

    @property
    def is_logs(self) -> bool:
        return self.path.lower().startswith("/v1/")

    def json_body(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            code = "BadArgumentError" if self.is_logs else "InvalidRequestContent"
            raise ArmError(400, code, f"The request content was invalid and could not be deserialized: {exc}") from None


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return Response(status, body, {"Content-Type": _JSON, **(headers or {})})


class ArmError(Exception):
    """An error answer: status code plus the ARM error body `{"error": {"code", "message"}}`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        details: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.details = details

    def response(self) -> Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return json_response(self.status, {"error": error}, self.headers)


def not_found(resource_type: str, name: str, group: str) -> ArmError:
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource '{resource_type}/{name}' under resource group '{group}' was not found. "
        "For more details please go to https://aka.ms/ARMResourceNotFoundFix",
    )


RESTART_ACTION = "Microsoft.Compute/virtualMachines/restart/action"
RUN_COMMAND_ACTION = "Microsoft.Compute/virtualMachines/runCommand/action"

# --- Routing ---------------------------------------------------------------------------------------------

_S = r"([^/]+)"
_GROUP = rf"/subscriptions/{_S}/resourcegroups/{_S}"
_VMS = rf"{_GROUP}/providers/microsoft\.compute/virtualmachines"

Handler = Callable[["Emulator", Call, tuple[str, ...]], Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    operation: str
    handler: Handler


def _routes() -> list[Route]:
    table: list[tuple[str, str, str, Handler]] = [
        ("GET", rf"{_VMS}", "listVms", lambda emu, call, g: emu.list_vms(call, g[0], g[1])),
        (
            "GET",
            rf"/subscriptions/{_S}/providers/microsoft\.compute/virtualmachines",
            "listVms",
            lambda emu, call, g: emu.list_vms(call, g[0], None),
        ),
        ("GET", rf"{_VMS}/{_S}", "getVm", lambda emu, call, g: emu.get_vm(call, g)),
        ("GET", rf"{_VMS}/{_S}/instanceview", "instanceView", lambda emu, call, g: emu.instance_view(call, g)),
        ("POST", rf"{_VMS}/{_S}/runcommand", "runCommand", lambda emu, call, g: emu.run_command(call, g)),
        ("POST", rf"{_VMS}/{_S}/restart", "restart", lambda emu, call, g: emu.restart(call, g)),
        (
            "GET",
            rf"{_GROUP}/providers/microsoft\.network/networkinterfaces/{_S}",
            "getNic",
            lambda emu, call, g: emu.get_nic(call, g),
        ),
        (
            "GET",
            rf"/subscriptions/{_S}/providers/microsoft\.compute/locations/{_S}/operations/{_S}",
            "operationStatus",
            lambda emu, call, g: emu.operation_status(call, g),
        ),
        (
            "GET",
            rf"/subscriptions/{_S}/providers/microsoft\.insights/eventtypes/management/values",
            "activityLog",
            lambda emu, call, g: emu.activity_log(call, g[0]),
        ),
        (
            "POST",
            r"/providers/microsoft\.resourcegraph/resources",
            "resourceGraph",
            lambda emu, call, _g: emu.resource_graph(call),
        ),
        (  # Alerts Management: read the alert a request names (Alerts_GetById), before acting on it
            "GET",
            rf"/subscriptions/{_S}/providers/microsoft\.alertsmanagement/alerts/{_S}",
            "getAlert",
            alerts.get_alert,
        ),
        (  # Alerts Management: close or comment the alert that started a request (sim/alerts.py cites the spec)
            "POST",
            rf"/subscriptions/{_S}/providers/microsoft\.alertsmanagement/alerts/{_S}/changestate",
            "alertChangeState",
            alerts.change_state,
        ),
        (
            "POST",
            rf"/v1/workspaces/{_S}/query",
            "logsQuery",
            lambda emu, call, _g: emu.logs_query(call, call.path.split("/")[3]),  # the id as sent
        ),
    ]
    from sim import network  # effective security rules and JIT policies: the network path to a VM

    table += network.ROUTES
    return [Route(method, re.compile(f"^{pattern}$"), op, handler) for method, pattern, op, handler in table]


ROUTES = _routes()


# --- The emulator ----------------------------------------------------------------------------------------


class Emulator:
    """A local Azure (ARM + Log Analytics) over HTTPS for one fleet; `start()` it, `stop()` it."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        time_scale: float = 1.0,
        page_size: int = 100,
        host: str = "127.0.0.1",
        port: int = 0,
        rdp_port: int = 3389,
        listeners: bool = True,
        workspace_id: str = WORKSPACE_ID,
        latencies: Latencies | None = None,
        clock: Clock | None = None,
        guest: GuestModel | None = None,
        realism: Realism | None = None,
    ) -> None:
        if not _is_loopback(host):
            raise ValueError(f"the emulator only binds loopback addresses, not {host!r}")
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.fleet = fleet
        self.faults = Faults()
        # Where the `foreign-polling-host` fault points the polling headers (a test's stand-in attacker).
        self.foreign_polling_url = "https://127.0.0.1:9"
        self.alerts = alerts.AlertStore()
        self.log = RequestLog()
        # The Activity Log lags as Azure's does (sim/activitylog.py cites the documented 3 to 20 minutes).
        self.activity = ActivityLog(lag_seconds=DEFAULT_LAG_SECONDS * time_scale)
        self.time_scale = time_scale
        self.base_latencies = latencies or Latencies()
        self.latencies = self.base_latencies.scaled(time_scale)
        # A caller-supplied clock means simulated time moves only when the caller says so (exact tests).
        self._manual_clock = clock is not None
        self.realism = realism or Realism()
        self.operations = Operations(fleet, self.latencies, self.faults, clock or time.time, guest, self.realism)
        self.page_size = page_size
        self.host, self.port, self.rdp_port = host, port, rdp_port
        self.listeners = listeners
        self.workspace_id = workspace_id
        self._index = _FleetIndex(fleet, self.secondary_nics)
        self._server: HttpsServer | None = None
        self._thread: threading.Thread | None = None
        self._tempdir: Path | None = None
        self._rdp: _Listeners | None = None
        self.ca_cert = ""

    # --- Lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind, serve in background threads, start the RDP listeners; on any failure, undo it all."""
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        log.info("emulator listening", extra={"arm_url": self.arm_url, "vms": len(self.fleet)})

    def _start(self) -> None:
        cert_pem, key_pem = server_certificate()
        self._tempdir = Path(tempfile.mkdtemp(prefix="rdpr-emulator-"))
        cert_path, key_path = self._tempdir / "emulator-ca.pem", self._tempdir / "emulator-key.pem"
        cert_path.write_bytes(cert_pem)
        key_path.write_bytes(key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_path, key_path)
        key_path.unlink()  # loaded; only the certificate is needed by clients
        self.ca_cert = str(cert_path)
        self._server = HttpsServer((self.host, self.port), self, context)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="sim-arm", daemon=True
        )
        self._thread.start()
        if not self._manual_clock:
            self.operations.start()
        if self.listeners:
            self._rdp = _start_listeners(self.fleet, self.rdp_port)

    def stop(self) -> None:
        """Stop serving and release every port, thread and file; safe to call twice."""
        if self._server is not None:
            if self._thread is not None:  # shutdown() waits for serve_forever(), so only if it runs
                self._server.shutdown()
                self._thread.join(timeout=5)
                self._thread = None
            self._server.server_close()
            self._server.close_connections()
            self._server = None
        self.operations.stop()
        if self._rdp is not None:
            self._rdp.stop()
            self._rdp = None
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # --- What clients need -------------------------------------------------------------------------------

    @property
    def arm_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def logs_url(self) -> str:
        return f"{self.arm_url}/v1"

    def poll_interval(self) -> float:
        """LRO poll interval for clients when no Retry-After comes: 2 simulated seconds, within [0.02, 2] s."""
        return round(min(2.0, max(0.02, 2.0 * self.time_scale)), 3)

    def secondary_nics(self, vm: VirtualMachine) -> int:
        return self.realism.secondary_nics if vm.secondary_nics is None else vm.secondary_nics

    def answer_style(self, vm: VirtualMachine) -> str:
        return vm.answer_style or self.realism.answer_style

    def now(self) -> dt.datetime:
        """The emulator's time (a test's manual clock, or real time) as ARM reports it."""
        return self.operations.wall(self.operations.clock())

    def settings_env(self, scopes: list[str] | None = None) -> dict[str, str]:
        """The environment that points `remediate.settings` at this emulator."""
        scopes = scopes if scopes is not None else [f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"]
        return {
            "RDPR_EMULATOR": "true",
            "RDPR_ARM_URL": self.arm_url,
            "RDPR_LOGS_URL": self.logs_url,
            "RDPR_EMULATOR_CA_CERT": self.ca_cert,
            "RDPR_RDP_PORT": str(self.rdp_port),
            "RDPR_LOG_WORKSPACE_ID": self.workspace_id,
            # The product's polling cadence (2 s for a minute, then up to 10 s) in the emulator's time.
            "RDPR_POLL_INTERVAL_SECONDS": f"{self.poll_interval():g}",
            "RDPR_POLL_FAST_SECONDS": f"{60.0 * self.time_scale:g}",
            "RDPR_POLL_MAX_INTERVAL_SECONDS": f"{max(self.poll_interval(), 10.0 * self.time_scale):g}",
            "RDPR_SCOPES": ",".join(scopes),
            # The product's default (25 minutes, past the documented 20 minutes of Activity Log lag) on the
            # emulator's time scale, which also scales the emulator's lag.
            "RDPR_RESTART_EVIDENCE_SECONDS": f"{max(1.0, 1500.0 * self.time_scale):g}",
        }

    def describe(self) -> dict[str, Any]:
        """What `python -m sim` prints: everything a client or a demo needs to use this emulator."""
        return {
            "arm_url": self.arm_url,
            "logs_url": self.logs_url,
            "ca_cert": self.ca_cert,
            "subscription_ids": self.fleet.subscription_ids,
            "workspace_id": self.workspace_id,
            "rdp_port": self.rdp_port,
            "listeners": self._rdp is not None,
            "time_scale": self.time_scale,
            "page_size": self.page_size,
            "admin": {"faults": f"{self.arm_url}/_sim/faults", "state": f"{self.arm_url}/_sim/state"},
            "fleet": self.fleet.summary(),
        }

    # --- Request handling --------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Serve one HTTP request (any thread)."""
        split = urlsplit(target)
        path = unquote(split.path).rstrip("/") or "/"
        call = Call(method, path, split.path, dict(parse_qsl(split.query, keep_blank_values=True)), headers, body)
        if path.lower().startswith("/_sim/"):
            return self._admin(call)
        arrived = time.time()
        try:
            response = self._serve(call)
        except ArmError as err:
            response = err.response()
        except Exception:
            log.exception("emulator handler failed", extra={"path": call.path, "method": method})
            response = ArmError(500, "InternalServerError", "The emulator failed; see its log.").response()
        request_id = str(uuid.uuid4())
        response.headers.setdefault("x-ms-request-id", request_id)
        response.headers.setdefault("x-ms-correlation-request-id", request_id)
        status = 0 if response.drop else response.status
        self.log.append(LoggedRequest(arrived, method, split.path, call.api_version, status, call.operation))
        if self.latencies.arm_request > 0:
            time.sleep(self.latencies.arm_request)
        return response

    def _serve(self, call: Call) -> Response:
        resolved = self._route(call)  # routed first so that even a refused request is logged by operation
        if isinstance(resolved, tuple):
            call.operation = resolved[0].operation
        if not _bearer(call.headers):
            if call.is_logs:
                raise ArmError(401, "AuthorizationRequiredError", "Valid authentication was not provided")
            raise ArmError(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing or is not a bearer token.",
                {"WWW-Authenticate": 'Bearer authorization_uri="https://login.windows.net/", error="invalid_token"'},
            )
        if not call.is_logs:
            _check_api_version(call.api_version)
        if isinstance(resolved, ArmError):
            raise resolved
        route, groups = resolved
        call.vm = self._fault_target(route.operation, groups)
        fault = self.faults.take_http(route.operation, call.vm)
        if fault is not None:
            return _fault_response(fault.kind, fault.retry_after, route.operation)
        self.operations.advance()
        response = route.handler(self, call, groups)
        if self.faults.take(route.operation, "lost-answer", call.vm):
            # Served, then the answer is lost: Azure acted, the caller sees a 500. Microsoft's REST API
            # Guidelines (azure/Guidelines.md, "Repeatability of requests") describe exactly this for POST: a
            # client that sees an error cannot tell whether the action happened.
            return ArmError(500, "InternalServerError", "Encountered internal server error.").response()
        return response

    def _route(self, call: Call) -> tuple[Route, tuple[str, ...]] | ArmError:
        lowered = call.path.lower()
        path_known = False
        for route in ROUTES:
            match = route.pattern.match(lowered)
            if match is None:
                continue
            if route.method == call.method:
                return route, match.groups()
            path_known = True
        if path_known:
            return ArmError(405, "MethodNotAllowed", f"The emulator does not implement {call.method} on '{call.path}'.")
        if call.is_logs:
            return ArmError(404, "PathNotFoundError", f"The requested path '{call.path}' does not exist.")
        return ArmError(
            404,
            "InvalidResourceType",
            f"The resource type for '{call.path}' could not be found (api version '{call.api_version}').",
        )

    def _fault_target(self, operation: str, groups: tuple[str, ...]) -> str | None:
        """The lower-cased VM id a request concerns, so that per-VM faults can match it."""
        if operation in ("getVm", "instanceView", "runCommand", "restart"):
            sub, group, name = groups[:3]
            return f"/subscriptions/{sub}/resourcegroups/{group}/providers/microsoft.compute/virtualmachines/{name}"
        if operation in ("getNic", "effectiveNsgs"):
            vm = self._index.nic(*groups[:3])
            return vm.key if vm else None
        if operation == "operationStatus":
            op = self.operations.get(groups[2])
            return op.vm.key if op else None
        return None

    # --- Compute -----------------------------------------------------------------------------------------

    def _vm(self, groups: tuple[str, ...]) -> VirtualMachine:
        sub, group, name = groups[:3]
        self._index.require_group(sub, group)
        vm = self._index.vm(sub, group, name)
        if vm is None:
            raise not_found("Microsoft.Compute/virtualMachines", name, group)
        return vm

    def list_vms(self, call: Call, subscription: str, group: str | None) -> Response:
        if group is None:
            vms = self._index.in_subscription(subscription)
        else:
            self._index.require_group(subscription, group)
            vms = self._index.in_group(subscription, group)
        if "$filter" in call.query:
            raise ArmError(400, "InvalidParameter", "The emulator does not support $filter on VM lists.")
        with_status = call.query.get("statusOnly", "").lower() == "true"
        offset = _decode_skip_token(call.query.get("$skiptoken"))
        page = vms[offset : offset + self.page_size]
        now = self.now()
        with self.fleet.lock:
            values = [
                vm_json(
                    vm,
                    self.operations.provisioning_state(vm),
                    instance_view_json(vm, self.operations.provisioning_state(vm), now, self.latencies.agent_heartbeat)
                    if with_status
                    else None,
                    secondary_nics=self.secondary_nics(vm),
                )
                for vm in page
            ]
        payload: dict[str, Any] = {"value": values}
        if offset + self.page_size < len(vms):
            extra = "&statusOnly=true" if with_status else ""
            token = _encode_skip_token(offset + self.page_size)
            payload["nextLink"] = (
                f"{self.arm_url}{call.raw_path}?api-version={call.api_version}{extra}&$skiptoken={token}"
            )
        return json_response(200, payload)

    def get_vm(self, call: Call, groups: tuple[str, ...]) -> Response:
        vm = self._vm(groups)
        expand = call.query.get("$expand", "")
        if expand.lower() not in ("", "instanceview", "userdata", "resiliencypolicy"):
            raise ArmError(400, "InvalidParameter", f"The value '{expand}' of parameter '$expand' is not valid.")
        now = self.now()
        with self.fleet.lock:
            provisioning = self.operations.provisioning_state(vm)
            view = (
                instance_view_json(vm, provisioning, now, self.latencies.agent_heartbeat)
                if expand.lower() == "instanceview"
                else None
            )
            payload = vm_json(vm, provisioning, view, secondary_nics=self.secondary_nics(vm))
        return json_response(200, payload)

    def instance_view(self, _call: Call, groups: tuple[str, ...]) -> Response:
        vm = self._vm(groups)
        with self.fleet.lock:
            payload = instance_view_json(
                vm, self.operations.provisioning_state(vm), self.now(), self.latencies.agent_heartbeat
            )
        return json_response(200, payload)

    def run_command(self, call: Call, groups: tuple[str, ...]) -> Response:
        vm = self._vm(groups)
        script, parameters, command_id = _run_command_input(call.json_body())
        expected = RUN_COMMAND_IDS[vm.os_type]
        if command_id != expected:
            raise ArmError(
                400,
                "InvalidParameter",
                f"Run command '{command_id}' is not supported on a {vm.os_type} VM; "
                f"the emulator implements only '{expected}' for it.",
            )
        # Every action (POST) is in the Activity Log, Run Commands included (Microsoft Learn, "Azure Monitor
        # activity log": "every write operation (PUT, POST, DELETE)"; the operation is
        # Microsoft.Compute/virtualMachines/runCommand/action, the action the caller's role must grant).
        record = self.activity.action(
            vm.resource_id,
            vm.subscription_id,
            vm.resource_group,
            RUN_COMMAND_ACTION,
            call.headers.get("x-ms-correlation-request-id"),
        )
        try:
            op = self.operations.start_run_command(vm, script, parameters)
        except Refused as refused:
            record.failed(409)
            raise ArmError(409, refused.code, refused.message) from None
        record.accepted()
        self.activity.follow(record, op)
        return self._accepted(call, op)

    def restart(self, call: Call, groups: tuple[str, ...]) -> Response:
        vm = self._vm(groups)
        # Every restart call is in the Activity Log (sim/activitylog.py cites the event shapes).
        record = self.activity.action(
            vm.resource_id,
            vm.subscription_id,
            vm.resource_group,
            RESTART_ACTION,
            call.headers.get("x-ms-correlation-request-id"),
        )
        try:
            op = self.operations.start_restart(vm)
        except Refused as refused:
            record.failed(409)
            raise ArmError(409, refused.code, refused.message) from None
        if self.faults.take("restart", "gateway-timeout", vm.key):  # see sim.faults: the VM restarts anyway
            record.failed(504)
            raise ArmError(504, "GatewayTimeout", "The gateway did not receive a response within the specified time.")
        record.accepted()
        self.activity.follow(record, op)
        return self._accepted(call, op)

    def activity_log(self, call: Call, subscription: str) -> Response:
        if self.faults.take("activityLog", "empty-answer", None):
            return json_response(200, {"value": []})  # see sim.faults: a reader without the grant
        try:
            body = self.activity.query(subscription, call.query.get("$filter"), call.query.get("$select"))
        except FilterError as exc:
            raise ArmError(400, "BadRequest", str(exc)) from None
        return json_response(200, body)

    def _accepted(self, call: Call, op: Operation) -> Response:
        """The answer to an accepted POST, in the VM's answer style (see `sim.realism.ANSWER_STYLES`)."""
        style = self.answer_style(op.vm)
        if style == "sync":
            return self._final(op, self._wait_for(op))
        base = (
            f"{self.arm_url}/subscriptions/{op.vm.subscription_id}/providers/Microsoft.Compute"
            f"/locations/{op.vm.location}/operations/{op.id}"
        )
        headers = {"Location": self._operation_url(base, op, call.api_version, monitor=True), **self._retry_after(op)}
        if style == "async":
            headers["Azure-AsyncOperation"] = self._operation_url(base, op, call.api_version, monitor=False)
        if self.faults.take(op.kind, "foreign-polling-host", op.vm.key):  # see sim.faults: a hostile answer
            headers = {
                name: self.foreign_polling_url + value.removeprefix(self.arm_url) if name != "Retry-After" else value
                for name, value in headers.items()
            }
        return Response(202, b"", headers)

    def _operation_url(self, base: str, op: Operation, api_version: str | None, *, monitor: bool) -> str:
        """An operation URL as Compute hands them out: `p=` (and, signed, `t=`, `c=`, `s=`, `h=`) beside the
        api-version (azure-cli vm test recordings). Clients must follow it verbatim."""
        if not self.realism.signed_urls:
            query = f"monitor=true&api-version={api_version}" if monitor else f"api-version={api_version}"
            return f"{base}?{query}"
        if not op.signature:
            op.signature = _signature(op.id)
        signed = op.signature
        parts = [f"p={signed['p']}", *(["monitor=true"] if monitor else []), f"api-version={api_version}"]
        parts += [f"{key}={quote(signed[key], safe='')}" for key in ("t", "c", "s", "h")]
        return f"{base}?{'&'.join(parts)}"

    def _wait_for(self, op: Operation) -> tuple[bool, str, dict[str, str] | None, dict[str, Any] | None]:
        """Hold the request until the operation ends (real clock only), then its (done, status, error, result)."""
        while not self._manual_clock:
            remaining = self.operations.remaining(op)
            with self.fleet.lock:
                if op.done:
                    break
            time.sleep(min(max(remaining, 0.005), 0.25))
            self.operations.advance()
        with self.fleet.lock:
            result = run_command_result(op) if op.kind == "runCommand" and op.status == "Succeeded" else None
            return op.done, op.status, op.error, result

    def _final(self, op: Operation, state: tuple[bool, str, dict[str, str] | None, dict[str, Any] | None]) -> Response:
        done, status, error, result = state
        if status == "Failed" and error is not None:
            return ArmError(op.error_status, error["code"], error["message"]).response()
        if not done:
            raise ArmError(500, "InternalServerError", "A synchronous answer needs the emulator's real clock.")
        return json_response(200, result) if result is not None else Response(200)

    def _retry_after(self, op: Operation) -> dict[str, str]:
        """A polling hint in whole seconds, only when the run asks for one (real Compute sends none) and the
        operation takes a second or more: azure-core treats 0 as absent and crashes on a fraction."""
        if not self.realism.retry_after or op.done or op.ends - op.started < 1:
            return {}
        return {"Retry-After": str(max(1, min(RETRY_AFTER_CAP, math.ceil(self.operations.remaining(op)))))}

    def operation_status(self, call: Call, groups: tuple[str, ...]) -> Response:
        subscription, location, operation_id = groups
        op = self.operations.get(operation_id)
        if op is None or op.vm.subscription_id.lower() != subscription or op.vm.location.lower() != location:
            raise ArmError(404, "OperationNotFound", f"The operation '{operation_id}' was not found.")
        if any(call.query.get(key) != value for key, value in op.signature.items()):
            # A client that rebuilt the URL (dropped or re-encoded a signed parameter) does not reach it.
            raise ArmError(404, "OperationNotFound", f"The operation '{operation_id}' was not found.")
        with self.fleet.lock:
            started = self.operations.wall(op.started)
            ended = self.operations.wall(op.ends) if op.done else None
            document = status_document(op, started, ended)
            result = run_command_result(op) if op.kind == "runCommand" and op.status == "Succeeded" else None
            done, status, error = op.done, op.status, op.error
        if call.query.get("monitor", "").lower() != "true":
            return json_response(200, document, self._retry_after(op))
        # The Location URL: 202 until done (pointing at itself), then the operation's result (or its error).
        if not done:
            base = f"{self.arm_url}{call.raw_path}"
            return Response(
                202,
                b"",
                {"Location": self._operation_url(base, op, call.api_version, monitor=True), **self._retry_after(op)},
            )
        return self._final(op, (done, status, error, result))

    # --- Network -----------------------------------------------------------------------------------------

    def get_nic(self, _call: Call, groups: tuple[str, ...]) -> Response:
        sub, group, name = groups
        self._index.require_group(sub, group)
        vm = self._index.nic(sub, group, name)
        if vm is None:
            raise not_found("Microsoft.Network/networkInterfaces", name, group)
        nic = next(n for n in vm.nics(self.secondary_nics(vm)) if n.name.lower() == name)
        with self.fleet.lock:
            payload = nic_json(vm, nic)
        return json_response(200, payload)

    # --- Resource Graph and Log Analytics (handlers live in sim.graph and sim.logs) ----------------------

    def resource_graph(self, call: Call) -> Response:
        handler = _optional_handler("sim.graph", "handle_resource_graph")
        body = _json_object(call)
        if handler is None:
            raise ArmError(501, "NotImplemented", "Resource Graph is not available in this emulator build.")
        with self.fleet.lock:
            status, payload = handler(self.fleet, body)
        return json_response(status, payload)

    def logs_query(self, call: Call, workspace_id: str) -> Response:
        handler = _optional_handler("sim.logs", "handle_logs_query")
        body = _json_object(call)
        if handler is None:
            raise ArmError(501, "NotImplemented", "Log Analytics is not available in this emulator build.")
        with self.fleet.lock:
            status, payload = handler(
                self.fleet,
                workspace_id,
                body,
                expected_workspace_id=self.workspace_id,
                partial_error=self.realism.logs_partial_error,
                foreign_rows=self.realism.logs_foreign_rows,
            )
        return json_response(status, payload)

    # --- Admin endpoints (no auth, not logged) -----------------------------------------------------------

    def _admin(self, call: Call) -> Response:
        try:
            return self._admin_route(call)
        except ArmError as err:
            return err.response()

    def _admin_route(self, call: Call) -> Response:
        lowered = call.path.lower()
        if lowered == "/_sim/faults" and call.method == "POST":
            return self._admin_add_fault(call)
        if lowered == "/_sim/faults" and call.method == "GET":
            return json_response(200, {"faults": self.faults.pending()})
        if lowered == "/_sim/faults" and call.method == "DELETE":
            self.faults.clear()
            return json_response(200, {"faults": []})
        if lowered == "/_sim/requests" and call.method == "GET":
            return json_response(200, [dataclasses.asdict(entry) for entry in self.log.entries()])
        if lowered == "/_sim/state" and call.method == "GET":
            return json_response(200, self.state(call.query.get("vm")))
        raise ArmError(404, "NotFound", f"No admin endpoint {call.method} {call.path}.")

    def _admin_add_fault(self, call: Call) -> Response:
        spec = _json_object(call)
        vm = spec.get("vm")
        try:
            self.faults.add(
                str(spec["operation"]),
                str(spec["kind"]),
                int(spec.get("count", 1)),
                None if vm is None else str(vm),
                int(spec.get("retry_after", 1)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArmError(400, "InvalidFault", f"Bad fault {spec!r}: {exc}") from None
        return json_response(201, {"faults": self.faults.pending()})

    def state(self, vm_id: str | None = None) -> dict[str, Any]:
        """A summary of every VM (or one, with its certificate thumbprint) for demos and debugging."""
        self.operations.advance()
        with self.fleet.lock:
            if vm_id is not None:
                vm = self.fleet.get(vm_id)
                vms = [_vm_state(vm, self.operations, thumbprint=True)] if vm else []
            else:
                vms = [_vm_state(vm, self.operations, thumbprint=False) for vm in self._index.all]
        return {"vms": vms, "operations": self.operations.stats(), "faults": self.faults.pending()}


# --- Helpers ---------------------------------------------------------------------------------------------


class _FleetIndex:
    """Lookups by subscription, resource group and NIC; a fleet's VMs never change identity."""

    def __init__(self, fleet: Fleet, secondary_nics: Callable[[VirtualMachine], int]) -> None:
        self.all = sorted(fleet, key=lambda vm: vm.key)
        self._subscriptions: dict[str, list[VirtualMachine]] = {}
        self._groups: dict[tuple[str, str], list[VirtualMachine]] = {}
        self._vms: dict[tuple[str, str, str], VirtualMachine] = {}
        self._nics: dict[tuple[str, str, str], VirtualMachine] = {}
        for vm in self.all:
            sub, group = vm.subscription_id.lower(), vm.resource_group.lower()
            self._subscriptions.setdefault(sub, []).append(vm)
            self._groups.setdefault((sub, group), []).append(vm)
            self._vms[sub, group, vm.name.lower()] = vm
            for nic in vm.nics(secondary_nics(vm)):
                self._nics[sub, group, nic.name.lower()] = vm

    def require_group(self, subscription: str, group: str) -> None:
        if subscription not in self._subscriptions:
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{subscription}' could not be found.")
        if (subscription, group) not in self._groups:
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{group}' could not be found.")

    def in_subscription(self, subscription: str) -> list[VirtualMachine]:
        if subscription not in self._subscriptions:
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{subscription}' could not be found.")
        return self._subscriptions[subscription]

    def in_group(self, subscription: str, group: str) -> list[VirtualMachine]:
        return self._groups.get((subscription, group), [])

    def vm(self, subscription: str, group: str, name: str) -> VirtualMachine | None:
        return self._vms.get((subscription, group, name))

    def nic(self, subscription: str, group: str, name: str) -> VirtualMachine | None:
        return self._nics.get((subscription, group, name))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bearer(headers: Mapping[str, str]) -> bool:
    scheme, _, token = (headers.get("Authorization") or "").strip().partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def _check_api_version(api_version: str | None) -> None:
    if not api_version:
        raise ArmError(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )
    if not _API_VERSION.match(api_version):
        raise ArmError(400, "InvalidApiVersionParameter", f"The api-version '{api_version}' is invalid.")


_COMPUTE_OPERATIONS = frozenset({"getVm", "listVms", "instanceView", "runCommand", "restart", "operationStatus"})


def _fault_response(kind: str, retry_after: int, operation: str) -> Response:
    if kind == "reset":
        return Response(0, drop=True)
    if kind == "409":
        message = (
            "Run command extension execution is in progress. Please wait for completion before invoking a run command."
            if operation == "runCommand"
            else "The operation conflicts with another operation in progress on the resource."
        )
        return ArmError(409, "Conflict", message).response()
    if kind == "429" and operation in _COMPUTE_OPERATIONS:
        # Compute throttles with top-level code OperationNotAllowed; only the inner detail says TooManyRequests
        # (Microsoft Learn, "Troubleshooting throttling errors in Azure", MicrosoftDocs/azure-docs
        # articles/virtual-machines/troubleshooting-throttling.md, "Throttling error details").
        # The article's example is a read's policy (HighCostGet30Min); no source names the policy of the POSTs
        # and their polls, so their detail carries no target.
        detail = {"code": "TooManyRequests", "message": "The request is being throttled."}
        if operation in ("getVm", "listVms", "instanceView"):
            detail = {
                "code": "TooManyRequests",
                "target": "HighCostGet30Min",
                "message": json.dumps({"operationGroup": "HighCostGet30Min"}),
            }
        return ArmError(
            429,
            "OperationNotAllowed",
            "The server rejected the request because too many requests have been received for this subscription.",
            {"Retry-After": str(retry_after)},
            [detail],
        ).response()
    if kind == "429":
        return ArmError(
            429,
            "TooManyRequests",
            "The request is being throttled as the limit has been reached for operation type.",
            {"Retry-After": str(retry_after)},
        ).response()
    if kind == "503":
        return ArmError(503, "ServiceUnavailable", "The service is temporarily unavailable.").response()
    return ArmError(500, "InternalServerError", "Encountered internal server error.").response()


def _signature(operation_id: str) -> dict[str, str]:
    """Signed query parameters like those of Compute's operation URLs: base64 values with `+`, `/` and `=`,
    so a client that decodes and re-encodes them, or drops them, is caught."""
    digest = hashlib.sha256(operation_id.encode()).digest()
    return {
        "p": str(uuid.uuid5(uuid.NAMESPACE_URL, operation_id)),
        "t": str(638_000_000_000_000_000 + int.from_bytes(digest[:4], "big")),
        "c": base64.b64encode(b"\xfb\xef" + digest[4:22]).decode(),
        "s": base64.b64encode(b"\xff\xfe" + digest[22:31]).decode(),
        "h": base64.urlsafe_b64encode(digest[:24]).decode().rstrip("="),
    }


def _encode_skip_token(offset: int) -> str:
    # URL-safe characters only: the SDK follows nextLink verbatim.
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode().rstrip("=")


def _decode_skip_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset = int(data["offset"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise ArmError(400, "InvalidSkipToken", "The $skiptoken is not valid.") from None
    if offset < 0:
        raise ArmError(400, "InvalidSkipToken", "The $skiptoken is not valid.")
    return offset


def _json_object(call: Call) -> dict[str, Any]:
    body = call.json_body()
    if not isinstance(body, dict):
        code = "BadArgumentError" if call.is_logs else "InvalidRequestContent"
        raise ArmError(400, code, "The request content must be a JSON object.")
    return body


def _run_command_input(body: Any) -> tuple[str, dict[str, str], str]:
    """(script text, parameters, commandId) from a RunCommandInput body; 400 for anything malformed."""
    if not isinstance(body, dict):
        raise ArmError(400, "InvalidRequestContent", "The request content must be a RunCommandInput object.")
    command_id = body.get("commandId")
    if not isinstance(command_id, str) or not command_id:
        raise ArmError(400, "InvalidParameter", "Required parameter 'commandId' is missing (null).")
    lines = body.get("script")
    if not isinstance(lines, list) or not lines or not all(isinstance(line, str) for line in lines):
        raise ArmError(400, "InvalidParameter", "Parameter 'script' must be a non-empty list of strings.")
    raw_parameters = body.get("parameters") or []
    if not isinstance(raw_parameters, list):
        raise ArmError(400, "InvalidParameter", "Parameter 'parameters' must be a list of {name, value}.")
    parameters: dict[str, str] = {}
    for item in raw_parameters:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise ArmError(400, "InvalidParameter", "Each run command parameter needs a 'name'.")
        value = item.get("value", "")
        if not isinstance(value, str):
            raise ArmError(400, "InvalidParameter", f"Parameter '{item['name']}' must have a string value.")
        parameters[item["name"]] = value
    return "\n".join(lines), parameters, command_id


class _GraphHandler(Protocol):
    def __call__(self, fleet: Fleet, *args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]: ...


def _optional_handler(module_name: str, function: str) -> _GraphHandler | None:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return None
    return cast(_GraphHandler, getattr(module, function))


def _vm_state(vm: VirtualMachine, operations: Operations, *, thumbprint: bool) -> dict[str, Any]:
    guest = vm.guest
    certificate: dict[str, Any] | None = None
    if guest.certificate is not None:
        certificate = {
            "serial": f"{guest.certificate.serial:x}",
            "not_after": guest.certificate.not_after.isoformat(),
            "expired": guest.certificate.expired(dt.datetime.now(dt.UTC)),
        }
        if thumbprint:
            certificate["thumbprint"] = guest.certificate.thumbprint
    return {
        "id": vm.resource_id,
        "scenario": vm.scenario,
        "os_type": vm.os_type,
        "power_state": vm.power_state,
        "agent_ready": vm.agent_ready,
        "provisioning_state": operations.provisioning_state(vm),
        "run_command_busy": vm.run_command_busy,
        "private_ip": vm.private_ip,
        "guest": {
            "certificate": certificate,
            "key_store": guest.key_store,
            "key_usable": guest.key_usable,
            "firewall_open": guest.firewall_open,
            "tls12_enabled": guest.tls12_enabled,
            "pending_tls12": guest.pending_tls12,
            "services_running": guest.services_running,
            "active_sessions": guest.active_sessions,
            "machinekeys_backups": list(guest.machinekeys_backups),
        },
    }


# --- RDP listeners ---------------------------------------------------------------------------------------


class _Listeners(Protocol):
    def stop(self) -> None: ...


def _start_listeners(fleet: Fleet, port: int) -> _Listeners | None:
    """The per-VM RDP listeners of `sim.rdp`, if that module is installed."""
    try:
        module = importlib.import_module("sim.rdp")
    except ModuleNotFoundError as exc:
        if exc.name != "sim.rdp":
            raise
        log.warning("sim.rdp is not available: no RDP listeners", extra={"rdp_port": port})
        return None
    listeners = module.RdpListeners(fleet, port)
    listeners.start()
    return cast(_Listeners, listeners)
