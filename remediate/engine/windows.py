"""Change windows for reboots: which window a VM has, and what a reboot outside it says.

A VM's window comes from its tag (`RDPR_WINDOW_TAG`, default `rdp-remediate-window`) or, without one, from
`RDPR_REBOOT_WINDOW` (empty: any time; validated when the settings are read). The format and the time math,
daylight-saving changes included, are in `remediate.changewindow`. Only the reboot waits for the window: a repair
that needs no reboot runs whenever it is asked for. A reboot also waits when less of the window is left than
`RDPR_WINDOW_MARGIN_SECONDS` (the time a restart may take to come back): it would run past the window's end.
"""

from __future__ import annotations

import datetime as dt

from remediate.changewindow import EXAMPLE, Window, parse
from remediate.model import TransientError
from remediate.settings import Settings

__all__ = ["EXAMPLE", "OutsideWindow", "Window", "parse", "reboot_window", "wait_reason"]


class OutsideWindow(TransientError):
    """The reboot must wait for the VM's change window: come back when it opens (not a failure)."""

    def __init__(self, reason: str, opens_at: dt.datetime) -> None:
        super().__init__(reason)
        self.opens_at = opens_at


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
        window = parse(text)
    except ValueError as exc:
        return None, f"malformed change window ({source}): {exc}; nothing was changed"
    margin = settings.window_margin_seconds
    if window.nominal_seconds < margin:
        return None, (
            f"change window too short ({source}): {window.nominal_seconds // 60} min, but a reboot needs "
            f"RDPR_WINDOW_MARGIN_SECONDS={margin:g} s of it; nothing was changed"
        )
    return window, None


def reboot_wait(window: Window, now: dt.datetime, margin_seconds: float) -> OutsideWindow | None:
    """None when a reboot may start now: the window is open with at least `margin_seconds` left (the time a
    restart may take to come back); otherwise the wait, saying until when and why."""
    try:
        opens_at = window.opens_after(now, margin_seconds)
    except ValueError as exc:  # cannot happen for a window at least the margin long; asked again in a day
        opens_at = now + dt.timedelta(days=1)
        return OutsideWindow(f"{wait_reason(window, opens_at)} ({exc})", opens_at)
    if opens_at is None:
        return None
    left = window.left_at(now)
    reason = wait_reason(window, opens_at)
    if left is not None:  # open, but the restart could run past its end
        reason += (
            f" (only {left / 60:.0f} min of the current window are left; a reboot needs "
            f"RDPR_WINDOW_MARGIN_SECONDS={margin_seconds:g} s)"
        )
    return OutsideWindow(reason, opens_at)


def wait_reason(window: Window, opens_at: dt.datetime) -> str:
    return (
        f"waiting for its change window ({window.text}): the reboot waits until "
        f"{opens_at.isoformat(timespec='minutes')}"
    )
