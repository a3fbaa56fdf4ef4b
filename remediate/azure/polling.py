"""How often the product asks Azure whether a long-running operation (Run Command, restart) has finished.

Real Compute answers carry no `Retry-After` (azure-sdk-for-python and azure-cli recorded traffic), and without
one azure-core waits 30 s between polls: a 35 s Run Command then costs 60 s. The cadence here polls briefly
while an operation is young (most Run Commands end within a minute), then backs off so a long operation does
not spend the subscription's read quota. A `Retry-After` that Azure does send is still honoured, capped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.core.polling import PollingMethod

    from remediate.settings import Settings

# After the fast window, each wait grows by this fraction of the time spent beyond it, up to the longest.
BACKOFF_SLOPE = 0.25


@dataclass(frozen=True)
class Cadence:
    """`first` seconds between polls for the first `fast_for` seconds, then longer waits, up to `longest`."""

    first: float
    fast_for: float
    longest: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Cadence:
        return cls(settings.poll_interval_seconds, settings.poll_fast_seconds, settings.poll_max_interval_seconds)

    def delay(self, elapsed: float) -> float:
        """Seconds to wait before the next poll, `elapsed` seconds after the operation was accepted."""
        if elapsed <= self.fast_for:
            return self.first
        return max(self.first, min(self.longest, self.first + (elapsed - self.fast_for) * BACKOFF_SLOPE))


def cadence_polling(settings: Settings, **options: Any) -> PollingMethod[Any]:
    """An ARM polling method (Azure-AsyncOperation, Location or status polling) on the product's cadence.

    Pass it as `polling=` to a `begin_*` call, also when resuming from a continuation token.
    """
    from azure.mgmt.core.polling.arm_polling import ARMPolling  # lazy: cold start

    cadence = Cadence.from_settings(settings)
    cap = settings.retry_after_cap_seconds

    class CadencePolling(ARMPolling):
        def initialize(self, *args: Any, **kwargs: Any) -> None:
            self._accepted_at = time.monotonic()
            super().initialize(*args, **kwargs)

        def _extract_delay(self) -> float:
            # The base class answers the Retry-After when there is one, else `_timeout`: the cadence's delay.
            self._timeout = cadence.delay(time.monotonic() - self._accepted_at)
            return float(min(super()._extract_delay(), max(cap, self._timeout)))

    return CadencePolling(cadence.first, **options)
