"""consolidate recognises an unchanged folder by the identity of each entry."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import samples

from snapstore import cli, kinds, store


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    samples.write_folder(tmp_path / "snap" / "vm1", [("a", None), ("b", "a")], current="b")
    return tmp_path / "snap", tmp_path / "state"


def consolidate(dirs: tuple[Path, Path], capsys, warnings: list[str] | None = None) -> dict:
    capsys.readouterr()
    assert cli.main(["--config", os.devnull, "--libvirt-dir", str(dirs[0]), "--state-dir", str(dirs[1]),
                     "consolidate", "vm1", "--json"]) == 0
    out, err = capsys.readouterr()
    if warnings is not None:
        warnings.extend(err.splitlines())
    return json.loads(out)["results"][0]


def test_every_kind_of_change_is_seen(dirs, capsys, monkeypatch) -> None:
    assert consolidate(dirs, capsys)["changed"]
    from snapstore import legacydir
    real = legacydir.read_folder
    reads = []
    monkeypatch.setattr(legacydir, "read_folder", lambda *a, **k: (reads.append(1), real(*a, **k))[1])
    assert not consolidate(dirs, capsys)["changed"] and reads == [], "an unchanged folder is not parsed"
    folder = dirs[0] / "vm1"
    # libvirt's way: a new file renamed over the old one (new inode), same size.
    (folder / "new").write_bytes((folder / "a.xml").read_bytes().replace(b"1700000000", b"1700000009"))
    os.rename(folder / "new", folder / "a.xml")
    result = consolidate(dirs, capsys)
    assert result["changed"] and reads == [1]
    (folder / "c.xml").write_bytes(samples.snapshot_xml("c", "b"))
    assert consolidate(dirs, capsys)["count"] == 3
    (folder / "c.xml").unlink()
    assert consolidate(dirs, capsys)["count"] == 2


def test_a_folder_with_remarks_is_always_read_again(dirs, capsys) -> None:
    (dirs[0] / "vm1" / "b.xml.new").write_bytes(b"partial")
    consolidate(dirs, capsys)
    state = store.Store(dirs[1])
    index = json.loads(state.index_path(kinds.SNAPSHOT, "vm1").read_text())
    assert index["sources"] is None, "a folder that gave a warning is never skipped next time"
    warnings: list[str] = []
    consolidate(dirs, capsys, warnings)
    assert len(warnings) == 1 and "libvirt temp" in warnings[0]
