"""Fixtures giving each test its own real libvirt (embedded qemu driver) root."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest

# Make `import lab` work whether or not tests/ becomes a package later.
sys.path.insert(0, str(Path(__file__).parent))

from lab import Lab  # noqa: E402


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path / "lab")


@pytest.fixture
def lab_factory(tmp_path: Path) -> Callable[[str], Lab]:
    """Several independent roots in one test, e.g. two "hosts" for transfer."""

    def make(name: str) -> Lab:
        return Lab(tmp_path / f"lab-{name}")

    return make
