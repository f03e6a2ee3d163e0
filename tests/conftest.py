"""Fixtures giving each test its own real libvirt (embedded qemu driver) root."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Make `import lab` work whether or not tests/ becomes a package later.
sys.path.insert(0, str(Path(__file__).parent))

from lab import Lab  # noqa: E402
from support.folders import env  # noqa: E402,F401  (a fixture: a committed vm1 to damage)
from support.postgres import fleet_db, postgres  # noqa: E402,F401  (a real PostgreSQL, one database a test)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    made = Lab(tmp_path / "lab")
    yield made
    made.stop_all()  # a started domain outlives the worker that started it


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[Callable[[str], Lab]]:
    """Several independent roots in one test, e.g. two "hosts" for transfer."""
    made: list[Lab] = []

    def make(name: str) -> Lab:
        made.append(Lab(tmp_path / f"lab-{name}"))
        return made[-1]

    yield make
    for one in made:
        one.stop_all()
