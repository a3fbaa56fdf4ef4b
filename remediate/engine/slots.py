"""The fleet-wide bound on active remediations: N lease rows in the ledger's `<p>control` table.

A remediation runs only while it holds a slot: one of `RDPR_MAX_ACTIVE` rows in partition `slots-global`
(and, when `RDPR_MAX_ACTIVE_PER_SUBSCRIPTION` is set, one of that many in `slots-<subscription>`). A slot is
taken with an ETag-conditional write (create when the row does not exist yet, replace when it is free or its
lease has expired), so of two instances racing for the same row exactly one wins, on every instance and every
CLI run alike. A lease lasts `RDPR_LOCK_MINUTES`, which the settings keep above the workflow deadline: a worker
that dies holding a slot frees it by expiry, never by anyone's guess that it is dead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from remediate.ledger import _storage_errors, table_service, utcnow
from remediate.model import VmId
from remediate.settings import Settings

if TYPE_CHECKING:
    from azure.data.tables import TableClient, TableServiceClient

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
GLOBAL = "slots-global"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def control_table(service: TableServiceClient, prefix: str) -> TableClient:
    """The table of fleet-wide controls: slots here, the storm guard's budget beside them."""
    return service.get_table_client(f"{prefix}control")


@dataclass(frozen=True)
class Lease:
    """The slots one request holds: a row key in each partition it needed."""

    owner: str
    rows: tuple[tuple[str, str], ...]  # (partition, row key)


@dataclass(frozen=True)
class SlotView:
    partition: str
    row: str
    owner: str | None
    expires: dt.datetime | None


class Slots:
    def __init__(self, table: TableClient, settings: Settings, clock: Clock = utcnow) -> None:
        self.table = table
        self.settings = settings
        self._clock = clock
        self._random = random.Random()  # noqa: S311 - spreads contention over rows; nothing secret

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = utcnow) -> Slots:
        return cls(control_table(table_service(settings), settings.table_prefix), settings, clock)

    def create_table(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self.table.create_table()

    def partitions(self, vm: VmId) -> list[tuple[str, int]]:
        wanted = [(GLOBAL, self.settings.max_active)]
        if self.settings.max_active_per_subscription:
            wanted.append((f"slots-{vm.subscription}", self.settings.max_active_per_subscription))
        return wanted

    def try_acquire(self, vm: VmId, owner: str) -> Lease | None:
        """A slot in every partition `vm` needs, or None (and nothing held) when one of them is full.

        Re-entrant: a request that already holds a slot (a redelivery after its worker died) gets it back.
        """
        taken: list[tuple[str, str]] = []
        for partition, size in self.partitions(vm):
            row = self._take_one(partition, size, owner)
            if row is None:
                self.release(Lease(owner, tuple(taken)))
                return None
            taken.append((partition, row))
        return Lease(owner, tuple(taken))

    def release(self, lease: Lease) -> None:
        """Free the slots if they are still ours; one taken over after expiry is the new owner's."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        for partition, row in lease.rows:
            try:
                with _storage_errors("read a slot"):
                    entity = self.table.get_entity(partition, row)
                if entity.get("Owner") != lease.owner:
                    continue
                with _storage_errors("free a slot"):
                    self.table.update_entity(
                        _slot(partition, row, "", _EPOCH),
                        mode=UpdateMode.REPLACE,
                        etag=entity.metadata["etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
            except (ResourceNotFoundError, ResourceModifiedError):
                continue  # gone, or taken over after expiry: not ours to free

    def active(self, partition: str = GLOBAL) -> list[SlotView]:
        """The slots held now (unexpired leases), for status and tests."""
        now = self._clock()
        with _storage_errors("read the slots"):
            rows = list(self.table.query_entities("PartitionKey eq @pk", parameters={"pk": partition}))
        views = [_view(row) for row in rows]
        return [v for v in views if v.owner and v.expires and v.expires > now]

    def _take_one(self, partition: str, size: int, owner: str) -> str | None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        now = self._clock()
        expires = now + dt.timedelta(minutes=self.settings.lock_minutes)
        with _storage_errors("read the slots"):
            found = self.table.query_entities("PartitionKey eq @pk", parameters={"pk": partition})
            rows = {row["RowKey"]: row for row in found}
        mine = [str(key) for key, row in rows.items() if row.get("Owner") == owner and int(key) < size]
        keys = [f"{index:04d}" for index in range(size)]
        # Start at a random slot: racing instances then mostly try different rows instead of all the first one.
        start = self._random.randrange(size)
        for key in mine + keys[start:] + keys[:start]:
            row = rows.get(key)
            try:
                with _storage_errors("take a slot"):
                    if row is None:
                        self.table.create_entity(_slot(partition, key, owner, expires))
                    elif row.get("Owner") in ("", owner) or _expires(row) <= now:
                        self.table.update_entity(
                            _slot(partition, key, owner, expires),
                            mode=UpdateMode.REPLACE,
                            etag=row.metadata["etag"],
                            match_condition=MatchConditions.IfNotModified,
                        )
                    else:
                        continue
            except (ResourceExistsError, ResourceModifiedError):
                continue  # another instance took it between our read and our write
            if row is not None and row.get("Owner") not in ("", owner):
                log.warning("slot taken over after its lease expired", extra={"slot": key, "previous": row["Owner"]})
            return key
        return None


def _slot(partition: str, row: str, owner: str, expires: dt.datetime) -> dict[str, Any]:
    return {"PartitionKey": partition, "RowKey": row, "Owner": owner, "Expires": expires}


def _expires(row: Any) -> dt.datetime:
    value = row.get("Expires")
    return value if isinstance(value, dt.datetime) else _EPOCH


def _view(row: Any) -> SlotView:
    expires = _expires(row)
    return SlotView(row["PartitionKey"], row["RowKey"], row.get("Owner") or None, expires if expires > _EPOCH else None)
