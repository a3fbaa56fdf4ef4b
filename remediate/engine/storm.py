"""The storm guard: a rolling budget of new remediations per hour, for every trigger.

An alert storm, or one runbook call naming a whole resource group, could otherwise start as many remediations
as the queue holds. Each request that would start a remediation asks `admit`: the budget is the smaller of
`RDPR_STORM_MAX_PER_HOUR` and `RDPR_STORM_MAX_PERCENT` of the fleet in scope (as the last sweep counted it).
Past it the request is not dropped: it is recorded as `held`, with the reason and the time the budget frees,
and its queue message stays invisible until then, when it asks again. An operator may release it sooner.

The budget is one row (`<p>control`, partition `storm`) holding the start times of the last hour, replaced
ETag-conditionally, so concurrent intakes on many instances never admit more than the budget between them.
"""

from __future__ import annotations

import datetime as dt
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

    def admit(self, *, force: bool = False) -> Hold | None:
        """Count one new remediation, or say why and until when it must wait. `force`: an operator's release,
        counted but never refused."""
        for _ in range(30):
            now = self._clock()
            starts, etag = self._read(now)
            limit, source = self.limit()
            if len(starts) >= limit and not force:
                until = min(starts) + WINDOW
                return Hold(
                    f"held by the storm guard: {len(starts)} remediations started in the last hour ({source}); "
                    f"released automatically at {until.isoformat(timespec='seconds')} or by an operator",
                    until,
                )
            if self._write([*starts, now][-1000:], etag):
                return None
        raise TransientError("the storm guard's budget row is contended; try again")

    def started_last_hour(self) -> int:
        return len(self._read(self._clock())[0])

    def _read(self, now: dt.datetime) -> tuple[list[dt.datetime], str | None]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            with _storage_errors("read the storm budget"):
                row = self.table.get_entity(PARTITION, ROW)
        except ResourceNotFoundError:
            return [], None
        starts = [dt.datetime.fromtimestamp(s, dt.UTC) for s in json.loads(row.get("Starts") or "[]")]
        return sorted(s for s in starts if s > now - WINDOW), row.metadata["etag"]

    def _write(self, starts: list[dt.datetime], etag: str | None) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        # Epoch seconds keep the row small: 1,000 starts are about 11 KB, far below a property's 64 KB.
        entity: dict[str, Any] = {
            "PartitionKey": PARTITION,
            "RowKey": ROW,
            "Starts": json.dumps([round(s.timestamp(), 3) for s in starts]),
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


def fleet_in_scope(settings: Settings) -> int | None:
    """The VMs in scope as the last sweep counted them (None before the first sweep): the share's base."""
    from remediate.fleet import FleetStore

    try:
        last = next(FleetStore.from_settings(settings).recent_sweeps(limit=1), None)
    except Exception:  # no inventory yet (a fresh deployment, the table not created): the count alone applies
        log.info("no fleet inventory to size the storm budget by", exc_info=True)
        return None
    return last.eligible if last is not None else None
