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


# --- daylight-saving transitions, on the real dates (EU: last Sunday of March / October at 01:00 UTC) -----------


def _span_on(window_text: str, local_day: str) -> tuple[dt.datetime, dt.datetime] | None:
    window = parse(window_text)
    day = dt.date.fromisoformat(local_day)
    for span in window.spans(dt.datetime.combine(day, dt.time(12), UTC)):
        if span.start.astimezone(window.zone).date() == day or span.end.astimezone(window.zone).date() == day:
            return span.start, span.end
    return None


@pytest.mark.parametrize("spring_day", ["2026-03-29", "2027-03-28"])
def test_on_the_spring_forward_day_the_skipped_hour_is_not_part_of_the_window(spring_day: str) -> None:
    # 02:00-03:00 does not exist in Berlin that day: the window is 03:00-04:00 CEST, one hour, not two or zero.
    span = _span_on("Sun 02:00-04:00 Europe/Berlin", spring_day)
    assert span == (at(f"{spring_day}T01:00:00+00:00"), at(f"{spring_day}T02:00:00+00:00"))
    # A start inside the gap opens when the clock jumps (03:00 CEST), not an hour later at 03:30 CEST.
    span = _span_on("Sun 02:30-04:00 Europe/Berlin", spring_day)
    assert span == (at(f"{spring_day}T01:00:00+00:00"), at(f"{spring_day}T02:00:00+00:00"))
    # A window wholly inside the gap does not occur that day: the next one is the Sunday after, two hours long.
    window = parse("Sun 02:00-03:00 Europe/Berlin")
    assert _span_on("Sun 02:00-03:00 Europe/Berlin", spring_day) is None
    day = dt.date.fromisoformat(spring_day)
    next_sunday = day + dt.timedelta(days=7)
    opens = window.opens_after(at(f"{spring_day}T00:30:00+00:00"))
    assert opens == at(f"{next_sunday}T00:00:00+00:00")  # 02:00 CEST


@pytest.mark.parametrize("fall_day", ["2026-10-25", "2027-10-31"])
def test_on_the_fall_back_day_a_repeated_hour_counts_once(fall_day: str) -> None:
    # 02:00-03:00 happens twice in Berlin: the window is its first pass (CEST), thirty minutes, not ninety.
    span = _span_on("Sun 02:00-02:30 Europe/Berlin", fall_day)
    assert span == (at(f"{fall_day}T00:00:00+00:00"), at(f"{fall_day}T00:30:00+00:00"))
    # A window across the change keeps its wall-clock ends: 01:00 CEST to 04:00 CET is four real hours.
    span = _span_on("Sun 01:00-04:00 Europe/Berlin", fall_day)
    assert span == (at(f"{fall_day}T23:00:00+00:00") - dt.timedelta(days=1), at(f"{fall_day}T03:00:00+00:00"))


def test_new_york_spring_forward_2027_does_not_crash_and_opens_at_the_jump() -> None:
    # 2027-03-14: clocks go from 02:00 EST to 03:00 EDT (07:00 UTC).
    window = parse("Sun 02:15-03:15 America/New_York")
    assert window.opens_after(at("2027-03-14T05:00:00+00:00")) == at("2027-03-14T07:00:00+00:00")
    assert window.opens_after(at("2027-03-14T07:10:00+00:00")) is None  # 03:10 EDT: open
    assert window.opens_after(at("2027-03-14T07:20:00+00:00")) == at("2027-03-21T06:15:00+00:00")


# --- time left in the window ----------------------------------------------------------------------------------


def test_a_reboot_waits_for_the_next_window_when_too_little_of_this_one_is_left() -> None:
    from remediate.engine.windows import reboot_wait

    window = parse("daily 02:00-04:00 UTC")
    assert reboot_wait(window, at("2026-11-29T02:30:00+00:00"), 600) is None  # 90 min left
    assert reboot_wait(window, at("2026-11-29T03:50:00+00:00"), 0) is None  # no margin: any time left will do
    wait = reboot_wait(window, at("2026-11-29T03:55:00+00:00"), 600)  # 5 min left, 10 needed
    assert wait is not None and wait.opens_at == at("2026-11-30T02:00:00+00:00")
    assert "the reboot waits until 2026-11-30T02:00+00:00" in wait.reason
    assert "only 5 min of the current window are left" in wait.reason
    assert "RDPR_WINDOW_MARGIN_SECONDS=600" in wait.reason
    closed = reboot_wait(window, at("2026-11-29T05:00:00+00:00"), 600)
    assert closed is not None and "left" not in closed.reason


def test_a_window_shorter_than_the_margin_is_refused_not_waited_for_forever() -> None:
    settings = Settings.from_env({"RDPR_WINDOW_MARGIN_SECONDS": "3600"})
    window, refusal = reboot_window(settings, {"rdp-remediate-window": "Sat 02:00-02:30 UTC"})
    assert window is None and refusal is not None
    assert "change window too short (tag rdp-remediate-window='Sat 02:00-02:30 UTC')" in refusal
    assert "RDPR_WINDOW_MARGIN_SECONDS=3600" in refusal


# --- the default window is checked when the settings are read -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("weekends", "RDPR_REBOOT_WINDOW: expected DAYS HH:MM-HH:MM TIMEZONE, e.g. 'Sat 02:00-06:00 Europe/Berlin'"),
        ("Sat 02:00-06:00 Mars/Olympus", "RDPR_REBOOT_WINDOW: unknown time zone 'Mars/Olympus'"),
        ("Sun 02:00-02:05 UTC", "RDPR_REBOOT_WINDOW='Sun 02:00-02:05 UTC' is shorter than RDPR_WINDOW_MARGIN_SECONDS"),
    ],
)
def test_a_malformed_default_window_stops_the_app_at_start(text: str, says: str) -> None:
    from remediate.model import ConfigurationError

    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({"RDPR_REBOOT_WINDOW": text})
    assert says in str(raised.value)
    assert Settings.from_env({"RDPR_REBOOT_WINDOW": " Sat 02:00-06:00 Europe/Berlin "}).reboot_window == (
        "Sat 02:00-06:00 Europe/Berlin"
    )


def test_occurrences_that_touch_are_one_window_for_the_time_left() -> None:
    from remediate.engine.windows import reboot_wait

    assert reboot_wait(parse("daily 00:00-24:00 UTC"), at("2026-11-29T23:58:00+00:00"), 600) is None
    assert reboot_wait(parse("Sat,Sun 22:00-24:00 UTC"), at("2026-11-28T23:58:00+00:00"), 600) is not None
