"""Change-window text and its time math: pure (no settings, no I/O), so Settings can validate the default window.

The format, days then times then an IANA time zone:

    Sat 02:00-06:00 Europe/Berlin
    Mon-Fri 22:00-04:00 America/New_York      (ends the next morning)
    Sat,Sun 00:00-24:00 UTC
    daily 01:00-03:00 Asia/Tokyo

A window that ends before it starts runs past midnight and belongs to the day it starts. Times are wall-clock
times in the zone. A window is the stretch of real time during which the zone's clock reads from its start to its
end, once:

* on the spring-forward day a wall time inside the skipped hour never occurs: a start or end that falls there
  is the moment the clock jumps (`Sun 02:00-04:00 Europe/Berlin` on 2026-03-29 is 03:00-04:00 CEST, one hour;
  a window wholly inside the gap does not occur that day);
* on the fall-back day a repeated wall time is its first occurrence (fold 0, PEP 495), so a window is never
  counted twice (`Sun 02:00-02:30 Europe/Berlin` on 2026-10-25 is 02:00-02:30 CEST, thirty minutes).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EXAMPLE = "Sat 02:00-06:00 Europe/Berlin"
FORMAT = "DAYS HH:MM-HH:MM TIMEZONE"
_FORMAT = re.compile(r"^\s*(?P<days>\S+)\s+(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})\s+(?P<zone>\S+)\s*$")
_LONGEST_GAP_MINUTES = 24 * 60  # no zone has skipped more than a day (Samoa, 2011-12-30)


@dataclass(frozen=True)
class Span:
    """One occurrence of a window, in UTC."""

    start: dt.datetime
    end: dt.datetime

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


@dataclass(frozen=True)
class Window:
    text: str
    days: frozenset[int]  # 0 = Monday
    start: int  # minutes after local midnight
    end: int  # minutes after local midnight, 1440 for 24:00; below start: ends the next day
    zone: ZoneInfo

    @property
    def nominal_seconds(self) -> int:
        """The length on a day without a clock change."""
        return ((self.end - self.start) % 1440 or 1440) * 60

    def spans(self, now: dt.datetime) -> list[Span]:
        """The window's occurrences from yesterday to a week ahead, in UTC; one the clock change swallowed
        whole (wholly inside the skipped hour) is left out."""
        today = now.astimezone(self.zone).date()
        found = []
        for offset in range(-1, 9):
            day = today + dt.timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            end_day = day if self.end > self.start else day + dt.timedelta(days=1)
            span = Span(_instant(day, self.start, self.zone), _instant(end_day, self.end, self.zone))
            if span.end > span.start:
                found.append(span)
        return _merged(found)

    def opens_after(self, now: dt.datetime, margin_seconds: float = 0.0) -> dt.datetime | None:
        """None while the window is open at `now` with at least `margin_seconds` of it left; otherwise when the
        next occurrence that is long enough opens. ValueError when none within a week is long enough."""
        spans = self.spans(now)
        if any(s.start <= now < s.end and (s.end - now).total_seconds() >= margin_seconds for s in spans):
            return None
        later = [s.start for s in spans if s.start > now and s.seconds >= margin_seconds]
        if not later:
            raise ValueError(f"no occurrence of {self.text!r} within a week is {margin_seconds:g} s long")
        return min(later)

    def left_at(self, now: dt.datetime) -> float | None:
        """Seconds of the window left at `now`; None when it is closed."""
        left = [(s.end - now).total_seconds() for s in self.spans(now) if s.start <= now < s.end]
        return max(left) if left else None


def _merged(spans: list[Span]) -> list[Span]:
    """Occurrences that touch are one window (`daily 00:00-24:00` is open at 23:55 with more than 5 min left)."""
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: s.start):
        if merged and span.start <= merged[-1].end:
            merged[-1] = Span(merged[-1].start, max(merged[-1].end, span.end))
        else:
            merged.append(span)
    return merged


def _instant(day: dt.date, minutes: int, zone: ZoneInfo) -> dt.datetime:
    """The first moment (UTC) the zone's clock reads `minutes` after midnight of `day`, or, inside a skipped
    stretch, the moment the clock jumps past it."""
    local = dt.datetime.combine(day, dt.time(), zone) + dt.timedelta(minutes=minutes)  # wall-clock arithmetic
    for step in range(_LONGEST_GAP_MINUTES + 1):
        wall = local + dt.timedelta(minutes=step)
        wall = wall.replace(fold=0)  # a repeated time: its first occurrence
        utc = wall.astimezone(dt.UTC)
        # A wall time that does not exist does not come back unchanged from UTC (PEP 495): step past the gap to
        # the first minute that exists, which is where the clock lands when it jumps.
        if utc.astimezone(zone).replace(tzinfo=None) == wall.replace(tzinfo=None):
            return utc
    raise ValueError(f"no time on {day} in {zone.key} reads {minutes // 60:02d}:{minutes % 60:02d}")


def parse(text: str) -> Window:
    """A window from its text; ValueError saying what is wrong and showing the format."""
    match = _FORMAT.match(text)
    if match is None:
        raise ValueError(f"expected {FORMAT}, e.g. {EXAMPLE!r}")
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
