"""The ledger: what rdp-remediate knows and did, in Azure Table storage.

Tables (names start with `RDPR_TABLE_PREFIX`):

* `<p>vms`    one row per VM: the lock (owner + expiry, taken with ETag-conditional writes so two workers
              never both win), attempt times (no reboot loops), the last outcome and recent request ids.
* `<p>audit`  one partition per request: a `request` row (who, why, options, state, outcome, reason) and one
              `step-NN` row per workflow step (start, finish, detail, script summary). A step is written
              before the next begins, so a redelivered request resumes where the last worker stopped.
* `<p>dedup`  one row per dedup key (alert id + VM): inserting an existing key fails, which is the point.

Row keys are SHA-256 digests of the case-folded VM id: ARM ids contain `/`, which row keys forbid.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from remediate.model import (
    Outcome,
    RemediationRequest,
    StepResult,
    TransientError,
    VmId,
)
from remediate.settings import Settings

if TYPE_CHECKING:
    from azure.data.tables import TableClient, TableServiceClient

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
HISTORY_LENGTH = 20
ATTEMPTS_KEPT = 50
REQUEST_ROW = "request"

# Request states: queued (accepted, not started), running, done (outcome recorded).
QUEUED, RUNNING, DONE = "queued", "running", "done"
# Stopped by an operator (Ctrl-C, unlock) before its outcome: not done, so running it again resumes it.
INTERRUPTED = "interrupted"
# Accepted but held back by the storm guard until its budget has room or an operator releases it.
HELD = "held"
# Its reboot waits for the VM's change window; the queue message comes back when the window opens.
WAITING = "waiting"
# Diagnosed, its plan recorded, waiting for a person to approve or reject it.
AWAITING_APPROVAL = "awaiting-approval"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def vm_row_key(vm: VmId) -> str:
    return hashlib.sha256(vm.key.encode()).hexdigest()


@dataclass
class VmState:
    """The `vms` row of one VM."""

    vm: VmId
    owner: str | None = None
    lock_expires: dt.datetime | None = None
    attempts: dict[str, str] = field(default_factory=dict)  # request id -> ISO time the attempt started
    last_finished: dt.datetime | None = None  # end of the last remediation that changed the VM
    last_outcome: str | None = None
    history: list[str] = field(default_factory=list)  # most recent request ids, newest first
    etag: str | None = None

    def locked_by_other(self, request_id: str, now: dt.datetime) -> bool:
        return bool(self.owner and self.owner != request_id and self.lock_expires and self.lock_expires > now)

    def attempts_since(self, since: dt.datetime) -> int:
        return sum(1 for started in self.attempts.values() if dt.datetime.fromisoformat(started) >= since)


@dataclass
class AuditRecord:
    """One remediation as an admin reads it back: `rdp-remediate status`, `GET /api/remediations/{id}`."""

    request_id: str
    vm: str
    trigger: str
    reason: str
    options: dict[str, Any]
    state: str
    accepted_at: dt.datetime
    outcome: str | None = None
    outcome_reason: str = ""
    failed_step: str | None = None
    finished_at: dt.datetime | None = None
    rebooted: bool = False
    steps: list[StepResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "requestId": self.request_id,
            "vm": self.vm,
            "trigger": self.trigger,
            "reason": self.reason,
            "options": self.options,
            "state": self.state,
            "acceptedAt": self.accepted_at.isoformat(),
            "outcome": self.outcome,
            "outcomeReason": self.outcome_reason,
            "failedStep": self.failed_step,
            "finishedAt": self.finished_at.isoformat() if self.finished_at else None,
            "rebooted": self.rebooted,
            "steps": [step.to_json() for step in self.steps],
        }


class Ledger:
    """Table-storage state shared by every worker. All methods are safe to call from many threads."""

    def __init__(self, service: TableServiceClient, prefix: str = "rdpr", clock: Clock = utcnow) -> None:
        self._service = service
        self._clock = clock
        self.vms: TableClient = service.get_table_client(f"{prefix}vms")
        self.audit: TableClient = service.get_table_client(f"{prefix}audit")
        self.dedup: TableClient = service.get_table_client(f"{prefix}dedup")

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = utcnow) -> Ledger:
        return cls(table_service(settings), settings.table_prefix, clock)

    def create_tables(self) -> None:
        """Idempotent; the Bicep creates the tables in Azure, this serves the emulator and first runs."""
        for table in (self.vms, self.audit, self.dedup):
            self._service.create_table_if_not_exists(table.table_name)

    # --- dedup ---------------------------------------------------------------------------------------

    def claim(self, dedup_key: str) -> bool:
        """True the first time `dedup_key` is claimed, False ever after."""
        from azure.core.exceptions import ResourceExistsError

        entity = {
            "PartitionKey": "dedup",
            "RowKey": hashlib.sha256(dedup_key.encode()).hexdigest(),
            "Key": dedup_key[:1000],
            "ClaimedAt": self._clock(),
        }
        try:
            with _storage_errors("claim a dedup key"):
                self.dedup.create_entity(entity)
        except ResourceExistsError:
            return False
        return True

    def unclaim(self, dedup_key: str) -> None:
        """Give a key back (its request could not be queued), so the sender's retry is not a duplicate."""
        with _storage_errors("release a dedup key"):
            self.dedup.delete_entity("dedup", hashlib.sha256(dedup_key.encode()).hexdigest())

    # --- requests and steps --------------------------------------------------------------------------

    def record_accepted(self, request: RemediationRequest) -> None:
        """Write the request row at intake, before the message is queued: nothing accepted is lost."""
        entity = {
            "PartitionKey": request.request_id,
            "RowKey": REQUEST_ROW,
            "Vm": str(request.vm),
            "Trigger": request.trigger.value,
            "Reason": request.reason[:4000],
            "Options": json.dumps(request.options.to_json()),
            "State": QUEUED,
            "AcceptedAt": self._clock(),
        }
        with _storage_errors("record an accepted request"):
            self.audit.upsert_entity(entity)
        self._remember(request.vm, request.request_id)

    def mark_running(self, request_id: str) -> None:
        self._merge_request(request_id, {"State": RUNNING})

    def mark_interrupted(self, request_id: str, reason: str) -> None:
        """The request stopped before its outcome; its journal stays, so `run --resume` continues it."""
        self._merge_request(request_id, {"State": INTERRUPTED, "OutcomeReason": reason[:8000]})

    def mark_waiting(self, request_id: str, state: str, reason: str, **fields: Any) -> None:
        """A request not running yet, and why (held by the storm guard, waiting for a slot, released)."""
        self._merge_request(request_id, {"State": state, "OutcomeReason": reason[:8000], **fields})

    def note(self, request_id: str, **fields: Any) -> None:
        """Extra columns on a request row, its state untouched (what became of the alert that started it)."""
        self._merge_request(request_id, fields)

    def request_fields(self, request_id: str, *names: str) -> dict[str, Any]:
        """Extra columns of a request row (the held message's id and receipt); empty for an unknown id."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            with _storage_errors("read a request"):
                row = self.audit.get_entity(request_id, REQUEST_ROW, select=list(names))
        except ResourceNotFoundError:
            return {}
        return {name: row.get(name) for name in names}

    def record_step(self, request_id: str, index: int, step: StepResult) -> None:
        entity = {
            "PartitionKey": request_id,
            "RowKey": f"step-{index:02d}",
            "Name": step.name,
            "Status": step.status,
            "StartedAt": step.started_at,
            "FinishedAt": step.finished_at,
            "Detail": step.detail[:8000],
            "Summary": json.dumps(step.summary) if step.summary is not None else None,
        }
        with _storage_errors("record a workflow step"):
            self.audit.upsert_entity({k: v for k, v in entity.items() if v is not None})

    def record_outcome(
        self, request_id: str, outcome: Outcome, reason: str, *, failed_step: str | None = None, rebooted: bool = False
    ) -> None:
        self._merge_request(
            request_id,
            {
                "State": DONE,
                "Outcome": outcome.value,
                "OutcomeReason": reason[:8000],
                "FailedStep": failed_step or "",
                "Rebooted": rebooted,
                "FinishedAt": self._clock(),
            },
        )

    def get(self, request_id: str) -> AuditRecord | None:
        """The request row and its steps, or None for an unknown id."""
        with _storage_errors("read a request"):
            rows = list(self.audit.query_entities("PartitionKey eq @pk", parameters={"pk": request_id}))
        head = next((row for row in rows if row["RowKey"] == REQUEST_ROW), None)
        if head is None:
            return None
        steps = sorted((row for row in rows if row["RowKey"].startswith("step-")), key=lambda r: r["RowKey"])
        return _record(head, [_step(row) for row in steps])

    def steps(self, request_id: str) -> list[StepResult]:
        record = self.get(request_id)
        return record.steps if record else []

    def recent_outcomes(self, since: dt.datetime) -> list[str]:
        """Outcomes recorded since `since` (for the circuit breaker)."""
        query = "RowKey eq @row and FinishedAt ge @since"
        with _storage_errors("read recent outcomes"):
            rows = self.audit.query_entities(query, parameters={"row": REQUEST_ROW, "since": since}, select=["Outcome"])
            return [row["Outcome"] for row in rows if row.get("Outcome")]

    def requests_in_state(self, state: str, limit: int = 200) -> list[AuditRecord]:
        """Request rows (without steps) in one state, e.g. every `held` request for the fleet view."""
        query = "RowKey eq @row and State eq @state"
        with _storage_errors("list requests"):
            rows = self.audit.query_entities(query, parameters={"row": REQUEST_ROW, "state": state})
            return [_record(row, []) for _, row in zip(range(limit), rows, strict=False)]

    def _merge_request(self, request_id: str, fields: dict[str, Any]) -> None:
        from azure.data.tables import UpdateMode

        with _storage_errors("update a request"):
            self.audit.upsert_entity(
                {"PartitionKey": request_id, "RowKey": REQUEST_ROW, **fields}, mode=UpdateMode.MERGE
            )

    # --- per-VM state: lock, attempts, cooldown, history ---------------------------------------------

    def vm_state(self, vm: VmId) -> VmState:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            with _storage_errors("read VM state"):
                row = self.vms.get_entity("vm", vm_row_key(vm))
        except ResourceNotFoundError:
            return VmState(vm)
        return _vm_state(vm, row)

    def acquire(self, vm: VmId, request_id: str, minutes: int) -> tuple[bool, VmState]:
        """Take the VM's lock for `request_id` (re-entrant for the same request: a redelivery resumes).

        The write is conditional on the ETag we read, so of two workers racing for the same VM exactly one
        succeeds; the loser re-reads and sees the winner's lock.
        """
        for _ in range(10):
            state = self.vm_state(vm)
            now = self._clock()
            if state.locked_by_other(request_id, now):
                return False, state
            state.owner, state.lock_expires = request_id, now + dt.timedelta(minutes=minutes)
            if self._write_vm(state):
                return True, state
        # Lost every race without anyone holding the lock: other writers (history, attempts) are busy on the row.
        raise TransientError(f"could not take the lock of {vm}: the ledger row is contended")

    def release(self, vm: VmId, request_id: str) -> None:
        """Drop the lock if we hold it; a lock taken over by another worker is left alone."""
        for _ in range(3):
            state = self.vm_state(vm)
            if state.owner != request_id:
                return
            state.owner, state.lock_expires = None, None
            if self._write_vm(state):
                return

    def record_attempt(self, vm: VmId, request_id: str) -> None:
        """Count a remediation that is about to change the VM (once per request, even when resumed).

        Only the most recent attempts are kept: enough for any attempt limit, and the row stays far below
        Table storage's 64 KB property limit however long a VM keeps breaking.
        """

        def apply(state: VmState) -> None:
            state.attempts.setdefault(request_id, self._clock().isoformat())
            newest = sorted(state.attempts.items(), key=lambda item: item[1])[-ATTEMPTS_KEPT:]
            state.attempts = dict(newest)

        self._update_vm(vm, apply)

    def record_finished(self, vm: VmId, outcome: Outcome, changed: bool) -> None:
        def apply(state: VmState) -> None:
            state.last_outcome = outcome.value
            if changed:
                state.last_finished = self._clock()

        self._update_vm(vm, apply)

    def history(self, vm: VmId) -> list[AuditRecord]:
        records = (self.get(request_id) for request_id in self.vm_state(vm).history)
        return [record for record in records if record is not None]

    def _remember(self, vm: VmId, request_id: str) -> None:
        def apply(state: VmState) -> None:
            state.history = [request_id, *[r for r in state.history if r != request_id]][:HISTORY_LENGTH]

        self._update_vm(vm, apply)

    def _update_vm(self, vm: VmId, change: Callable[[VmState], object]) -> None:
        for _ in range(10):
            state = self.vm_state(vm)
            change(state)
            if self._write_vm(state):
                return
        raise TransientError(f"could not update the ledger row of {vm}: too many concurrent writers")

    def _write_vm(self, state: VmState) -> bool:
        """Create or ETag-conditionally replace the VM row; False when someone else wrote first."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        entity = _vm_entity(state)
        try:
            with _storage_errors("write VM state"):
                if state.etag is None:
                    self.vms.create_entity(entity)
                else:
                    self.vms.update_entity(
                        entity, mode=UpdateMode.REPLACE, etag=state.etag, match_condition=MatchConditions.IfNotModified
                    )
        except (ResourceExistsError, ResourceModifiedError):
            return False
        return True


def table_service(settings: Settings) -> TableServiceClient:
    """The Table service client: a connection string (Azurite, or a key-based account) or managed identity."""
    from azure.data.tables import TableServiceClient

    verify = settings.emulator_ca_cert if settings.emulator and settings.emulator_ca_cert else True
    if settings.storage_connection:
        return TableServiceClient.from_connection_string(settings.storage_connection, connection_verify=verify)
    if not settings.storage_account:
        from remediate.model import ConfigurationError

        raise ConfigurationError("no ledger storage: set RDPR_STORAGE_CONNECTION or AzureWebJobsStorage__accountName")
    from remediate.azure.clients import get_clients

    return TableServiceClient(
        f"https://{settings.storage_account}.table.core.windows.net", credential=get_clients(settings).credential
    )


class _storage_errors:  # noqa: N801 - used as a context manager, reads like a function
    """Turn throttling and server errors from Table storage into TransientError (worth a retry)."""

    def __init__(self, doing: str) -> None:
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            raise TransientError(f"ledger unreachable while trying to {self.doing}: {exc}") from exc
        if isinstance(exc, HttpResponseError) and (exc.status_code or 0) in (408, 429, 500, 502, 503, 504):
            raise TransientError(f"ledger busy ({exc.status_code}) while trying to {self.doing}") from exc


def _vm_entity(state: VmState) -> dict[str, Any]:
    return {
        "PartitionKey": "vm",
        "RowKey": vm_row_key(state.vm),
        "Vm": str(state.vm),
        "Owner": state.owner or "",
        "LockExpires": state.lock_expires or dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
        "Attempts": json.dumps(state.attempts),
        "LastFinished": state.last_finished or dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
        "LastOutcome": state.last_outcome or "",
        "History": json.dumps(state.history),
    }


def _vm_state(vm: VmId, row: Any) -> VmState:
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    lock_expires = row.get("LockExpires")
    last_finished = row.get("LastFinished")
    return VmState(
        vm=vm,
        owner=row.get("Owner") or None,
        lock_expires=lock_expires if lock_expires and lock_expires > epoch else None,
        attempts=json.loads(row.get("Attempts") or "{}"),
        last_finished=last_finished if last_finished and last_finished > epoch else None,
        last_outcome=row.get("LastOutcome") or None,
        history=json.loads(row.get("History") or "[]"),
        etag=row.metadata["etag"],
    )


def _record(head: Any, steps: list[StepResult]) -> AuditRecord:
    finished = head.get("FinishedAt")
    return AuditRecord(
        request_id=head["PartitionKey"],
        vm=head["Vm"],
        trigger=head["Trigger"],
        reason=head.get("Reason", ""),
        options=json.loads(head.get("Options") or "{}"),
        state=head["State"],
        accepted_at=head["AcceptedAt"],
        outcome=head.get("Outcome") or None,
        outcome_reason=head.get("OutcomeReason", ""),
        failed_step=head.get("FailedStep") or None,
        finished_at=finished,
        rebooted=bool(head.get("Rebooted", False)),
        steps=steps,
    )


def _step(row: Any) -> StepResult:
    summary = row.get("Summary")
    return StepResult(
        row["Name"],
        row["Status"],
        row["StartedAt"],
        row.get("FinishedAt"),
        row.get("Detail", ""),
        json.loads(summary) if summary else None,
    )
