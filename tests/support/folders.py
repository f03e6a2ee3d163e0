"""A committed state to damage: vm1 (s1 <- s2 <- s3, current s3) in a
synthetic legacy folder of libvirt's shape, consolidated once; the `env`
fixture (registered in tests/conftest.py)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import samples

from support import cli


@dataclasses.dataclass
class Env:
    tmp: Path
    libvirt: Path      # snapshot root, holds vm1/
    state: Path
    config: Path       # an empty TOML file: defaults only, whatever the host has in /etc
    good: bytes = b""  # the committed consolidated file of vm1

    @property
    def folder(self) -> Path:
        return self.libvirt / "vm1"

    @property
    def store_file(self) -> Path:
        return self.state / "snapshots" / "vm1.xml"

    def argv(self, *args: str, state: Path | None = None) -> list[str]:
        return ["--config", str(self.config), "--libvirt-dir", str(self.libvirt),
                "--state-dir", str(state or self.state), *args]

    def assert_store_unchanged(self) -> None:
        assert self.store_file.read_bytes() == self.good, \
            f"{self.store_file} changed after a refused run (DESIGN §3: the old file stays untouched)"
        leftovers = [p.name for p in self.store_file.parent.iterdir() if p.name != "vm1.xml"]
        assert not leftovers, f"temp files left in the store: {leftovers}"


@pytest.fixture
def env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Env:
    config = tmp_path / "empty.toml"
    config.write_text("")
    made = Env(tmp_path, tmp_path / "libvirt", tmp_path / "state", config)
    samples.write_folder(made.folder, [("s1", None), ("s2", "s1"), ("s3", "s2")], current="s3")
    result = cli.in_process(capsys, made.argv("consolidate", "vm1"))
    assert result.code == 0 and result.err == "", result
    made.good = made.store_file.read_bytes()
    assert b"current=\"s3\"" in made.good
    return made
