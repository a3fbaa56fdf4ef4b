"""The ledger: what rdp-remediate knows and did, in Azure Table storage.

Tables (names start with `RDPR_TABLE_PREFIX`):

* `<p>vms`    one row per VM: the lock (owner + expiry, taken with ETag-conditional writes so two workers
              never both win), attempt times (no reboot loops), the last outcome and recent request ids.
* `<p>audit`  one partition per request: a `request` row (who, why, options, state, outcome, reason), a
              `lease` row (which execution runs the request, until when) and one `step-NN` row per workflow
              step (start, finish, detail, script summary). A step row is inserted (never upserted) when the
              step starts and replaced, ETag-conditionally, when it ends, so a concurrent writer cannot
              overwrite it; a redelivered request resumes where the last worker stopped.
* `<p>dedup`  one row per dedup key (alert id + VM): inserting an existing key fails, which is the point.
              The row is also the intake's outbox: it holds the request's message until the message is
              queued, so a retry (or the reconciler) finishes what a crash left half done.

Row keys are SHA-256 digests of the case-folded VM id: ARM ids contain `/`, which row keys forbid.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import random
import time
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
# The `vms` table's partitions: the lock row (workers) and the intake row (HTTP intake) are separate rows.
# Intake rows are spread over 256 partitions by their row key's first two hex digits: Table storage serves
# one partition from one server (about 2,000 entities/s), so a flood of alerts must not all land on one.
INTAKE_PARTITION = "intake"  # the single partition older intake rows were written to; still read
INTAKE_WRITE_ATTEMPTS = 8
# How long a pending request whose record is not written yet still absorbs others for its VM.
PENDING_RECORD_GRACE = dt.timedelta(seconds=60)
LEASE_ROW = "lease"
# Dedup claim states: claimed (key taken, message not yet prepared), outbox (message prepared, not yet
# known to be queued), queued (the message is in the queue).
CLAIMED, OUTBOX, CLAIM_QUEUED = "claimed", "outbox", "queued"

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


PRUNE_BATCH = 500
# An alert instance lives 30 days in Azure Monitor (the Alerts Management API's longest timeRange is 30d):
# a dedup key older than that can never be claimed again by a redelivery, so it is pruned.
ALERT_LIFETIME = dt.timedelta(days=30)


@dataclass
class Pruned:
    requests: int = 0
    audit_rows: int = 0
    dedup_keys: int = 0


def _first(rows: Any, limit: int) -> list[Any]:
    found: list[Any] = []
    for row in rows:
        if len(found) >= limit:
            break
        found.append(row)
    return found


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def vm_row_key(vm: VmId) -> str:
    """The VM's row in the `vms` table (lock, cooldown, pending request), by `serial_key`."""
    return hashlib.sha256(serial_key(str(vm)).encode()).hexdigest()


def serial_key(text: str) -> str:
    """A key at least as coarse as Azure's comparison, for what must serialise: locks, cooldowns, pending slots.

    `azure_key` keeps apart pairs that are not case round trips (micro sign and mu, final and medial sigma,
    the title-case digraphs), which .NET's upper-case mapping may equate: two spellings of one VM must never get
    two locks. Mapping each character up and back down (where each step is one character) joins those pairs; it
    may also join pairs Azure keeps apart (a Kelvin sign and `k`), which only makes two VMs wait for each other.
    Never used for scope. For ASCII it is `lower()`, so existing rows keep their keys.
    """
    if text.isascii():
        return text.lower()
    return "".join(map(_serial_char, text))


def _serial_char(char: str) -> str:
    upper = char.upper()
    if len(upper) != 1:  # a mapping that expands (ß -> SS): .NET keeps the character
        upper = char
    lower = upper.lower()
    return lower if len(lower) == 1 else upper


def intake_partition(vm: VmId) -> str:
    """The VM's intake row's partition: one of 256, by its row key (see `INTAKE_PARTITION`)."""
    return f"{INTAKE_PARTITION}-{vm_row_key(vm)[:2]}"


@dataclass
class VmState:
    """The `vms` row of one VM."""

    vm: VmId
    owner: str | None = None
    lock_expires: dt.datetime | None = None
    attempts: dict[str, str] = field(default_factory=dict)  # request id -> ISO time the attempt started
    last_finished: dt.datetime | None = None  # end of the last remediation that changed the VM
    last_outcome: str | None = None
    # End of the last failure that changed nothing (a verdict about the VM: the same alert would fail the same
    # way), so intake can hold repeat alerts for the cooldown instead of re-running them without limit.
    last_unchanged_failure: dt.datetime | None = None
    history: list[str] = field(default_factory=list)  # most recent request ids, newest first
    etag: str | None = None

    def locked_by_other(self, request_id: str, now: dt.datetime) -> bool:
        return bool(self.owner and self.owner != request_id and self.lock_expires and self.lock_expires > now)

    def attempts_since(self, since: dt.datetime) -> int:
        return sum(1 for started in self.attempts.values() if dt.datetime.fromisoformat(started) >= since)


@dataclass(frozen=True)
class Decision:
    """One recorded outcome as the circuit breaker weighs it."""

    vm: str
    outcome: str
    changed: bool
    finished_at: dt.datetime


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
    changed: bool = False  # the outcome's verdict on whether the VM may have been changed (cooldown)
    step_etags: list[str] = field(default_factory=list)  # the ETag of each step row, for conditional writes

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


class ExecutionConflict(TransientError):
    """Another execution of the same request holds its lease or wrote its journal first: this one stops
    without recording anything (the other one records the outcome, or the reconciler does if it dies)."""


@dataclass
class Claim:
    """A dedup row that has not reached `queued`: what intake (or the reconciler) must finish."""

    key: str
    state: str
    claimed_at: dt.datetime
    request_id: str | None
    message: str | None
    etag: str


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

    # --- dedup and the intake outbox ------------------------------------------------------------------

    def claim(self, dedup_key: str) -> bool:
        """True the first time `dedup_key` is claimed, False ever after."""
        from azure.core.exceptions import ResourceExistsError

        entity = {
            "PartitionKey": "dedup",
            "RowKey": _dedup_row(dedup_key),
            "Key": dedup_key[:1000],
            "State": CLAIMED,
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
        from azure.core.exceptions import ResourceNotFoundError

        try:
            with _storage_errors("release a dedup key"):
                self.dedup.delete_entity("dedup", _dedup_row(dedup_key))
        except ResourceNotFoundError:
            pass

    def unfinished_claim(self, dedup_key: str) -> Claim | None:
        """The claim of `dedup_key` if it has not reached `queued` (a crash may have left it half done)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            with _storage_errors("read a dedup key"):
                row = self.dedup.get_entity("dedup", _dedup_row(dedup_key))
        except ResourceNotFoundError:
            return None
        claim = _claim(row)
        return None if claim.state == CLAIM_QUEUED else claim

    def unfinished_claims(self, older_than: dt.datetime) -> list[Claim]:
        """Claims claimed before `older_than` that never reached `queued` (for the reconciler)."""
        query = "PartitionKey eq 'dedup' and State ne @queued and ClaimedAt lt @before"
        with _storage_errors("list unfinished dedup keys"):
            rows = self.dedup.query_entities(query, parameters={"queued": CLAIM_QUEUED, "before": older_than})
            return [_claim(row) for row in rows]

    def retake_claim(self, claim: Claim) -> bool:
        """Take over a stale claim that never prepared a message (its intake died): ETag-conditional."""
        return self._update_claim(claim, {"State": CLAIMED, "ClaimedAt": self._clock(), "Message": ""})

    def prepare_claim(self, dedup_key: str, request_id: str, message: str) -> None:
        """Put the request's message into the claim row before the message is sent (the outbox)."""
        from azure.data.tables import UpdateMode

        entity = {
            "PartitionKey": "dedup",
            "RowKey": _dedup_row(dedup_key),
            "State": OUTBOX,
            "RequestId": request_id,
            "Message": message[:30000],
        }
        with _storage_errors("prepare a dedup key's message"):
            self.dedup.upsert_entity(entity, mode=UpdateMode.MERGE)

    def confirm_claim(self, dedup_key: str) -> None:
        """The message is queued: the claim is final (and its copy of the message no longer needed)."""
        from azure.data.tables import UpdateMode

        entity = {"PartitionKey": "dedup", "RowKey": _dedup_row(dedup_key), "State": CLAIM_QUEUED, "Message": ""}
        with _storage_errors("confirm a dedup key"):
            self.dedup.upsert_entity(entity, mode=UpdateMode.MERGE)

    def _update_claim(self, claim: Claim, fields: dict[str, Any]) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        entity = {"PartitionKey": "dedup", "RowKey": _dedup_row(claim.key), **fields}
        try:
            with _storage_errors("update a dedup key"):
                self.dedup.update_entity(
                    entity, mode=UpdateMode.MERGE, etag=claim.etag, match_condition=MatchConditions.IfNotModified
                )
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True

    # --- requests and steps --------------------------------------------------------------------------

    def record_accepted(self, request: RemediationRequest) -> None:
        """Write the request row at intake, before the message is queued: nothing accepted is lost.

        Insert-only: a row that exists already (a retried intake, a redelivery) keeps its state and outcome.
        """
        from azure.core.exceptions import ResourceExistsError

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
        try:
            with _storage_errors("record an accepted request"):
                self.audit.create_entity(entity)
        except ResourceExistsError:
            return
        self._remember(request.vm, request.request_id)

    def mark_running(self, request_id: str) -> None:
        """Queued -> running; never touches a request that already has its outcome."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError
        from azure.data.tables import UpdateMode

        for _ in range(5):
            head = self._head(request_id)
            if head is None or head.get("State") != QUEUED:
                return
            entity = {"PartitionKey": request_id, "RowKey": REQUEST_ROW, "State": RUNNING}
            try:
                with _storage_errors("update a request"):
                    self.audit.update_entity(
                        entity,
                        mode=UpdateMode.MERGE,
                        etag=head.metadata["etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
            except ResourceModifiedError:
                continue
            return

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
        """Write a step row unconditionally (tools and tests); the workflow appends with `append_step`."""
        with _storage_errors("record a workflow step"):
            self.audit.upsert_entity(_step_entity(request_id, index, step))

    def append_step(self, request_id: str, index: int, step: StepResult) -> str:
        """Insert step row `index`; ExecutionConflict when it exists (another execution wrote it). Its ETag."""
        from azure.core.exceptions import ResourceExistsError

        try:
            with _storage_errors("record a workflow step"):
                metadata = self.audit.create_entity(_step_entity(request_id, index, step))
        except ResourceExistsError as exc:
            raise ExecutionConflict(
                f"step {index} of request {request_id} was written by another execution; this one stops"
            ) from exc
        return str(metadata["etag"])

    def update_step(self, request_id: str, index: int, step: StepResult, etag: str) -> str:
        """Replace step row `index` if nobody wrote it since `etag`; ExecutionConflict otherwise. The new ETag."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        try:
            with _storage_errors("record a workflow step"):
                metadata = self.audit.update_entity(
                    _step_entity(request_id, index, step),
                    mode=UpdateMode.REPLACE,
                    etag=etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            raise ExecutionConflict(
                f"step {index} of request {request_id} was changed by another execution; this one stops"
            ) from exc
        return str(metadata["etag"])

    def record_outcome(
        self,
        request_id: str,
        outcome: Outcome,
        reason: str,
        *,
        failed_step: str | None = None,
        rebooted: bool = False,
        changed: bool = False,
        at: dt.datetime | None = None,
    ) -> bool:
        """Write the outcome once: True if this call wrote it, False if the request already had one.

        Conditional on the row's ETag, so of two executions finishing at once exactly one verdict stands.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        fields = {
            "State": DONE,
            "Outcome": outcome.value,
            "OutcomeReason": reason[:8000],
            "FailedStep": failed_step or "",
            "Rebooted": rebooted,
            "Changed": changed,
            "FinishedAt": at or self._clock(),
        }
        for _ in range(10):
            head = self._head(request_id)
            if head is not None and head.get("State") == DONE:
                return False
            entity = {"PartitionKey": request_id, "RowKey": REQUEST_ROW, **fields}
            try:
                with _storage_errors("record an outcome"):
                    if head is None:
                        self.audit.create_entity(entity)
                    else:
                        self.audit.update_entity(
                            entity,
                            mode=UpdateMode.MERGE,
                            etag=head.metadata["etag"],
                            match_condition=MatchConditions.IfNotModified,
                        )
            except (ResourceModifiedError, ResourceExistsError):
                continue
            return True
        raise TransientError(f"could not record the outcome of {request_id}: the request row is contended")

    def get(self, request_id: str) -> AuditRecord | None:
        """The request row and its steps, or None for an unknown id."""
        with _storage_errors("read a request"):
            rows = list(self.audit.query_entities("PartitionKey eq @pk", parameters={"pk": request_id}))
        head = next((row for row in rows if row["RowKey"] == REQUEST_ROW), None)
        if head is None:
            return None
        steps = sorted((row for row in rows if row["RowKey"].startswith("step-")), key=lambda r: r["RowKey"])
        return _record(head, steps)

    def steps(self, request_id: str) -> list[StepResult]:
        record = self.get(request_id)
        return record.steps if record else []

    def recent_decisions(self, since: dt.datetime) -> list[Decision]:
        """(VM, outcome, changed, finished) of every outcome recorded since `since` (for the circuit breaker)."""
        query = "RowKey eq @row and FinishedAt ge @since"
        select = ["Vm", "Outcome", "Changed", "FinishedAt"]
        with _storage_errors("read recent outcomes"):
            rows = self.audit.query_entities(query, parameters={"row": REQUEST_ROW, "since": since}, select=select)
            return [
                Decision(row.get("Vm") or "", row["Outcome"], bool(row.get("Changed")), row["FinishedAt"])
                for row in rows
                if row.get("Outcome") and row.get("FinishedAt")
            ]

    def count_accepted(self, trigger: str, since: dt.datetime) -> int:
        """Requests of `trigger` accepted since `since` that may change a VM (dry runs excluded)."""
        query = "RowKey eq @row and Trigger eq @trigger and AcceptedAt ge @since"
        parameters = {"row": REQUEST_ROW, "trigger": trigger, "since": since}
        with _storage_errors("count recent requests"):
            rows = self.audit.query_entities(query, parameters=parameters, select=["Options"])
            return sum(1 for row in rows if not json.loads(row.get("Options") or "{}").get("dryRun", False))

    # --- retention -----------------------------------------------------------------------------------

    def prune(self, *, audit_before: dt.datetime, dedup_before: dt.datetime, limit: int = PRUNE_BATCH) -> Pruned:
        """Delete audit records accepted before `audit_before` and dedup keys claimed before `dedup_before`.

        Cheap by construction: at most `limit` requests and `limit` keys per call (the sweep calls it each
        time, so a backlog drains over a few runs), deleted in entity-group transactions of up to 100 rows of
        one partition, and only key columns are read.
        """
        pruned = Pruned()
        with _storage_errors("prune old dedup keys"):
            old_keys = self.dedup.query_entities(
                "PartitionKey eq @pk and ClaimedAt lt @before",
                parameters={"pk": "dedup", "before": dedup_before},
                select=["PartitionKey", "RowKey"],
            )
            keys = [(row["PartitionKey"], row["RowKey"]) for row in _first(old_keys, limit)]
            pruned.dedup_keys = self._delete_rows(self.dedup, keys)
        with _storage_errors("prune old audit records"):
            heads = self.audit.query_entities(
                "RowKey eq @row and AcceptedAt lt @before",
                parameters={"row": REQUEST_ROW, "before": audit_before},
                select=["PartitionKey"],
            )
            for head in _first(heads, limit):
                rows = self.audit.query_entities(
                    "PartitionKey eq @pk", parameters={"pk": head["PartitionKey"]}, select=["PartitionKey", "RowKey"]
                )
                # The request row last: a prune cut short leaves a record that the next run still finds.
                ordered = sorted(((r["PartitionKey"], r["RowKey"]) for r in rows), key=lambda k: k[1] == REQUEST_ROW)
                pruned.audit_rows += self._delete_rows(self.audit, ordered)
                pruned.requests += 1
        if pruned.requests or pruned.dedup_keys:
            log.info("ledger pruned", extra={"requests": pruned.requests, "dedup_keys": pruned.dedup_keys})
        return pruned

    @staticmethod
    def _delete_rows(table: TableClient, keys: list[tuple[str, str]]) -> int:
        by_partition: dict[str, list[str]] = {}
        for partition, row in keys:
            by_partition.setdefault(partition, []).append(row)
        for partition, rows in by_partition.items():
            for start in range(0, len(rows), 100):  # Table storage's limit per transaction
                batch = rows[start : start + 100]
                table.submit_transaction([("delete", {"PartitionKey": partition, "RowKey": row}) for row in batch])
        return len(keys)

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

    def open_requests(self) -> list[AuditRecord]:
        """Requests without an outcome (queued or running), for the reconciler."""
        query = "RowKey eq @row and State ne @done"
        with _storage_errors("list open requests"):
            heads = list(self.audit.query_entities(query, parameters={"row": REQUEST_ROW, "done": DONE}))
        records = (self.get(head["PartitionKey"]) for head in heads)
        return [record for record in records if record is not None]

    def _head(self, request_id: str) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            with _storage_errors("read a request"):
                return self.audit.get_entity(request_id, REQUEST_ROW)
        except ResourceNotFoundError:
            return None

    # --- the execution lease: one request runs in one place --------------------------------------------

    def take_lease(self, request_id: str, holder: str, seconds: float) -> tuple[bool, str | None]:
        """Take or renew the request's execution lease for `holder`; (False, current holder) when another
        execution holds an unexpired one. ETag-conditional, so of two racing executions exactly one wins.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        for _ in range(10):
            try:
                with _storage_errors("read an execution lease"):
                    row = self.audit.get_entity(request_id, LEASE_ROW)
            except ResourceNotFoundError:
                row = None
            now = self._clock()
            if row is not None and row.get("Holder") != holder and row.get("Expires") and row["Expires"] > now:
                return False, str(row.get("Holder"))
            entity = {
                "PartitionKey": request_id,
                "RowKey": LEASE_ROW,
                "Holder": holder,
                "Expires": now + dt.timedelta(seconds=seconds),
            }
            try:
                with _storage_errors("take an execution lease"):
                    if row is None:
                        self.audit.create_entity(entity)
                    else:
                        self.audit.update_entity(
                            entity,
                            mode=UpdateMode.REPLACE,
                            etag=row.metadata["etag"],
                            match_condition=MatchConditions.IfNotModified,
                        )
            except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
                continue
            return True, holder
        raise TransientError(f"could not take the execution lease of {request_id}: contended")

    def drop_lease(self, request_id: str, holder: str) -> None:
        """Give the lease up if `holder` still holds it (a lease taken over by another is left alone)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        try:
            with _storage_errors("read an execution lease"):
                row = self.audit.get_entity(request_id, LEASE_ROW)
            if row.get("Holder") != holder:
                return
            with _storage_errors("drop an execution lease"):
                self.audit.delete_entity(
                    request_id, LEASE_ROW, etag=row.metadata["etag"], match_condition=MatchConditions.IfNotModified
                )
        except (ResourceNotFoundError, ResourceModifiedError):
            return

    def lease_expires(self, request_id: str) -> dt.datetime | None:
        """When the request's execution lease runs out (None: nobody holds one)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            with _storage_errors("read an execution lease"):
                row = self.audit.get_entity(request_id, LEASE_ROW)
        except ResourceNotFoundError:
            return None
        expires = row.get("Expires")
        return expires if isinstance(expires, dt.datetime) else None

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

    def finish_vm(self, vm: VmId, request_id: str, outcome: str, *, changed: bool, at: dt.datetime) -> None:
        """The VM row's side of an outcome, in ONE conditional write: the cooldown (when the VM may have been
        changed), the last outcome, and the release of the lock if `request_id` holds it.

        Idempotent: the cooldown starts at the outcome's own time `at` (never moved back), so whoever finds a
        done request whose finish did not happen (a crash in between) can safely complete it again.
        """

        def apply(state: VmState) -> None:
            if changed and (state.last_finished is None or state.last_finished < at):
                state.last_finished = at
            if changed or state.owner == request_id:  # only a request that held the lock writes the history
                state.last_outcome = outcome
                held = state.last_unchanged_failure
                if not changed and outcome == Outcome.FAILED and (held is None or held < at):
                    state.last_unchanged_failure = at
            if state.owner == request_id:
                state.owner, state.lock_expires = None, None

        self._update_vm(vm, apply)

    def complete_finish(self, record: AuditRecord) -> None:
        """Finish the VM side of a done request (cooldown, release); safe to repeat (see `finish_vm`)."""
        if record.state != DONE or record.outcome is None:
            return
        vm = VmId.parse(record.vm)
        at = record.finished_at or self._clock()
        state = self.vm_state(vm)
        cooled = not record.changed or (state.last_finished is not None and state.last_finished >= at)
        if cooled and state.owner != record.request_id:
            return  # already complete: no write
        self.finish_vm(vm, record.request_id, record.outcome, changed=record.changed, at=at)

    def history(self, vm: VmId) -> list[AuditRecord]:
        row = self._intake_row(vm)
        recent = json.loads(row.get("History") or "[]") if row is not None else []
        older = self.vm_state(vm).history  # rows written before intake had its own row
        ids = list(dict.fromkeys([*recent, *older]))[:HISTORY_LENGTH]
        records = (self.get(request_id) for request_id in ids)
        return [record for record in records if record is not None]

    def locked_vms(self) -> list[tuple[str, str]]:
        """(VM id, owner) of every VM row that names a lock owner (expired or not), for the reconciler."""
        with _storage_errors("list locked VMs"):
            rows = self.vms.query_entities("Owner ne @empty", parameters={"empty": ""}, select=["Vm", "Owner"])
            return [(row["Vm"], row["Owner"]) for row in rows]

    def _remember(self, vm: VmId, request_id: str) -> None:
        """Intake's note of a request, on the VM's intake row: never on the lock's row, so a burst of alerts
        for one VM cannot make a worker's lock write (or its own) lose every ETag race."""

        def apply(entity: dict[str, Any]) -> None:
            history = json.loads(entity.get("History") or "[]")
            entity["History"] = json.dumps([request_id, *[r for r in history if r != request_id]][:HISTORY_LENGTH])

        self._update_intake_row(vm, apply)

    # --- intake coalescing: one pending request per VM, on the intake row ---------------------------

    def admit(self, request: RemediationRequest, *, pending_for: dt.timedelta) -> str | None:
        """Make `request` the VM's pending request, or return the id of the pending one that absorbs it.

        A request is pending while its record says queued or running and it was accepted within
        `pending_for` (older ones are presumed lost: their message died without a trace).
        """
        absorbed_by: list[str] = []

        def apply(entity: dict[str, Any]) -> bool:
            current = entity.get("Pending") or ""
            if current and current != request.request_id and self._still_pending(entity, pending_for):
                absorbed_by.append(current)
                return False  # nothing to write
            entity["Pending"], entity["PendingSince"] = request.request_id, self._clock()
            return True

        self._update_intake_row(request.vm, apply)
        return absorbed_by[-1] if absorbed_by else None

    def release_pending(self, vm: VmId, request_id: str) -> None:
        """Give the slot back (the request could not be queued), so the sender's retry is not absorbed."""

        def apply(entity: dict[str, Any]) -> bool:
            if entity.get("Pending") != request_id:
                return False
            entity["Pending"] = ""
            return True

        self._update_intake_row(vm, apply)

    def _still_pending(self, entity: dict[str, Any], pending_for: dt.timedelta) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        now = self._clock()
        try:
            with _storage_errors("read a pending request"):
                head = self.audit.get_entity(entity["Pending"], REQUEST_ROW, select=["State", "AcceptedAt"])
        except ResourceNotFoundError:
            # Its record is being written right now (admit comes first), or intake failed before writing it.
            since = entity.get("PendingSince")
            return isinstance(since, dt.datetime) and now - since < PENDING_RECORD_GRACE
        accepted = head.get("AcceptedAt")
        fresh = isinstance(accepted, dt.datetime) and now - accepted < pending_for
        return head.get("State") in (QUEUED, RUNNING) and fresh

    def _intake_row(self, vm: VmId) -> dict[str, Any] | None:
        from azure.core.exceptions import ResourceNotFoundError

        for partition in (intake_partition(vm), INTAKE_PARTITION):  # the older single partition last
            try:
                with _storage_errors("read the VM's intake row"):
                    return dict(self.vms.get_entity(partition, vm_row_key(vm)))
            except ResourceNotFoundError:
                continue
        return None

    def _update_intake_row(self, vm: VmId, change: Callable[[dict[str, Any]], object]) -> None:
        """Read, change, write back ETag-conditionally; on a lost race back off (jittered) and try again.

        `change` returning False means there is nothing to write.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        for attempt in range(INTAKE_WRITE_ATTEMPTS):
            try:
                with _storage_errors("read the VM's intake row"):
                    row = self.vms.get_entity(intake_partition(vm), vm_row_key(vm))
                entity, etag = dict(row), row.metadata["etag"]
            except ResourceNotFoundError:
                entity, etag = {"PartitionKey": intake_partition(vm), "RowKey": vm_row_key(vm)}, None
            entity["Vm"] = str(vm)
            if change(entity) is False:
                return
            try:
                with _storage_errors("write the VM's intake row"):
                    if etag is None:
                        self.vms.create_entity(entity)
                    else:
                        self.vms.update_entity(
                            entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                        )
            except (ResourceExistsError, ResourceModifiedError):
                time.sleep(random.uniform(0, min(0.5, 0.01 * 2**attempt)))  # noqa: S311 - jitter, not security
            else:
                return
        raise TransientError(f"could not update the intake row of {vm}: too many concurrent writers")

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


def apply_retention(ledger: Ledger, settings: Settings) -> Pruned:
    """Prune what `RDPR_AUDIT_RETENTION_DAYS` and the alert lifetime no longer keep (one bounded batch)."""
    now = utcnow()
    audit_before = now - dt.timedelta(days=settings.audit_retention_days)
    return ledger.prune(audit_before=audit_before, dedup_before=now - ALERT_LIFETIME)


def storage_retry_options(settings: Settings) -> dict[str, Any]:
    """The storage clients' retries, governed by the same settings as the Azure clients': a ledger that is
    down must fail a step within the workflow's budget, not after azure-core's ten default retries."""
    total = settings.retry_total
    return {
        "retry_total": total,
        "retry_connect": total,
        "retry_read": total,
        "retry_status": total,
        "retry_backoff_factor": settings.retry_backoff_seconds,
        "retry_backoff_max": 60,
    }


def table_service(settings: Settings) -> TableServiceClient:
    """The Table service client: a connection string (Azurite, or a key-based account) or managed identity."""
    from azure.data.tables import TableServiceClient

    verify = settings.emulator_ca_cert if settings.emulator and settings.emulator_ca_cert else True
    retries = storage_retry_options(settings)
    if settings.storage_connection:
        return TableServiceClient.from_connection_string(
            settings.storage_connection, connection_verify=verify, **retries
        )
    if not settings.storage_account:
        from remediate.model import ConfigurationError

        raise ConfigurationError("no ledger storage: set RDPR_STORAGE_CONNECTION or AzureWebJobsStorage__accountName")
    from remediate.azure.clients import get_clients

    return TableServiceClient(
        f"https://{settings.storage_account}.table.core.windows.net",
        credential=get_clients(settings).credential,
        **retries,
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
        "LastUnchangedFailure": state.last_unchanged_failure or dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
        "History": json.dumps(state.history),
    }


def _vm_state(vm: VmId, row: Any) -> VmState:
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    lock_expires = row.get("LockExpires")
    last_finished = row.get("LastFinished")
    unchanged = row.get("LastUnchangedFailure")
    return VmState(
        vm=vm,
        owner=row.get("Owner") or None,
        lock_expires=lock_expires if lock_expires and lock_expires > epoch else None,
        attempts=json.loads(row.get("Attempts") or "{}"),
        last_finished=last_finished if last_finished and last_finished > epoch else None,
        last_outcome=row.get("LastOutcome") or None,
        last_unchanged_failure=unchanged if unchanged and unchanged > epoch else None,
        history=json.loads(row.get("History") or "[]"),
        etag=row.metadata["etag"],
    )


def _dedup_row(dedup_key: str) -> str:
    return hashlib.sha256(dedup_key.encode()).hexdigest()


def _claim(row: Any) -> Claim:
    return Claim(
        key=row.get("Key", ""),
        state=row.get("State") or CLAIM_QUEUED,  # rows written before the outbox existed were final
        claimed_at=row["ClaimedAt"],
        request_id=row.get("RequestId") or None,
        message=row.get("Message") or None,
        etag=row.metadata["etag"],
    )


def _step_entity(request_id: str, index: int, step: StepResult) -> dict[str, Any]:
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
    return {k: v for k, v in entity.items() if v is not None}


def _record(head: Any, step_rows: list[Any]) -> AuditRecord:
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
        steps=[_step(row) for row in step_rows],
        changed=bool(head.get("Changed", False)),
        step_etags=[row.metadata["etag"] for row in step_rows],
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
