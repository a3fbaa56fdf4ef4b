"""The crash-consistency rig as a fixture: `rig(fleet, **setting_overrides)` builds one per call."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sim.azurite import Azurite
from sim.fleet import Fleet
from tests.crash.proxy import TcpProxy
from tests.crash.rig import Rig
from tests.fixtures.emulator import EmulatorFactory

RigFactory = Callable[..., Rig]


@pytest.fixture
def rig(emulator_factory: EmulatorFactory, azurite: Azurite) -> Iterator[RigFactory]:
    workdir = Path(tempfile.mkdtemp(prefix="crash-"))
    built: list[Rig] = []

    def build(fleet: Fleet, **overrides: str) -> Rig:
        emulator = emulator_factory(fleet)
        made = Rig(emulator, azurite, TcpProxy(azurite.table_port), workdir, overrides)
        made.create()
        built.append(made)
        return made

    yield build
    for made in built:
        made.stop()
    shutil.rmtree(workdir, ignore_errors=True)
