"""Change windows: the documented format, its time zones and daylight saving, and refusals of malformed text."""

from __future__ import annotations

import datetime as dt

import pytest

from remediate.engine.windows import parse, reboot_window
from remediate.settings import Settings

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(UTC)


def test_a_weekly_window_in_its_own_time_zone() -> None:
    window = parse("Sat 02:00-06:00 Europe/Berlin")
    # Saturday 2026-11-28, 03:00 in Berlin (UTC+1): open.
    assert window.opens_after(at("2026-11-28T03:00:00+01:00")) is None
    # Saturday 06:00 Berlin: closed, next Saturday 02:00 Berlin = 01:00 UTC.
    assert window.opens_after(at("2026-11-28T06:00:00+01:00")) == at("2026-12-05T01:00:00+00:00")
    # Friday 23:00 UTC is Saturday 00:00 in Berlin: opens two hours later, 01:00 UTC.
    assert window.opens_after(at("2026-11-27T23:00:00+00:00")) == at("2026-11-28T01:00:00+00:00")


def test_local_hours_hold_across_daylight_saving() -> None:
    window = parse("Sun 02:30-04:00 America/New_York")
    # 2026-03-08 is the spring-forward Sunday in New York; 2026-03-15 is daylight time (UTC-4).
    assert window.opens_after(at("2026-03-09T12:00:00+00:00")) == at("2026-03-15T06:30:00+00:00")
    # In winter (UTC-5) the same local window opens an hour later in UTC.
    assert window.opens_after(at("2026-01-05T12:00:00+00:00")) == at("2026-01-11T07:30:00+00:00")


def test_a_window_past_midnight_belongs_to_the_day_it_starts() -> None:
    window = parse("Mon-Fri 22:00-04:00 UTC")
    assert window.opens_after(at("2026-11-28T02:00:00+00:00")) is None  # Saturday 02:00: Friday's window
    assert window.opens_after(at("2026-11-29T02:00:00+00:00")) == at("2026-11-30T22:00:00+00:00")  # Sunday
    assert parse("daily 00:00-24:00 UTC").opens_after(at("2026-11-29T13:00:00+00:00")) is None
    assert parse("Sat,Sun 00:00-24:00 UTC").opens_after(at("2026-11-30T10:00:00+00:00")) == at(
        "2026-12-05T00:00:00+00:00"
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("Saturday 02:00-06:00 Europe/Berlin", "unknown day"),
        ("Sat 02:00-06:00 Mars/Olympus", "unknown time zone"),
        ("Sat 02:00-06:00", "expected DAYS HH:MM-HH:MM TIMEZONE"),
        ("Sat 25:00-06:00 UTC", "not a time of day"),
        ("Sat 02:00-02:00 UTC", "empty"),
        ("", "expected DAYS"),
    ],
)
def test_malformed_windows_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse(text)


def test_the_tag_wins_over_the_default_and_a_malformed_one_is_a_reason_not_a_guess() -> None:
    settings = Settings.from_env({"RDPR_REBOOT_WINDOW": "daily 01:00-03:00 UTC"})
    window, refusal = reboot_window(settings, {"RDP-Remediate-Window": "Sat 02:00-06:00 Europe/Berlin"})
    assert refusal is None and window is not None and window.text == "Sat 02:00-06:00 Europe/Berlin"
    window, refusal = reboot_window(settings, {})
    assert window is not None and window.text == "daily 01:00-03:00 UTC"
    window, refusal = reboot_window(settings, {"rdp-remediate-window": "weekends"})
    assert window is None and refusal is not None
    assert "malformed change window (tag rdp-remediate-window='weekends')" in refusal
    assert reboot_window(Settings.from_env({}), {}) == (None, None)
