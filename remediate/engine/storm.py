"""The storm guard: a rolling budget of new remediations per hour, for every trigger.

An alert storm, or one runbook call naming a whole resource group, could otherwise start as many remediations
as the queue holds. A remediation is new when it is about to make its first change to its VM (the first repair
script; every restart follows one): that is when the workflow asks `admit`. Requests for VMs that turn out
healthy, whose cause no repair fixes, that are in cooldown, declined or skipped, never change anything and never
spend the budget, so a burst of them cannot hold back real repairs. The budget is the smaller of
`RDPR_STORM_MAX_PER_HOUR` and `RDPR_STORM_MAX_PERCENT` of the fleet in scope (as the last sweep counted it).
Past it the request is not dropped: it stops before the change (`Held`), its VM untouched and unlocked, and is
recorded as `held` with the reason and the time the budget frees; its queue message stays invisible until then,
when it asks again. An operator may release it sooner: then it is counted, never refused.

The budget is one row (`<p>control`, partition `storm`) holding the last hour's starts, each with its request id,
replaced ETag-conditionally: of two workers asking for the last unit, exactly one write succeeds and the other
reads the row again and is held. A request is counted once however often it is delivered or resumed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from remediate.ledger import _storage_errors, utcnow
from remediate.model import TransientError
from remediate.settings import Settings

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
WINDOW = dt.timedelta(hours=1)
PARTITION, ROW = "storm", "budget"


class Held(TransientError):
    """The request would start a new remediation past the budget: nothing was changed; it comes back later."""

    def __init__(self, hold: Hold) -> None:
        super().__init__(hold.reason)
        self.hold = hold


@dataclass(frozen=True)
class Hold:
    """Why a request waits, and until when the budget has no room."""

    reason: str
    until: dt.datetime

    def delay_seconds(self, now: dt.datetime) -> int:
        # At least one second; the queue allows at most seven days of invisibility, the window is one hour.
        return max(1, math.ceil((self.until - now).total_seconds()))


class StormGuard:
    def __init__(
        self,
        table: TableClient,
        settings: Settings,
        fleet_size: Callable[[], int | None] = lambda: None,
        clock: Clock = utcnow,
    ) -> None:
        self.table = table
        self.settings = settings
        self._fleet_size = fleet_size
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> StormGuard:
        """The guard every queue of requests gets, with the fleet in scope as the last sweep counted it."""
        from remediate.engine.slots import Slots

        slots = Slots.from_settings(settings)
        if settings.emulator:
            slots.create_table()  # in Azure the Bicep creates it
        return cls(slots.table, settings, lambda: fleet_in_scope(settings))

    def limit(self) -> tuple[int, str]:
        """The budget per hour and the setting that set it."""
        by_count = self.settings.storm_max_per_hour
        fleet = self._fleet_size()
        if fleet:
            by_share = max(1, math.floor(fleet * self.settings.storm_max_percent / 100))
            if by_share < by_count:
                return by_share, (f"RDPR_STORM_MAX_PERCENT={self.settings.storm_max_percent:g} of {fleet} VMs in scope")
        return by_count, f"RDPR_STORM_MAX_PER_HOUR={by_count}"

    def admit(self, request_id: str, *, force: bool = False) -> Hold | None:
        """Count `request_id` as a new remediation, or say why and until when it must wait. A request already
        counted within the hour is not counted again. `force`: an operator's decision, counted but never
        refused."""
        for _ in range(30):
            now = self._clock()
            starts, etag = self._read(now)
            if any(counted == _tag(request_id) for _, counted in starts):
                return None
            hold = None if force else self._hold(starts)
            if hold is not None:
                return hold
            if self._write([*starts, (now, _tag(request_id))][-1000:], etag):
                return None
        raise TransientError("the storm guard's budget row is contended; try again")

    def check(self) -> Hold | None:
        """The hold a new remediation would meet now, counting nothing (a held request asks before it runs)."""
        return self._hold(self._read(self._clock())[0])

    def _hold(self, starts: list[tuple[dt.datetime, str]]) -> Hold | None:
        limit, source = self.limit()
        if len(starts) < limit:
            return None
        until = min(at for at, _ in starts) + WINDOW
        return Hold(
            f"held by the storm guard: {len(starts)} remediations started in the last hour ({source}); "
            f"released automatically at {until.isoformat(timespec='seconds')} or by an operator",
            until,
        )

    def started_last_hour(self) -> int:
        return len(self._read(self._clock())[0])

    def _read(self, now: dt.datetime) -> tuple[list[tuple[dt.datetime, str]], str | None]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            with _storage_errors("read the storm budget"):
                row = self.table.get_entity(PARTITION, ROW)
        except ResourceNotFoundError:
            return [], None
        times = json.loads(row.get("Starts") or "[]")
        tags = json.loads(row.get("Ids") or "[]")
        tags += [""] * (len(times) - len(tags))  # rows written before requests were kept had times only
        starts = [(dt.datetime.fromtimestamp(float(t), dt.UTC), str(tag)) for t, tag in zip(times, tags, strict=False)]
        return sorted(s for s in starts if s[0] > now - WINDOW), row.metadata["etag"]

    def _write(self, starts: list[tuple[dt.datetime, str]], etag: str | None) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        # Two properties, each far below Table storage's 64 KB a property for 1,000 starts: the epoch seconds
        # (about 15,000 characters) and a 16-character tag of each request id (about 19,000).
        entity: dict[str, Any] = {
            "PartitionKey": PARTITION,
            "RowKey": ROW,
            "Starts": json.dumps([round(at.timestamp(), 3) for at, _ in starts]),
            "Ids": json.dumps([tag for _, tag in starts]),
        }
        try:
            with _storage_errors("update the storm budget"):
                if etag is None:
                    self.table.create_entity(entity)
                else:
                    self.table.update_entity(
                        entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                    )
        except (ResourceExistsError, ResourceModifiedError):
            return False
        return True


def _tag(request_id: str) -> str:
    """A short fixed-length stand-in for a request id (64 bits of its SHA-256): the row stays small."""
    return hashlib.sha256(request_id.encode()).hexdigest()[:16]


def fleet_in_scope(settings: Settings) -> int | None:
    """The VMs in scope as the last sweep counted them (None before the first sweep): the share's base."""
    from remediate.fleet import FleetStore

    try:
        last = next(FleetStore.from_settings(settings).recent_sweeps(limit=1), None)
    except Exception:  # no inventory yet (a fresh deployment, the table not created): the count alone applies
        log.info("no fleet inventory to size the storm budget by", exc_info=True)
        return None
    return last.eligible if last is not None else None
