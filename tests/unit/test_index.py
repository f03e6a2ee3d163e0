"""The listing index: trusted only for the file it describes, typed when read."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from snapstore import errors, index

ROWS: list[index.Row] = [("a", None, 1, "shutoff"), ("b", "a", 2, "running")]


def write(path: Path, of: list[int]) -> None:
    path.parent.mkdir(exist_ok=True)
    index.write(path, index.encode("vm1", "b", ROWS, of, {"a.xml": [1, 2, 3, 4]}, "uuid-1"))


def test_an_index_is_read_back_as_an_entry(tmp_path: Path) -> None:
    path = tmp_path / "index" / "snapshots.vm1.json"
    write(path, [1, 2, 3, 4])
    entry = index.read(path, [1, 2, 3, 4], "vm1")
    assert entry == index.Entry("b", ROWS, "uuid-1", {"a.xml": [1, 2, 3, 4]})
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_an_index_of_another_file_or_domain_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "index" / "snapshots.vm1.json"
    write(path, [1, 2, 3, 4])
    assert index.read(path, [1, 2, 3, 5], "vm1") is None  # the file was replaced
    assert index.read(path, [1, 2, 3, 4], "vm2") is None


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"format": 1}', b'{"format": 2, "identity": [1, 2, 3, 4]}',
                                     b'{"format": 1, "identity": [1, 2, 3, 4], "domain": "vm1", "rows": 3}'])
def test_garbage_is_rebuilt_over_never_an_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "snapshots.vm1.json"
    path.write_bytes(content)
    assert index.read(path, [1, 2, 3, 4], "vm1") is None


def test_a_missing_index_or_folder_is_none(tmp_path: Path) -> None:
    assert index.read(tmp_path / "none.json", [1], "vm1") is None
    assert index.read(tmp_path / "absent" / "none.json", [1], "vm1") is None


def test_something_else_in_its_place_is_rebuilt_over(tmp_path: Path) -> None:
    path = tmp_path / "snapshots.vm1.json"
    path.mkdir()  # not a file (an I/O error reading a file raises: the fault campaign fails each call)
    assert index.read(path, [1], "vm1") is None


def test_a_failed_write_raises_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "notafolder" / "x.json"
    (tmp_path / "notafolder").write_bytes(b"")
    with pytest.raises(errors.SnapstoreError):
        index.write(path, b"{}")
    assert sorted(os.listdir(tmp_path)) == ["notafolder"]
