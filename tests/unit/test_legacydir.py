"""libvirt's per-domain folders on a real filesystem: what a read sees, what a write leaves."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import samples

from snapstore import codes, errors, fsio, kinds, legacydir

SNAP = kinds.SNAPSHOT


def folder_of(tmp_path: Path) -> Path:
    return samples.write_folder(tmp_path / "root" / "vm1", [("s1", None), ("s2", "s1")], current="s2")


def test_a_read_sorts_what_it_finds(tmp_path: Path) -> None:
    folder = folder_of(tmp_path)
    (folder / "s3.xml.new").write_bytes(b"half")
    (folder / "README").write_text("notes")
    (folder / ".hidden.xml").write_bytes(samples.snapshot_xml("h", "s1"))
    (folder / "renamed.xml").write_bytes(samples.snapshot_xml("s4", "s1"))
    read = legacydir.read_folder(tmp_path / "root", SNAP, "vm1")
    assert sorted(read.entries) == ["renamed.xml", "s1.xml", "s2.xml"]
    assert read.libvirt_temps == ["s3.xml.new"]
    assert sorted(note.code for note in read.notes) == sorted([codes.FILE_NAME_MISMATCH, codes.FOREIGN_FILE,
                                                               codes.LIBVIRT_TEMP])
    assert [failure.code for failure in read.failures] == [codes.UNSTORABLE_NAME]
    assert [problem.code for problem in read.problems()] == [codes.UNSTORABLE_NAME]
    assert read.tree().current == "s2" and set(read.tree().by_name) == {"s1", "s2", "s4"}


def test_two_current_markers_are_a_problem_with_its_code(tmp_path: Path) -> None:
    folder = folder_of(tmp_path)
    (folder / "s1.xml").write_bytes(samples.snapshot_xml("s1", None, active=True))
    problems = legacydir.read_folder(tmp_path / "root", SNAP, "vm1").problems()
    assert [problem.code for problem in problems] == [codes.SEVERAL_CURRENT]


def test_a_settled_read_records_every_entry_and_reuses_the_cache(tmp_path: Path) -> None:
    folder_of(tmp_path)
    cache: legacydir.Cache = {}
    first = legacydir.read_settled(tmp_path / "root", SNAP, "vm1", cache=cache)
    assert first.sources is not None and set(first.sources) == {"s1.xml", "s2.xml"}
    entry = cache["s1.xml"][1]
    again = legacydir.read_settled(tmp_path / "root", SNAP, "vm1", cache=cache)
    assert again.entries["s1.xml"] is entry  # unchanged: not parsed again


def test_a_missing_folder_or_an_impossible_name_is_an_unknown_domain(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    for domain in ("vm9", "a/b", "..", "bell\x07"):
        with pytest.raises(errors.UnknownDomain):
            legacydir.read_folder(tmp_path / "root", SNAP, domain)


def test_domains_skip_links_files_and_marked_temps(tmp_path: Path) -> None:
    root = folder_of(tmp_path).parent
    (root / ".dot").mkdir()
    (root / "link").symlink_to("vm1")
    (root / "file").write_text("x")
    (root / fsio.temp_name(foreign=True)).mkdir()
    assert legacydir.domains(root) == [".dot", "vm1"]


def test_write_folder_keeps_the_old_files_first_and_swaps_the_new_in(tmp_path: Path) -> None:
    folder = folder_of(tmp_path)
    tree = legacydir.read_folder(tmp_path / "root", SNAP, "vm1").tree()
    (folder / "s1.xml").write_bytes(samples.snapshot_xml("s1", None, description="older"))
    kept: list[dict[str, bytes]] = []

    def keep(files: dict[str, bytes]) -> Path:
        kept.append(files)
        return tmp_path / "attic"

    inode = folder.stat().st_ino
    result = legacydir.write_folder(tmp_path / "root", tree, keep)
    assert result.changed and result.attic == tmp_path / "attic" and folder.stat().st_ino != inode
    assert b"older" in kept[0]["s1.xml"] and b"older" not in (folder / "s1.xml").read_bytes()
    assert sorted(os.listdir(tmp_path / "root")) == ["vm1"]  # no temp left beside it
    assert not legacydir.write_folder(tmp_path / "root", tree, keep).changed and len(kept) == 1


def test_write_folder_refuses_extra_files_unless_pruned(tmp_path: Path) -> None:
    folder = folder_of(tmp_path)
    tree = legacydir.read_folder(tmp_path / "root", SNAP, "vm1").tree()
    (folder / "extra.xml").write_bytes(samples.snapshot_xml("extra", "s1"))
    with pytest.raises(errors.Refused, match="extra.xml"):
        legacydir.write_folder(tmp_path / "root", tree, lambda files: tmp_path)
    assert (folder / "extra.xml").exists()
    legacydir.write_folder(tmp_path / "root", tree, lambda files: tmp_path, prune=True)
    assert sorted(os.listdir(folder)) == ["s1.xml", "s2.xml"]
