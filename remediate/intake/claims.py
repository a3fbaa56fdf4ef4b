"""A claimed dedup key is given back unless its request really was queued or absorbed.

Intake claims a key first (so a retried delivery is answered as a duplicate), then admits the request to the
VM's pending slot, then queues it. A failure anywhere between the claim and a successful queueing (a ledger that
answers 503 to `admit`, a queue that is down) would otherwise leave the key claimed with nothing behind it: the
sender's retry would be told "already accepted" and the alert would be lost for good.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


@contextmanager
def given_back_on_failure(unclaim: Callable[[str], None], dedup_key: str) -> Iterator[None]:
    """Run the block; if it raises, release `dedup_key` (best effort) and re-raise the original error."""
    try:
        yield
    except BaseException:
        try:
            unclaim(dedup_key)
        except Exception:  # the ledger may be what failed; the reconciler takes over a claim left unfinished
            log.warning("could not give a dedup key back", exc_info=True, extra={"dedup_key": dedup_key[:200]})
        raise
