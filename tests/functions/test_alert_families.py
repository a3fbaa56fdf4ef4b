"""Every documented alert family through the real `alerts` function, Azurite's dedup and the queue: the
handler's answer matches the intake's decision, and exactly the accepted VMs are queued."""

from __future__ import annotations

import pytest

from remediate.intake.service import AlertIntake, RecordingSink
from tests.functions.conftest import Functions, body
from tests.intake.support import ALERT_FILES, PAYLOADS


@pytest.mark.parametrize("name", ALERT_FILES)
def test_each_alert_family_through_the_handler(functions: Functions, name: str) -> None:
    raw = (PAYLOADS / name).read_bytes()
    expected = AlertIntake(
        RecordingSink(deduplicate=True), functions.app.settings, functions.app.resolve_computers
    ).handle(raw)
    first = functions.post("alerts", raw)
    assert first.status_code == expected.status, body(first)
    queued = len(body(first).get("requestIds", []))
    assert functions.queued() == queued == len(expected.body.get("requestIds", []))
    again = functions.post("alerts", raw)  # the action group's retry
    assert body(again).get("requestIds", []) == [] and functions.queued() == queued
