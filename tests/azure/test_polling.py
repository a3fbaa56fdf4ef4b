"""The polling cadence: short polls while an operation is young, then backing off; deployed as the defaults."""

from __future__ import annotations

import pytest

from remediate.azure.polling import Cadence
from remediate.settings import SPECS, Settings
from tests.infra.bicep import get, load

POLL_SETTINGS = ("RDPR_POLL_INTERVAL_SECONDS", "RDPR_POLL_FAST_SECONDS", "RDPR_POLL_MAX_INTERVAL_SECONDS")


def test_short_polls_for_the_first_minute_then_backing_off_to_the_longest() -> None:
    cadence = Cadence.from_settings(Settings.from_env({}))
    assert [cadence.delay(t) for t in (0, 30, 60)] == [2.0, 2.0, 2.0]
    later = [cadence.delay(t) for t in (61, 70, 80, 90, 600)]
    assert later == sorted(later) and later[0] > 2.0
    assert later[-1] == 10.0


def test_a_retry_after_would_still_be_honoured_but_no_wait_exceeds_the_longest_without_one() -> None:
    cadence = Cadence(first=0.5, fast_for=0.0, longest=1.0)
    assert max(cadence.delay(t) for t in range(0, 1000, 7)) == pytest.approx(1.0)


def test_the_bicep_deploys_the_documented_defaults() -> None:
    (site,) = load("modules/function.bicep").resources("Microsoft.Web/sites")
    deployed = {e["name"]: e["value"] for e in get(site.body, "properties", "siteConfig", "appSettings")}
    defaults = {spec.env: spec.default for spec in SPECS}
    for name in POLL_SETTINGS:
        assert deployed[name] == defaults[name], name
