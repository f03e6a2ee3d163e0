"""fsio on a real filesystem: safe reads, exclusive creates, atomic replaces, sweeps."""
from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from snapstore import codes, errors, fsio


def test_read_regular_refuses_links_fifos_sockets_folders_and_oversize(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"12345")
    (tmp_path / "link").symlink_to("file")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    expected = {"link": codes.SYMLINK, "fifo": codes.NOT_REGULAR, "folder": codes.NOT_REGULAR,
                "sock": codes.NOT_REGULAR, "missing": codes.UNREADABLE}
    with fsio.opened_dir(tmp_path) as fd:
        assert fsio.read_regular(fd, "file", 5, "file") == b"12345"
        for name, code in expected.items():
            with pytest.raises(errors.FormatError) as caught:
                fsio.read_regular(fd, name, 5, name)
            assert caught.value.code == code, name
        with pytest.raises(errors.FormatError, match="over the 4-byte limit") as caught:
            fsio.read_regular(fd, "file", 4, "file")
        assert caught.value.code == codes.OVER_LIBVIRT_LIMIT
    sock.close()


def test_identity_read_through_the_descriptor_changes_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"one")
    with fsio.opened_dir(tmp_path) as fd:
        data, first = fsio.read_identified(fd, "f", 10, "f")
        (tmp_path / "g").write_bytes(b"two")
        os.rename(tmp_path / "g", path)  # libvirt's way: a new inode
        second = fsio.read_identified(fd, "f", 10, "f")[1]
    assert data == b"one" and first != second and first[1] != second[1]


def test_holds_compares_without_loading_twice(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "big").write_bytes(data)
    with fsio.opened_dir(tmp_path) as fd:
        assert fsio.holds(fd, "big", data, 4 << 20, "big")
        assert not fsio.holds(fd, "big", data[:-1] + b"x", 4 << 20, "big")
        assert not fsio.holds(fd, "big", data + b"x", 4 << 20, "big")


def test_write_new_never_replaces_and_is_0600_under_any_umask(tmp_path: Path) -> None:
    (tmp_path / "taken").write_bytes(b"old")
    old = os.umask(0)
    try:
        with fsio.opened_dir(tmp_path) as fd:
            fsio.write_new(fd, "new", b"data")
            with pytest.raises(FileExistsError):
                fsio.write_new(fd, "taken", b"data")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o600
    assert (tmp_path / "taken").read_bytes() == b"old"


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f"
    fsio.atomic_write(target, b"one")
    inode = target.stat().st_ino
    fsio.atomic_write(target, b"two")
    assert target.read_bytes() == b"two" and target.stat().st_ino != inode
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_opened_dir_refuses_a_symlinked_folder(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    with pytest.raises(errors.EnvironmentProblem, match="is a symlink, not followed"), \
            fsio.opened_dir(tmp_path / "link"):
        pass
    with fsio.opened_dir_if_present(tmp_path / "absent") as fd:
        assert fd is None
    with pytest.raises(errors.EnvironmentProblem, match="no such folder"), fsio.opened_dir(tmp_path / "absent"):
        pass


def test_temp_names_in_foreign_folders_carry_the_mark(tmp_path: Path) -> None:
    own, foreign = fsio.temp_name(), fsio.temp_name(foreign=True)
    assert fsio.is_temp(own) and not fsio.is_temp(own, foreign=True)
    assert fsio.is_temp(foreign, foreign=True) and foreign.endswith(fsio.FOREIGN_MARK)
    assert not fsio.is_stale_temp(own)  # this process is alive
    assert fsio.is_stale_temp(f"{fsio.TEMP_PREFIX}999999999-ab")
    assert not fsio.is_stale_temp(f"{fsio.TEMP_PREFIX}999999999-ab", foreign=True)  # a domain's folder


def test_sweep_removes_what_snapstore_makes_and_leaves_the_rest(tmp_path: Path) -> None:
    dead = f"{fsio.TEMP_PREFIX}999999999-"
    (tmp_path / f"{dead}file").write_bytes(b"half")
    (tmp_path / f"{dead}flat").mkdir()
    (tmp_path / f"{dead}flat" / "s1.xml").write_bytes(b"x")
    (tmp_path / f"{dead}deep" / "sub").mkdir(parents=True)
    (tmp_path / fsio.temp_name()).write_bytes(b"in flight")  # ours, alive
    (tmp_path / "vm1").mkdir()
    swept = fsio.sweep_temps(tmp_path)
    assert sorted(p.name for p in swept.removed) == [f"{dead}file", f"{dead}flat"]
    assert len(swept.left) == 1 and f"{dead}deep" in swept.left[0] and "left alone" in swept.left[0]
    assert (tmp_path / f"{dead}deep" / "sub").is_dir() and (tmp_path / "vm1").is_dir()
    assert len(os.listdir(tmp_path)) == 3


def test_write_folder_is_whole_and_0700(tmp_path: Path) -> None:
    with fsio.opened_dir(tmp_path) as fd:
        fsio.write_folder(fd, "made", {"a.xml": b"a", "b.xml": b"b"})
    assert sorted(os.listdir(tmp_path / "made")) == ["a.xml", "b.xml"]
    assert stat.S_IMODE((tmp_path / "made").stat().st_mode) == 0o700


def test_exchange_swaps_two_folders_atomically(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "from-a").touch()
    (tmp_path / "b").mkdir()
    with fsio.opened_dir(tmp_path) as fd:
        fsio.exchange(fd, "a", "b")
    assert os.listdir(tmp_path / "b") == ["from-a"] and os.listdir(tmp_path / "a") == []
