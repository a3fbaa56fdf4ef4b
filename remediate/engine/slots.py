"""The fleet-wide bound on active remediations: N lease rows in the ledger's `<p>control` table.

A remediation runs only while it holds a slot: one of `RDPR_MAX_ACTIVE` rows in partition `slots-global`
(and, when `RDPR_MAX_ACTIVE_PER_SUBSCRIPTION` is set, one of that many in `slots-<subscription>`). A slot is
taken with an ETag-conditional write (create when the row does not exist yet, replace when it is free or its
lease has expired), so of two instances racing for the same row exactly one wins, on every instance and every
CLI run alike. A lease lasts `RDPR_LOCK_MINUTES`, which the settings keep above the workflow deadline: a worker
that dies holding a slot frees it by expiry, never by anyone's guess that it is dead.

The holder is one delivery, not one request: each acquisition writes a fresh random token into the slot, and
only a write that names that token (and the row's current ETag) frees or renews it. A second delivery of the
same request (a duplicate message, or a redelivery while the first still runs) is another holder: it takes
another slot or waits, and when it stops it frees its own slot, never the one the first delivery runs under.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import random
import secrets
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
    """The slots one delivery holds: a row key in each partition it needed, and the token that proves it."""

    owner: str  # the request id, shown in status
    rows: tuple[tuple[str, str], ...]  # (partition, row key)
    token: str = ""  # this delivery's own: written into each slot it took


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
        """A slot in every partition `vm` needs, under a token of this call's own, or None (and nothing held)
        when one of them is full.

        Not re-entrant: a slot another delivery of the same request holds is that delivery's until it frees it
        or its lease expires (a dead delivery's slot comes back by expiry, as any other's).
        """
        token = secrets.token_hex(16)
        taken: list[tuple[str, str]] = []
        for partition, size in self.partitions(vm):
            row = self._take_one(partition, size, owner, token)
            if row is None:
                self.release(Lease(owner, tuple(taken), token))
                return None
            taken.append((partition, row))
        return Lease(owner, tuple(taken), token)

    def release(self, lease: Lease) -> None:
        """Free the slots this lease's token still holds; a slot with another token is another holder's."""
        for partition, row in lease.rows:
            self._rewrite_if_held(lease, partition, row, "", _EPOCH, "free a slot")

    def renew(self, lease: Lease) -> bool:
        """Extend the lease by `RDPR_LOCK_MINUTES` from now; False when a slot is no longer this holder's."""
        expires = self._clock() + dt.timedelta(minutes=self.settings.lock_minutes)
        return all(
            self._rewrite_if_held(lease, partition, row, lease.token, expires, "renew a slot")
            for partition, row in lease.rows
        )

    def _rewrite_if_held(
        self, lease: Lease, partition: str, row: str, token: str, expires: dt.datetime, doing: str
    ) -> bool:
        """Rewrite a slot only if it still carries the lease's token, conditional on the ETag read with it."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        try:
            with _storage_errors("read a slot"):
                entity = self.table.get_entity(partition, row)
            if not lease.token or entity.get("Token") != lease.token:
                return False  # taken over after expiry, or another delivery's: not ours
            owner = lease.owner if token else ""
            with _storage_errors(doing):
                self.table.update_entity(
                    _slot(partition, row, owner, expires, token),
                    mode=UpdateMode.REPLACE,
                    etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceNotFoundError, ResourceModifiedError):
            return False  # gone, or rewritten between our read and our write: not ours any more
        return True

    def active(self, partition: str = GLOBAL) -> list[SlotView]:
        """The slots held now (unexpired leases), for status and tests."""
        now = self._clock()
        with _storage_errors("read the slots"):
            rows = list(self.table.query_entities("PartitionKey eq @pk", parameters={"pk": partition}))
        views = [_view(row) for row in rows]
        return [v for v in views if v.owner and v.expires and v.expires > now]

    def _take_one(self, partition: str, size: int, owner: str, token: str) -> str | None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        now = self._clock()
        expires = now + dt.timedelta(minutes=self.settings.lock_minutes)
        with _storage_errors("read the slots"):
            found = self.table.query_entities("PartitionKey eq @pk", parameters={"pk": partition})
            rows = {row["RowKey"]: row for row in found}
        keys = [f"{index:04d}" for index in range(size)]
        # Start at a random slot: racing instances then mostly try different rows instead of all the first one.
        start = self._random.randrange(size)
        for key in keys[start:] + keys[:start]:
            row = rows.get(key)
            try:
                with _storage_errors("take a slot"):
                    if row is None:
                        self.table.create_entity(_slot(partition, key, owner, expires, token))
                    elif not row.get("Owner") or _expires(row) <= now:
                        self.table.update_entity(
                            _slot(partition, key, owner, expires, token),
                            mode=UpdateMode.REPLACE,
                            etag=row.metadata["etag"],
                            match_condition=MatchConditions.IfNotModified,
                        )
                    else:
                        continue
            except (ResourceExistsError, ResourceModifiedError):
                continue  # another instance took it between our read and our write
            if row is not None and row.get("Owner"):
                log.warning("slot taken over after its lease expired", extra={"slot": key, "previous": row["Owner"]})
            return key
        return None


def _slot(partition: str, row: str, owner: str, expires: dt.datetime, token: str) -> dict[str, Any]:
    return {"PartitionKey": partition, "RowKey": row, "Owner": owner, "Token": token, "Expires": expires}


def _expires(row: Any) -> dt.datetime:
    value = row.get("Expires")
    return value if isinstance(value, dt.datetime) else _EPOCH


def _view(row: Any) -> SlotView:
    expires = _expires(row)
    return SlotView(row["PartitionKey"], row["RowKey"], row.get("Owner") or None, expires if expires > _EPOCH else None)
