"""Long-running operations and simulated time: what Run Command and restart do to a VM, and when.

Every operation is a short timeline of transitions (restart: stopping, starting, running, agent ready; Run
Command: the script runs and its output is kept). Transitions sit in one heap ordered by due time and are applied
in order, exactly once, by whoever comes first: any ARM request (`advance()` before reading state, so answers are
exact whatever the thread scheduling) or one background thread that sleeps until the next due time (so the RDP
listeners, which read the fleet directly, see a VM come back without anyone asking ARM). Nothing polls.

All latencies are scaled by one factor: tests run at about 1/100 of real time, benchmarks at 1. The guest's
clock (`now` for certificate dates) is real UTC time: the moment a transition was due.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
import importlib
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from sim.faults import Faults
from sim.fleet import Fleet, VirtualMachine
from sim.realism import Realism

log = logging.getLogger(__name__)

OUTPUT_LIMIT = 4096  # Run Command keeps only the last 4096 bytes of each stream
RUN_COMMAND_IDS = {"Windows": "RunPowerShellScript", "Linux": "RunShellScript"}

Clock = Callable[[], float]


@dataclass(frozen=True)
class Latencies:
    """How long things take in Azure, in seconds of real time before scaling."""

    run_command: float = 35.0  # accepted -> output available
    restart_stop: float = 20.0  # restart accepted -> the VM is stopped and starts booting
    restart_start: float = 40.0  # booting -> the guest runs again (the kind restart LRO succeeds here)
    agent_ready: float = 30.0  # running -> the guest agent reports Ready again
    failure: float = 5.0  # accepted -> a failed operation (fault `lro-failed`) reports Failed
    arm_request: float = 0.0  # added to every ARM answer
    # Recorded restart operations (azure-cli vm test recordings) finish in well under a second, long before
    # the guest is back.
    restart_operation: float = 0.5
    # Run Command answers 409 "execution is in progress" for a while after a command succeeded
    # (Azure/azure-cli issue 19137: a second `az vm run-command invoke` right after a successful one).
    busy_after_success: float = 2.0
    # After a restart, the instance view keeps the agent's last `Ready` (with its old time) for a while.
    agent_linger: float = 15.0
    # A Run Command sent while the agent is down waits for it, then fails with VMAgentStatusCommunicationError
    # (Azure/azure-powershell issue 5741: an operation that waited 25 minutes; MicrosoftDocs/azure-docs issue
    # 11596: "took an extremely long time ... VM has not reported status for VM agent or extensions").
    agent_wait_limit: float = 300.0
    # A running agent reports its status again this often: the status `time` moves on, except while the guest
    # is down (then the last one lingers). The exact cadence is not documented; a minute is assumed.
    agent_heartbeat: float = 60.0

    def scaled(self, factor: float) -> Latencies:
        if factor < 0:
            raise ValueError(f"time scale must be >= 0, got {factor}")
        return Latencies(**{f.name: getattr(self, f.name) * factor for f in dataclasses.fields(self)})

    @property
    def restart(self) -> float:
        """Restart accepted -> the VM runs again (agent not ready yet)."""
        return self.restart_stop + self.restart_start


class ScriptResult(Protocol):
    @property
    def stdout(self) -> str: ...

    @property
    def stderr(self) -> str: ...


class GuestModel(Protocol):
    """What the emulator needs from the simulated Windows guest (`sim.guest`)."""

    def run_script(
        self, vm: VirtualMachine, script: str, parameters: dict[str, str], now: dt.datetime
    ) -> ScriptResult: ...

    def boot(self, vm: VirtualMachine, now: dt.datetime) -> None: ...


def load_guest() -> GuestModel | None:
    """`sim.guest` if it is installed; None otherwise (Run Commands then fail, saying why)."""
    try:
        module = importlib.import_module("sim.guest")
    except ModuleNotFoundError as exc:
        if exc.name != "sim.guest":
            raise
        return None
    return cast(GuestModel, module)


class Refused(Exception):
    """The operation cannot start in the VM's current state: ARM answers 409 with this code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Operation:
    """One accepted long-running operation, as its status document reports it."""

    id: str
    kind: str  # "runCommand" | "restart"
    vm: VirtualMachine
    started: float
    ends: float
    status: str = "InProgress"  # InProgress | Succeeded | Failed
    error: dict[str, str] | None = None
    error_status: int = 500  # the HTTP status of the final GET when the operation failed
    stdout: str = ""
    stderr: str = ""
    script: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    fault: str | None = None  # behavioural fault this operation carries
    interrupted: bool = False  # a restart cut a running Run Command short
    waiting_for_agent: bool = False  # accepted while the VM agent was down: runs when it is back, or fails
    signature: dict[str, str] = field(default_factory=dict)  # signed query parameters of its URLs

    @property
    def done(self) -> bool:
        return self.status != "InProgress"

    def fail(self, status: int, code: str, message: str) -> None:
        self.status, self.error_status = "Failed", status
        self.error = {"code": code, "message": message}


class Operations:
    """The emulator's long-running operations and the timeline of their effects on the fleet.

    Uses the fleet's lock for everything, so a transition and the RDP listeners or the ARM handlers never see
    a half-applied change.
    """

    def __init__(
        self,
        fleet: Fleet,
        latencies: Latencies,
        faults: Faults,
        clock: Clock = time.time,
        guest: GuestModel | None = None,
        realism: Realism | None = None,
    ) -> None:
        self.fleet = fleet
        self.latencies = latencies
        self.faults = faults
        self.realism = realism or Realism()
        self.clock = clock
        self._guest = guest
        self._guest_loaded = guest is not None
        self._changed = threading.Condition(fleet.lock)
        self._timeline: list[tuple[float, int, Callable[[float], None]]] = []
        self._sequence = itertools.count()
        self._operations: dict[str, Operation] = {}
        self._commands: dict[str, Operation] = {}  # VM key -> its running Run Command
        self._restarts: dict[str, Operation] = {}  # VM key -> its restart in progress
        # VM key -> (restart id, whether the agent comes back Ready) while a rebooted VM's agent is starting
        self._agents: dict[str, tuple[str, bool]] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.simulated_seconds = 0.0  # sum of the (scaled) durations of accepted operations

    # --- Lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Apply transitions in the background as they fall due (only with a real clock)."""
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sim-operations", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        with self._changed:
            while not self._stopping:
                self._advance_locked()
                timeout = self._timeline[0][0] - self.clock() if self._timeline else None
                if timeout is None or timeout > 0:
                    self._changed.wait(timeout)

    # --- Time --------------------------------------------------------------------------------------------

    def advance(self) -> None:
        """Apply every transition that is due by now."""
        with self.fleet.lock:
            self._advance_locked()

    def _advance_locked(self) -> None:
        now = self.clock()
        while self._timeline and self._timeline[0][0] <= now:
            due, _, action = heapq.heappop(self._timeline)
            try:
                action(due)
            except Exception:  # a broken transition must not stop time for every other VM
                log.exception("emulator transition failed", extra={"due": due})

    def _at(self, due: float, action: Callable[[float], None]) -> None:
        heapq.heappush(self._timeline, (due, next(self._sequence), action))
        self._changed.notify_all()

    @staticmethod
    def wall(timestamp: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(timestamp, dt.UTC)

    # --- Queries -----------------------------------------------------------------------------------------

    def get(self, operation_id: str) -> Operation | None:
        with self.fleet.lock:
            self._advance_locked()
            return self._operations.get(operation_id.lower())

    def provisioning_state(self, vm: VirtualMachine) -> str:
        """`Updating` while a restart is in flight, as ARM reports it; `Succeeded` otherwise."""
        return "Updating" if vm.key in self._restarts else "Succeeded"

    def records(self) -> list[Operation]:
        """Every accepted operation so far (for benchmarks and tests that add up Azure's own time)."""
        with self.fleet.lock:
            self._advance_locked()
            return list(self._operations.values())

    def remaining(self, operation: Operation) -> float:
        return max(0.0, operation.ends - self.clock())

    def stats(self) -> dict[str, Any]:
        with self.fleet.lock:
            counts: dict[str, int] = {}
            for op in self._operations.values():
                key = f"{op.kind}.{op.status}"
                counts[key] = counts.get(key, 0) + 1
            return {"operations": dict(sorted(counts.items())), "simulated_seconds": self.simulated_seconds}

    # --- Run Command -------------------------------------------------------------------------------------

    def start_run_command(self, vm: VirtualMachine, script: str, parameters: dict[str, str]) -> Operation:
        """Accept a Run Command or raise Refused (409) the way Azure does."""
        with self.fleet.lock:
            self._advance_locked()
            now = self.clock()
            # The 409 quoted in Azure/azure-cli issue 19137 and MicrosoftDocs/azure-docs issue 43356.
            if vm.run_command_busy or now < vm.busy_until:
                raise Refused(
                    "Conflict",
                    "Run command extension execution is in progress. "
                    "Please wait for completion before invoking a run command.",
                )
            _require_running(vm, "runCommand")
            if not vm.agent_ready or self.faults.take("runCommand", "agent-not-ready", vm.key):
                return self._wait_for_agent(vm, script, parameters, now)
            fault = next(
                (
                    kind
                    for kind in ("lro-failed", "garbage-output", "oversized-output")
                    if self.faults.take("runCommand", kind, vm.key)
                ),
                None,
            )
            duration = self.latencies.failure if fault == "lro-failed" else self.latencies.run_command
            op = self._new("runCommand", vm, now, now + duration)
            op.script, op.parameters, op.fault = script, dict(parameters), fault
            vm.run_command_busy = True
            self._commands[vm.key] = op
            self._at(op.ends, lambda due: self._finish_run_command(op, due))
            return op

    def _wait_for_agent(self, vm: VirtualMachine, script: str, parameters: dict[str, str], now: float) -> Operation:
        """Accepted while the agent is down: the command runs when the agent is back, or fails at the limit.

        Replaces an immediate 409 that no public source shows; see `Latencies.agent_wait_limit` for the sources.
        """
        op = self._new("runCommand", vm, now, now + self.latencies.agent_wait_limit)
        op.script, op.parameters, op.waiting_for_agent = script, dict(parameters), True
        vm.run_command_busy = True
        self._commands[vm.key] = op
        self._at(op.ends, lambda _due: self._agent_never_answered(op))
        return op

    def _agent_never_answered(self, op: Operation) -> None:
        if not op.waiting_for_agent or op.done:
            return
        op.waiting_for_agent = False
        op.vm.run_command_busy = False
        self._commands.pop(op.vm.key, None)
        # Message: Microsoft Learn, "Understand common error messages when you manage virtual machines".
        op.fail(
            409,
            "VMAgentStatusCommunicationError",
            f"VM '{op.vm.name}' has not reported status for VM agent or extensions. Please verify the VM has a "
            "running VM agent, and can establish outbound connections to Azure storage.",
        )

    def _agent_answers(self, vm: VirtualMachine, due: float) -> None:
        """The agent is back: a command that waited for it starts now."""
        op = self._commands.get(vm.key)
        if op is None or not op.waiting_for_agent:
            return
        op.waiting_for_agent = False
        self.simulated_seconds += (due + self.latencies.run_command) - op.ends
        op.ends = due + self.latencies.run_command
        self._at(op.ends, lambda end: self._finish_run_command(op, end))

    @staticmethod
    def _fails_before_the_script(op: Operation) -> bool:
        """A command cut short by a restart, or an injected `lro-failed`: the operation fails, no script ran."""
        if op.interrupted:
            op.fail(409, "OperationPreempted", "The run command was interrupted because the VM restarted.")
            return True
        if op.fault == "lro-failed":
            op.fail(500, "InternalExecutionError", "An internal execution error occurred. Please retry later.")
            return True
        return False

    @staticmethod
    def _fails_without_crp_key(op: Operation) -> bool:
        """The agent cannot decrypt the extension's protected settings without the CRP transport certificate's
        key: extensions fail until the agent restarts and re-creates it (Microsoft Learn, "Azure virtual machine
        extensions and features for Windows" and "Troubleshooting Azure Windows VM extension failures"). The
        code and message shape are the ones extension failures report (VMExtensionProvisioningError, "VM has
        reported a failure when processing extension ...")."""
        if op.vm.guest.crp_key is not None:
            return False
        op.fail(
            409,
            "VMExtensionProvisioningError",
            "VM has reported a failure when processing extension 'RunCommandWindows'. Error message: "
            '"Failed to decrypt protected settings."',
        )
        return True

    def _finish_run_command(self, op: Operation, due: float) -> None:
        vm = op.vm
        if op.done:
            return
        vm.run_command_busy = False
        self._commands.pop(vm.key, None)
        if self._fails_before_the_script(op):
            return
        if op.fault == "garbage-output":
            op.stdout, op.stderr = _tail(_GARBAGE), ""
            op.status = "Succeeded"
            return
        guest = self._load_guest()
        if guest is None:
            op.fail(500, "InternalExecutionError", "The simulated guest (sim.guest) is not available.")
            return
        if self._fails_without_crp_key(op):
            return
        try:
            result = guest.run_script(vm, op.script, op.parameters, self.wall(due))
        except Exception as exc:
            log.exception("simulated guest failed", extra={"vm": vm.resource_id})
            op.fail(500, "InternalExecutionError", f"The simulated guest failed: {exc}")
            return
        stdout, stderr = result.stdout, result.stderr
        if op.fault == "oversized-output":
            stdout = _PADDING + stdout
        if self.realism.crlf:  # Windows PowerShell writes CRLF line ends
            stdout, stderr = _crlf(stdout), _crlf(stderr)
        op.stdout, op.stderr = _tail(stdout), _tail(stderr)
        op.status = "Succeeded"
        vm.busy_until = due + self.latencies.busy_after_success

    # --- Restart -----------------------------------------------------------------------------------------

    def start_restart(self, vm: VirtualMachine) -> Operation:
        """Accept a restart or raise Refused (409); the VM then stops, boots and reports running."""
        with self.fleet.lock:
            self._advance_locked()
            if vm.key in self._restarts:
                # The message Compute documents for it (Microsoft Learn, "Azure Virtual Machine error messages",
                # MicrosoftDocs/azure-docs articles/virtual-machines/windows/error-messages.md).
                raise Refused(
                    "OperationNotAllowed",
                    f"Operation 'restart' is not allowed on VM '{vm.name}' since another operation is in progress.",
                )
            _require_running(vm, "restart")
            now = self.clock()
            if self.faults.take("restart", "lro-failed", vm.key):
                # The platform gave up before touching the VM: it keeps running as it was.
                op = self._new("restart", vm, now, now + self.latencies.failure)
                op.fault = "lro-failed"
                self._at(op.ends, lambda _due: op.fail(500, "InternalExecutionError", _RETRY_LATER))
                return op
            never = vm.never_returns or self.faults.take("restart", "never-returns", vm.key)
            early = self.realism.restart_early
            op = self._new(
                "restart", vm, now, now + (self.latencies.restart_operation if early else self.latencies.restart)
            )
            op.fault = "never-returns" if never else None
            if self.faults.take("restart", "lro-canceled", vm.key):
                op.fault = "lro-canceled"  # the VM restarts, the operation reports Canceled (sim/faults.py)
            self._restarts[vm.key] = op
            # A VM restarted again before its agent came back keeps the agent's health, not its momentary state.
            _, agent_healthy = self._agents.pop(vm.key, ("", vm.agent_ready))
            if vm.agent_ready and early:
                vm.agent_linger_until = now + self.latencies.agent_linger  # the old Ready, old time, lingers
                beat = self.latencies.agent_heartbeat
                if beat > 0:  # its last report before the reboot
                    vm.agent_time += ((now - vm.agent_time) // beat) * beat
            vm.power_state, vm.agent_ready = "stopping", False
            command = self._commands.get(vm.key)
            if command is not None:
                command.interrupted = True
            self._at(now + self.latencies.restart_stop, lambda _due: _set_power(vm, "starting"))
            boot = now + self.latencies.restart
            if early:
                self._at(op.ends, lambda _due: self._restart_accepted_done(op))
            self._at(boot, lambda due: self._finish_restart(op, due, agent_healthy))
            return op

    def _restart_accepted_done(self, op: Operation) -> None:
        """The operation reports Succeeded while the guest is still going down and booting: the platform
        reports the VM running (`reported_power`), the guest is not back yet."""
        self._restarts.pop(op.vm.key, None)
        op.status = "Succeeded"
        if op.fault == "lro-canceled":  # preempted: the operation says Canceled, the VM restarts all the same
            op.status, op.error_status = "Canceled", 409
            op.error = {"code": "OperationPreempted", "message": "Operation execution has been preempted."}
        op.vm.reported_power = "running"

    def _finish_restart(self, op: Operation, due: float, agent_healthy: bool) -> None:
        vm = op.vm
        if self._restarts.get(vm.key) is op:
            self._restarts.pop(vm.key, None)
        op.status = "Succeeded"  # Azure performed the restart, whether or not the guest comes back
        if op.fault == "lro-canceled":
            op.status, op.error_status = "Canceled", 409
            op.error = {"code": "OperationPreempted", "message": "Operation execution has been preempted."}
        if op.fault == "never-returns":
            log.info("simulated VM stays starting after restart", extra={"vm": vm.resource_id})
            return
        vm.power_state, vm.reported_power = "running", None
        guest = self._load_guest()
        if guest is None:
            log.warning("sim.guest is not available: boot effects skipped", extra={"vm": vm.resource_id})
        else:
            try:
                guest.boot(vm, self.wall(due))
            except Exception:  # the VM still runs; the agent must still come back
                log.exception("simulated guest failed to boot", extra={"vm": vm.resource_id})
        # A broken agent stays broken across a reboot; a healthy one reports Ready a while after boot.
        self._agents[vm.key] = (op.id, agent_healthy)
        self._at(due + self.latencies.agent_ready, lambda back: self._agent_back(vm, op.id, back))

    def _agent_back(self, vm: VirtualMachine, restart_id: str, due: float) -> None:
        pending = self._agents.get(vm.key)
        if pending is None or pending[0] != restart_id:
            return  # another restart began meanwhile; its own timeline decides
        del self._agents[vm.key]
        vm.agent_ready = pending[1]
        if vm.agent_ready:
            vm.agent_time = due  # a fresh status report, newer than the restart
            self._agent_answers(vm, due)

    # --- Helpers -----------------------------------------------------------------------------------------

    def _new(self, kind: str, vm: VirtualMachine, started: float, ends: float) -> Operation:
        op = Operation(str(uuid.uuid4()), kind, vm, started, ends)
        self._operations[op.id] = op
        self.simulated_seconds += ends - started
        return op

    def _load_guest(self) -> GuestModel | None:
        if not self._guest_loaded:
            self._guest, self._guest_loaded = load_guest(), True
        return self._guest


def _require_running(vm: VirtualMachine, operation: str) -> None:
    power = vm.reported_power or vm.power_state  # ARM judges by what the platform reports, not by the guest
    if power != "running":
        raise Refused(
            "OperationNotAllowed",
            f"Operation '{operation}' is not allowed on VM '{vm.name}' since the VM is {power}.",
        )


def _set_power(vm: VirtualMachine, state: str) -> None:
    vm.power_state = state


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def _tail(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """The last `limit` bytes of the UTF-8 text; a character cut in half at the front is dropped."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[-limit:].decode("utf-8", errors="ignore")


_RETRY_LATER = "An internal execution error occurred. Please retry later."

# What a script that went wrong prints: no JSON line anywhere.
_GARBAGE = (
    "#< CLIXML\n"
    "Preparing modules for first use.\n"
    "\x1b[31;1mProgram 'powershell.exe' failed to run: The parameter is incorrect\x1b[0m\n"
    "At line:1 char:1\n"
    "+ ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~\n"
)

# More than 10 KB of progress before the script's own output: only its tail survives the 4096-byte cut.
_PADDING = "".join(f"progress: checking item {i:04d} of 0240 ... ok\n" for i in range(240))
