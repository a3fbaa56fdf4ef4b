"""Change windows for reboots: when a VM may be restarted.

A VM's window comes from its tag (`RDPR_WINDOW_TAG`, default `rdp-remediate-window`) or, without one, from
`RDPR_REBOOT_WINDOW` (empty: any time). The format, days then times then an IANA time zone:

    Sat 02:00-06:00 Europe/Berlin
    Mon-Fri 22:00-04:00 America/New_York      (ends the next morning)
    Sat,Sun 00:00-24:00 UTC
    daily 01:00-03:00 Asia/Tokyo

A window that ends before it starts runs past midnight and belongs to the day it starts. Times are wall-clock
times in the zone, so a window keeps its local hours across daylight-saving changes. Only the reboot waits for
the window: a repair that needs no reboot runs whenever it is asked for.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from remediate.model import TransientError
from remediate.settings import Settings

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EXAMPLE = "Sat 02:00-06:00 Europe/Berlin"
_FORMAT = re.compile(r"^\s*(?P<days>\S+)\s+(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})\s+(?P<zone>\S+)\s*$")


class OutsideWindow(TransientError):
    """The reboot must wait for the VM's change window: come back when it opens (not a failure)."""

    def __init__(self, reason: str, opens_at: dt.datetime) -> None:
        super().__init__(reason)
        self.opens_at = opens_at


@dataclass(frozen=True)
class Window:
    text: str
    days: frozenset[int]  # 0 = Monday
    start: int  # minutes after local midnight
    end: int  # minutes after local midnight, 1440 for 24:00; below start: ends the next day
    zone: ZoneInfo

    def _spans(self, now: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
        """The window's occurrences from yesterday to a week ahead, in UTC."""
        today = now.astimezone(self.zone).date()
        spans = []
        for offset in range(-1, 9):
            day = today + dt.timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            length = (self.end - self.start) % 1440 or 1440
            # Arithmetic on an aware datetime with the same tzinfo is wall-clock arithmetic: local hours hold.
            start = dt.datetime.combine(day, dt.time(), self.zone) + dt.timedelta(minutes=self.start)
            end = start + dt.timedelta(minutes=length)
            spans.append((start.astimezone(dt.UTC), end.astimezone(dt.UTC)))
        return spans

    def opens_after(self, now: dt.datetime) -> dt.datetime | None:
        """None while the window is open at `now`; otherwise when it next opens."""
        spans = self._spans(now)
        if any(start <= now < end for start, end in spans):
            return None
        return min(start for start, _ in spans if start > now)


def parse(text: str) -> Window:
    """A window from its text; ValueError saying what is wrong and showing the format."""
    match = _FORMAT.match(text)
    if match is None:
        raise ValueError(f"expected DAYS HH:MM-HH:MM TIMEZONE, e.g. {EXAMPLE!r}")
    try:
        zone = ZoneInfo(match["zone"])
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {match['zone']!r} (use an IANA name such as Europe/Berlin)") from None
    start, end = _minutes(match["start"]), _minutes(match["end"])
    if start >= 1440 or start == end:
        raise ValueError(f"the window {match['start']}-{match['end']} is empty or starts at 24:00 or later")
    return Window(text.strip(), _days(match["days"]), start, end, zone)


def _minutes(text: str) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if hours > 24 or minutes > 59 or (hours == 24 and minutes):
        raise ValueError(f"{text} is not a time of day (00:00 to 24:00)")
    return hours * 60 + minutes


def _days(text: str) -> frozenset[int]:
    lowered = text.lower()
    if lowered in ("daily", "*"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in lowered.split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"unknown day {part!r}: use Mon..Sun, ranges like Mon-Fri, lists like Sat,Sun, or daily")
        a, b = DAYS.index(first), DAYS.index(last or first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(b + 1)])
    return frozenset(days)


def reboot_window(settings: Settings, tags: dict[str, str]) -> tuple[Window | None, str | None]:
    """The VM's window (None: any time) or the reason it cannot be read; a malformed window is never guessed."""
    lowered = {name.lower(): value for name, value in tags.items()}
    tag = settings.window_tag.lower()
    if tag in lowered:
        source, text = f"tag {settings.window_tag}={lowered[tag]!r}", lowered[tag]
    elif settings.reboot_window:
        source, text = f"RDPR_REBOOT_WINDOW={settings.reboot_window!r}", settings.reboot_window
    else:
        return None, None
    try:
        return parse(text), None
    except ValueError as exc:
        return None, f"malformed change window ({source}): {exc}; nothing was changed"


def wait_reason(window: Window, opens_at: dt.datetime) -> str:
    return (
        f"waiting for its change window ({window.text}): the reboot waits until "
        f"{opens_at.isoformat(timespec='minutes')}"
    )
