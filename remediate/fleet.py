"""The fleet RDP certificate inventory: what every sweep observed, per VM, kept where it is cheap to query.

Tables (names start with `RDPR_TABLE_PREFIX`):

* `<p>fleet`         partition `latest`, one row per VM (row key: the ledger's digest of the VM id): the VM's
                     current state as the sweeps see it. `rdp-remediate fleet` and the forecast read this only.
* `<p>fleethistory`  one partition per sweep (the sweep's row key), one row per VM whose state CHANGED in that
                     sweep (status, certificate, TLS, finding, what was done with it, evidence): a VM's history is
                     its changes, one point read per kept sweep.
* `<p>sweeps`        partition `sweep`, one row per sweep, newest first (inverted-time row keys): its counts.

Writing only what changed keeps a steady fleet cheap: a sweep reads the `latest` partition once (1,000 rows a
page) and writes, in transactions of 100 rows, only the VMs whose state changed, and deletes the rows of VMs that
are gone. Days left are computed from the certificate's not-after when read, so time passing is not a change.
History is bounded: only the newest `HISTORY_SWEEPS` sweeps are kept. Nothing here decides anything.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from remediate.ledger import table_service, vm_row_key
from remediate.model import TransientError
from remediate.settings import Settings

if TYPE_CHECKING:
    from azure.data.tables import TableClient, TableServiceClient

log = logging.getLogger(__name__)

HISTORY_SWEEPS = 30
LATEST = "latest"
SWEEP_PARTITION = "sweep"
_BATCH = 100  # Table storage's limit of operations per transaction
_WRITERS = 8  # transactions in flight at once
_MAX_TIME = 10**13  # milliseconds: inverted-time row keys sort newest first
HEALTHY = frozenset({"healthy"})


@dataclass
class Observation:
    """One VM as one sweep saw it. Field names are the JSON (camelCase) and Table column names."""

    vm: str
    vmName: str  # noqa: N815 - the JSON and Table column name
    subscriptionId: str  # noqa: N815
    resourceGroup: str  # noqa: N815
    sweepId: str  # noqa: N815
    observedAt: str  # noqa: N815 - ISO 8601 UTC
    powerState: str  # noqa: N815
    probeStatus: str  # noqa: N815 - the probe's status, or "not-probed"
    probeDetail: str = ""  # noqa: N815
    thumbprint: str = ""
    issuerKind: str = ""  # noqa: N815 - "self-signed", "ca-issued" or "" (no certificate seen)
    issuer: str = ""
    notAfter: str = ""  # noqa: N815 - ISO 8601 UTC
    daysLeft: int | None = None  # noqa: N815
    tlsVersion: str = ""  # noqa: N815
    evidence: list[str] = field(default_factory=list)
    finding: str = ""  # "remediate", "renew" or "" (nothing to do)
    disposition: str = ""  # "queued", "held-back", "reported", "skipped" or "" (no finding)
    dispositionReason: str = ""  # noqa: N815

    def signature(self) -> str:
        """What a change is: everything observed except when, by which sweep, and the days left (time passing)."""
        facts = [
            self.powerState,
            self.probeStatus,
            self.thumbprint,
            self.issuerKind,
            self.notAfter,
            self.tlsVersion,
            self.finding,
            self.disposition,
            self.dispositionReason,
            *self.evidence,
        ]
        return hashlib.sha256("\x1f".join(facts).encode()).hexdigest()[:32]

    def days_left_at(self, today: dt.date) -> int | None:
        if not self.notAfter:
            return None
        return (dt.datetime.fromisoformat(self.notAfter).date() - today).days

    @property
    def needs_attention(self) -> bool:
        return bool(self.finding) or self.probeStatus not in HEALTHY | {"not-probed"}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_entity(self, partition: str) -> dict[str, Any]:
        entity: dict[str, Any] = {"PartitionKey": partition, "RowKey": row_key(self.vm), "signature": self.signature()}
        for key, value in asdict(self).items():
            if key == "evidence":
                entity[key] = json.dumps(value)[:30_000]
            elif value is not None:
                entity[key] = value
        return entity

    @classmethod
    def from_entity(cls, row: Any) -> Observation:
        names = cls.__dataclass_fields__
        values = {key: row[key] for key in names if key in row and key != "evidence"}
        values["evidence"] = json.loads(row.get("evidence") or "[]")
        return cls(**values)


@dataclass
class SweepSummary:
    sweepId: str  # noqa: N815
    startedAt: str  # noqa: N815
    mode: str
    windowsVms: int  # noqa: N815
    eligible: int
    probed: int
    findings: int
    queued: int
    heldBack: int  # noqa: N815
    stopped: str
    byStatus: dict[str, int]  # noqa: N815
    changed: int = 0  # VMs whose state changed in this sweep (the rows it wrote)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def row_key(vm: str) -> str:
    from remediate.model import VmId

    return vm_row_key(VmId.parse(vm))


def sweep_key(started: dt.datetime) -> str:
    """Row key of a sweep: inverted milliseconds (newest sorts first), then the time for a human reader."""
    millis = int(started.timestamp() * 1000)
    return f"{_MAX_TIME - millis:013d}-{started.strftime('%Y%m%dT%H%M%S')}"


# --- the store ---------------------------------------------------------------------------------------------


class FleetStore:
    """Table storage for the inventory. Safe to share between threads."""

    def __init__(self, service: TableServiceClient, prefix: str = "rdpr") -> None:
        self._service = service
        self.latest: TableClient = service.get_table_client(f"{prefix}fleet")
        self.history: TableClient = service.get_table_client(f"{prefix}fleethistory")
        self.sweeps: TableClient = service.get_table_client(f"{prefix}sweeps")

    @classmethod
    def from_settings(cls, settings: Settings) -> FleetStore:
        return cls(table_service(settings), settings.table_prefix)

    def create_tables(self) -> None:
        """Idempotent; the Bicep creates the tables in Azure, this serves the emulator and first runs."""
        for table in (self.latest, self.history, self.sweeps):
            self._service.create_table_if_not_exists(table.table_name)

    def record(self, summary: SweepSummary, observations: Sequence[Observation]) -> int:
        """Write one sweep: the VMs whose state changed (history and latest), the rows of VMs that are gone, the
        sweep's row; then prune old sweeps. Returns how many VMs changed."""
        with _storage_errors("record the fleet inventory"):
            previous = {
                row["RowKey"]: row.get("signature")
                for row in self.latest.query_entities(
                    "PartitionKey eq @p", parameters={"p": LATEST}, select=["RowKey", "signature"]
                )
            }
            keys = {o.vm: row_key(o.vm) for o in observations}
            changed = [o for o in observations if previous.get(keys[o.vm]) != o.signature()]
            present = set(keys.values())
            gone = [{"PartitionKey": LATEST, "RowKey": key} for key in previous if key not in present]
            self._submit(self.history, [("upsert", o.to_entity(summary.sweepId)) for o in changed])
            self._submit(self.latest, [("upsert", o.to_entity(LATEST)) for o in changed])
            self._submit(self.latest, [("delete", key) for key in gone])
            summary.changed = len(changed)
            entity = {"PartitionKey": SWEEP_PARTITION, "RowKey": summary.sweepId, **asdict(summary)}
            entity["byStatus"] = json.dumps(summary.byStatus)
            self.sweeps.upsert_entity(entity)
            self._prune()
        return len(changed)

    def _submit(self, table: TableClient, operations: Sequence[tuple[str, dict[str, Any]]]) -> None:
        batches = [list(operations[i : i + _BATCH]) for i in range(0, len(operations), _BATCH)]
        if not batches:
            return
        with ThreadPoolExecutor(max_workers=min(_WRITERS, len(batches))) as pool:
            list(pool.map(table.submit_transaction, batches))

    def _prune(self) -> None:
        old = list(self.recent_sweeps(limit=None))[HISTORY_SWEEPS:]
        for sweep in old:
            rows = self.history.query_entities(
                "PartitionKey eq @p", parameters={"p": sweep.sweepId}, select=["PartitionKey", "RowKey"]
            )
            keys = [("delete", {"PartitionKey": r["PartitionKey"], "RowKey": r["RowKey"]}) for r in rows]
            for i in range(0, len(keys), _BATCH):
                self.history.submit_transaction(keys[i : i + _BATCH])
            self.sweeps.delete_entity(SWEEP_PARTITION, sweep.sweepId)

    def latest_observations(self, today: dt.date | None = None) -> list[Observation]:
        """Every VM's current state, with days left counted to `today` (default: now, UTC)."""
        today = today or dt.datetime.now(dt.UTC).date()
        with _storage_errors("read the fleet inventory"):
            rows = self.latest.query_entities("PartitionKey eq @p", parameters={"p": LATEST})
            observations = [Observation.from_entity(row) for row in rows]
        for o in observations:
            o.daysLeft = o.days_left_at(today)
        return observations

    def recent_sweeps(self, limit: int | None = 10) -> Iterator[SweepSummary]:
        rows = self.sweeps.query_entities("PartitionKey eq @p", parameters={"p": SWEEP_PARTITION})
        for count, row in enumerate(rows):
            if limit is not None and count >= limit:
                return
            values = {k: row[k] for k in SweepSummary.__dataclass_fields__ if k in row}
            values["byStatus"] = json.loads(row.get("byStatus") or "{}")
            yield SweepSummary(**values)

    def vm_history(self, vm: str, sweeps: int = HISTORY_SWEEPS) -> list[Observation]:
        """The VM's changes within the last `sweeps` sweeps, newest first (point reads, one per sweep)."""
        from azure.core.exceptions import ResourceNotFoundError

        key = row_key(vm)
        found = []
        with _storage_errors("read a VM's inventory history"):
            for sweep in self.recent_sweeps(limit=sweeps):
                try:
                    found.append(Observation.from_entity(self.history.get_entity(sweep.sweepId, key)))
                except ResourceNotFoundError:
                    continue
        return found


class _storage_errors:  # noqa: N801 - used as a context manager, reads like a function
    def __init__(self, doing: str) -> None:
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            raise TransientError(f"storage unreachable while trying to {self.doing}: {exc}") from exc
        if isinstance(exc, HttpResponseError) and (exc.status_code or 0) in (408, 429, 500, 502, 503, 504):
            raise TransientError(f"storage busy ({exc.status_code}) while trying to {self.doing}") from exc


# --- reading it: summary, attention list, forecast ----------------------------------------------------------


def summary_by_status(observations: Iterable[Observation]) -> dict[str, int]:
    counts = Counter(o.probeStatus for o in observations)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def needing_attention(observations: Iterable[Observation], expiring_within: int | None = None) -> list[Observation]:
    """VMs with a finding or a broken probe, or (with `expiring_within`) a certificate expiring that soon;
    the most urgent first (fewest days left, then name)."""
    chosen = [
        o
        for o in observations
        if (o.needs_attention if expiring_within is None else o.daysLeft is not None and o.daysLeft <= expiring_within)
    ]
    return sorted(chosen, key=lambda o: (o.daysLeft if o.daysLeft is not None else -(10**6), o.vmName))


@dataclass(frozen=True)
class ForecastWeek:
    start: dt.date  # first day of the week (today for week 1)
    expiring: int  # listener certificates whose not-after falls in this week

    def to_json(self) -> dict[str, Any]:
        return {"weekStart": self.start.isoformat(), "expiring": self.expiring}


def forecast(observations: Iterable[Observation], today: dt.date, weeks: int = 8) -> tuple[int, list[ForecastWeek]]:
    """How many listener certificates are already expired, and how many expire in each of the coming weeks."""
    counts = Counter[int]()
    expired = 0
    for o in observations:
        if not o.notAfter:
            continue
        days = (dt.datetime.fromisoformat(o.notAfter).date() - today).days
        if days < 0:
            expired += 1
        elif days < weeks * 7:
            counts[days // 7] += 1
    return expired, [ForecastWeek(today + dt.timedelta(days=7 * w), counts[w]) for w in range(weeks)]
