"""Atomic commit, locks, escaping and the attic, on a real filesystem.

Faults are injected by failing one system call of the write path at a time
(only faults are faked); the full disk is a real, tiny tmpfs.
"""
from __future__ import annotations

import errno
import os
import subprocess
import threading
from pathlib import Path

import pytest
import samples
from hypothesis import given
from hypothesis import strategies as st

from snapstore import codes, errors, fsio, kinds, model, naming, store
from snapstore.formats import consolidated, legacy

SNAP = kinds.SNAPSHOT


def tree_of(*specs: tuple[str, str | None], current: str | None = None, domain: str = "vm1") -> model.Tree:
    moments = [legacy.parse_legacy(samples.snapshot_xml(n, p, created=i), SNAP, n).moment
               for i, (n, p) in enumerate(specs)]
    return model.Tree(SNAP, domain, moments, current)


@pytest.fixture
def state(tmp_path: Path) -> store.Store:
    result = store.Store(tmp_path / "state", lock_timeout=0.3)
    result.prepare()
    return result


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_commit_writes_mode_0600_and_skips_unchanged(state: store.Store) -> None:
    assert state.replace(tree_of(("a", None), current="a"))
    path = state.path(SNAP, "vm1")
    assert path.stat().st_mode & 0o777 == 0o600
    before = path.stat()
    assert not state.replace(tree_of(("a", None), current="a"))
    after = path.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert state.read_tree(SNAP, "vm1").current == "a"


def test_mode_is_0600_whatever_the_umask(state: store.Store) -> None:
    old = os.umask(0)
    try:
        state.replace(tree_of(("a", None)))
    finally:
        os.umask(old)
    assert state.path(SNAP, "vm1").stat().st_mode & 0o777 == 0o600


def test_invalid_tree_is_refused_before_any_write(state: store.Store) -> None:
    with pytest.raises(errors.TreeError) as info:
        state.replace(tree_of(("a", "ghost")))
    assert info.value.problems[0].code == codes.MISSING_PARENT
    assert not state.path(SNAP, "vm1").exists()


# (function name in fsio's os, which call of it fails)
# Counted inside the store file's fsio.Staged only: open #1 is the folder, #2 the temp.
FAULTS = [("write", 1, errno.EIO), ("write", 1, errno.ENOSPC), ("fsync", 1, errno.EIO),
          ("rename", 1, errno.EXDEV), ("open", 2, errno.EACCES), ("close", 1, errno.EIO)]


@pytest.mark.parametrize("call, nth, code", FAULTS)
def test_a_failed_step_leaves_the_old_file_and_no_temp(state: store.Store, monkeypatch, call, nth, code) -> None:
    state.replace(tree_of(("a", None), current="a"))
    path = state.path(SNAP, "vm1")
    old = path.read_bytes()
    fail_nth_call(monkeypatch, call, nth, code)
    with pytest.raises(errors.WriteError) as info:
        state.replace(tree_of(("a", None), ("b", "a"), current="b"))
    assert os.strerror(code) in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == old
    assert listing(path.parent) == ["vm1.xml"]


def test_a_failed_directory_fsync_is_reported_not_retried(state: store.Store, monkeypatch) -> None:
    state.replace(tree_of(("a", None)))
    calls = fail_nth_call(monkeypatch, "fsync", 2, errno.EIO)  # 1: the file, 2: the folder
    with pytest.raises(errors.WriteError, match="folder fsync failed"):
        state.replace(tree_of(("a", None), ("b", "a")))
    assert calls["fsync"] == 2
    assert listing(state.path(SNAP, "vm1").parent) == ["vm1.xml"]


def test_write_path_order_is_file_fsync_rename_folder_fsync(state: store.Store, monkeypatch) -> None:
    events: list[str] = []
    for name in ("write", "fsync", "rename"):
        real = getattr(os, name)
        monkeypatch.setattr(fsio.os, name, lambda *a, _n=name, _r=real, **k: (events.append(_n), _r(*a, **k))[1])
    state.replace(tree_of(("a", None)))
    # Then the derived listing index: written and renamed, never fsynced.
    assert events == ["write", "fsync", "rename", "fsync", "write", "rename"]


def fail_nth_call(monkeypatch, name: str, nth: int, code: int) -> dict[str, int]:
    """Make the nth call of os.<name> inside the store file's write and
    publication (fsio.Staged) fail with ``code``."""
    real, real_write, real_publish = getattr(os, name), fsio.Staged.__init__, fsio.Staged.publish
    calls = {name: 0, "armed": False}

    def armed(step, path_of):
        def run(self, *args, **kwargs):
            calls["armed"] = path_of(self, args).name == "vm1.xml"  # not the index's or the history's
            try:
                return step(self, *args, **kwargs)
            finally:
                calls["armed"] = False
        return run

    def failing(*args, **kwargs):
        if not calls["armed"]:
            return real(*args, **kwargs)
        calls[name] += 1
        if calls[name] == nth:
            if name == "close":
                real(*args, **kwargs)
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)
    monkeypatch.setattr(fsio.os, name, failing)
    monkeypatch.setattr(fsio.Staged, "__init__", armed(real_write, lambda _self, args: args[0]))
    monkeypatch.setattr(fsio.Staged, "publish", armed(real_publish, lambda self, _args: self.path))
    return calls


def test_full_disk_keeps_the_old_file_and_recovers(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        small = store.Store(mount / "state")
        small.prepare()
        small.replace(tree_of(("a", None), current="a"))
        old = small.path(SNAP, "vm1").read_bytes()
        filler = mount / "filler"
        with pytest.raises(OSError):
            filler.write_bytes(b"x" * (1 << 20))
        big = tree_of(*[(f"s{i}", f"s{i - 1}" if i else None) for i in range(100)], current="s99")
        with pytest.raises(errors.WriteError, match="No space left"):
            small.replace(big)
        assert small.path(SNAP, "vm1").read_bytes() == old
        assert listing(small.path(SNAP, "vm1").parent) == ["vm1.xml"]
        filler.unlink()
        assert small.replace(big) and len(small.read_tree(SNAP, "vm1")) == 100
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_stale_temps_are_swept_but_live_ones_kept(state: store.Store) -> None:
    folder = state.root / "snapshots"
    dead = folder / f"{fsio.TEMP_PREFIX}999999999-abc"
    live = folder / fsio.temp_name()
    dead.write_bytes(b"x")
    live.write_bytes(b"y")
    state.prepare()
    assert not dead.exists() and live.exists()


def test_lock_times_out_with_a_clear_error(state: store.Store) -> None:
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with state.lock(SNAP, "vm1"):
            held.set()
            release.wait(5)
    thread = threading.Thread(target=holder)
    thread.start()
    try:
        held.wait(5)
        with pytest.raises(errors.LockTimeout, match="lock held by another snapstore process for 0.3 s"):
            state.replace(tree_of(("a", None)))
        with pytest.raises(errors.LockTimeout), state.lock(SNAP, "vm1"):
            pass
    finally:
        release.set()
        thread.join()
    assert state.replace(tree_of(("a", None)))


def test_emptying_is_refused_unless_allowed(state: store.Store) -> None:
    state.replace(tree_of(("a", None), current="a"))
    with pytest.raises(errors.Refused, match="store holds 1"):
        state.replace(tree_of())
    assert len(state.read_tree(SNAP, "vm1")) == 1
    assert state.replace(tree_of(), allow_empty=True)
    assert len(state.read_tree(SNAP, "vm1")) == 0


def test_attic_keeps_the_file_with_a_timestamp(state: store.Store) -> None:
    state.replace(tree_of(("a", None)))
    data = state.path(SNAP, "vm1").read_bytes()
    kept = state.to_attic(SNAP, "vm1")
    assert kept.parent == state.root / "attic" and kept.read_bytes() == data
    assert not state.path(SNAP, "vm1").exists() and state.domains(SNAP) == []


def test_store_file_of_another_domain_is_refused(state: store.Store) -> None:
    state.replace(tree_of(("a", None), domain="other"))
    os.rename(state.path(SNAP, "other"), state.path(SNAP, "vm1"))
    with pytest.raises(errors.FormatError, match="holds domain 'other'"):
        state.read_tree(SNAP, "vm1")


def test_symlinked_store_file_is_not_followed(state: store.Store, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.xml"
    target.write_bytes(b"<snapshots domain='vm1' format='1'/>")
    state.path(SNAP, "vm1").symlink_to(target)
    with pytest.raises(errors.FormatError, match="symlink, not followed"):
        state.read_tree(SNAP, "vm1")


@given(st.text(min_size=1, max_size=60).filter(lambda s: "\x00" not in s))
def test_domain_escaping_is_reversible_and_safe(domain: str) -> None:
    escaped = naming.escape_domain(domain)
    assert naming.unescape_domain(escaped) == domain
    assert "/" not in escaped and not escaped.startswith(".") and escaped not in ("", ".", "..")
    assert naming.is_escaped_form(escaped)


def test_escaping_examples() -> None:
    assert naming.escape_domain("vm-1_a+b.c") == "vm-1_a+b.c"
    assert naming.escape_domain("../x") == "%2E.%2Fx"
    assert naming.escape_domain("a b%") == "a%20b%25"
    assert not naming.is_escaped_form("a b")


@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=255))
def test_every_stem_fits_every_name_built_on_it(domain: str) -> None:
    stem = naming.domain_stem(domain)
    assert len(stem) <= naming.STEM_MAX and "/" not in stem and not stem.startswith(".")
    assert naming.is_escaped_form(stem) != naming.is_bounded_stem(stem)  # exactly one of the two forms
    attic = naming.attic_name("checkpoints", domain, "." + domain.replace("/", "_")[:200])
    assert len(attic.encode()) <= naming.NAME_MAX and "/" not in attic


def test_long_names_get_distinct_bounded_stems(state: store.Store) -> None:
    """120 bytes of Cyrillic escape to 360 characters: over NAME_MAX once a suffix is added."""
    long_a, long_b = "д" * 60, "д" * 59 + "е"
    assert naming.domain_stem(long_a) != naming.domain_stem(long_b)
    assert naming.is_bounded_stem(naming.domain_stem(long_a))
    assert naming.domain_stem("д" * 20) == naming.escape_domain("д" * 20)  # short: still reversible
    for domain in (long_a, long_b, "vm1"):
        with state.lock(SNAP, domain):
            state.replace(tree_of(("a", None), domain=domain))
        assert state.read_tree(SNAP, domain).domain == domain
        assert state.index_path(SNAP, domain).exists()
    assert sorted(state.domains(SNAP)) == sorted([long_a, long_b, "vm1"])


def test_a_bounded_stem_file_naming_another_domain_is_not_listed(state: store.Store) -> None:
    domain = "д" * 60
    state.replace(tree_of(("a", None), domain=domain))
    state.path(SNAP, domain).write_bytes(consolidated.format_consolidated(tree_of(("a", None), domain="other")))
    assert state.domains(SNAP) == []


def test_every_domain_maps_inside_the_store(state: store.Store) -> None:
    for domain in ["../../etc/passwd", "/abs", ".", "..", "a/../../b"]:
        path = state.path(SNAP, domain)
        assert path.parent == state.root / "snapshots"
        state.replace(tree_of(("a", None), domain=domain))
        assert state.read_tree(SNAP, domain).domain == domain
    assert sorted(state.domains(SNAP)) == sorted(["../../etc/passwd", "/abs", ".", "..", "a/../../b"])


def test_listing_index_is_written_at_commit_and_used_while_it_matches(state: store.Store, monkeypatch) -> None:
    state.replace(tree_of(("a", None), ("b", "a"), current="b"))
    assert state.index_path(SNAP, "vm1").stat().st_mode & 0o777 == 0o600
    monkeypatch.setattr(state, "read_tree", lambda *a: pytest.fail("the index should have been used"))
    current, rows = state.listing(SNAP, "vm1")
    assert current == "b" and [r[:2] for r in rows] == [("a", None), ("b", "a")]


def test_listing_index_is_never_trusted_blindly(state: store.Store) -> None:
    state.replace(tree_of(("a", None), current="a"))
    path, idx = state.path(SNAP, "vm1"), state.index_path(SNAP, "vm1")
    # An operator edits the file by hand: the identity changes, the index is rebuilt.
    other = tree_of(("x", None), ("y", "x"), current="y")
    from snapstore.formats import consolidated
    path.write_bytes(consolidated.format_consolidated(other))
    assert state.listing(SNAP, "vm1")[0] == "y"
    idx.write_text("{not json")  # a broken index is rebuilt, never an error
    assert [r[0] for r in state.listing(SNAP, "vm1")[1]] == ["x", "y"]
    idx.unlink()
    assert state.listing(SNAP, "vm1")[0] == "y" and idx.exists()
    assert state.listing(SNAP, "nope") is None
