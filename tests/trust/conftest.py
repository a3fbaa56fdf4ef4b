"""The engine fixture (emulator, Azurite, real clients) and the stand-in attacker for trust-boundary tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.engine.conftest import Engine, engine
from tests.trust.attacker import Attacker

__all__ = ["Engine", "attacker", "engine"]


@pytest.fixture
def attacker() -> Iterator[Attacker]:
    with Attacker() as server:
        yield server
