"""Defects found by trying the landed code as a new user and as an attacker
would (issue 11): each test failed before its fix.

The commands run in-process (``snapstore.cli.main``) on synthetic folders of
libvirt's real shape; the daemon runs as the real console script.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import samples
from daemonproc import Daemon, read_store, wait_for, write_config
from support.cli import assert_clean_failure
from support.cli import in_process as run
from support.folders import Env

from snapstore import codes, errors, fsio, kinds, store

TEMP_DOMAIN = ".snapstore-tmp-999999-x"  # libvirt accepts it as a domain name


def entries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# --- item 5: a domain named like a snapstore temp is a domain -----------------------------------


def test_domain_named_like_a_temp_is_kept_by_expand_force(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    victim = samples.write_folder(env.libvirt / TEMP_DOMAIN, [("t1", None)], current="t1")
    before = (victim / "t1.xml").read_bytes()
    result = run(capsys, env.argv("expand", "vm1", "--force", "--prune"))
    assert result.code == 0, result
    assert (victim / "t1.xml").read_bytes() == before, "expand removed another domain's snapshot folder"


def test_domain_named_like_a_temp_is_consolidated(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    samples.write_folder(env.libvirt / TEMP_DOMAIN, [("t1", None)], current="t1")
    result = run(capsys, env.argv("consolidate", "--all"))
    assert result.code == 0, result
    assert store.Store(env.state).read_tree(kinds.SNAPSHOT, TEMP_DOMAIN).current == "t1"


def test_a_dead_expand_leaves_a_marked_temp_that_the_next_one_sweeps(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    stale = env.libvirt / f"{fsio.TEMP_PREFIX}999999999-ab{fsio.FOREIGN_MARK}"
    samples.write_folder(stale, [("s1", None)])
    assert run(capsys, env.argv("expand", "vm1", "--force", "--prune")).code == 0
    assert not stale.exists()


# --- item 6: nothing is committed that cannot be read back ---------------------------------------


def test_too_deep_a_moment_is_refused_before_the_commit(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    deep = "<x>" * 255 + "</x>" * 255 + "\n"
    (env.folder / "s4.xml").write_bytes(samples.snapshot_xml("s4", "s3", extra=deep))
    result = run(capsys, env.argv("consolidate", "vm1"))
    assert_clean_failure(result, 1, [(str(env.folder / "s4.xml"), "254 levels", f"({codes.UNPARSABLE})")])
    env.assert_store_unchanged()


def test_deep_but_readable_moment_round_trips(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    deep = "<x>" * 250 + "</x>" * 250 + "\n"
    (env.folder / "s4.xml").write_bytes(samples.snapshot_xml("s4", "s3", extra=deep))
    assert run(capsys, env.argv("consolidate", "vm1")).code == 0
    (env.state / "index" / "snapshots.vm1.json").unlink()  # list must read the file itself
    result = run(capsys, env.argv("list", "vm1"))
    assert result.code == 0 and "s4" in result.out, result


def test_store_over_the_read_limit_is_refused(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.config.write_text(f"max_store_bytes = {len(env.good) + 100}\n")
    (env.folder / "s4.xml").write_bytes(samples.snapshot_xml("s4", "s3"))
    result = run(capsys, env.argv("consolidate", "vm1"))
    assert_clean_failure(result, 1, [("vm1", "over the", "max_store_bytes", "not written")])
    env.assert_store_unchanged()


# --- item 7: symlinks in the state folder are refused, never followed ---------------------------


@pytest.mark.parametrize("folder", ["attic", "locks"])
def test_symlinked_state_subfolder_is_refused(tmp_path: Path, folder: str) -> None:
    state = store.Store(tmp_path / "state")
    state.prepare()
    samples.write_folder(tmp_path / "lv" / "vm1", [("s1", None)], current="s1")
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = state.root / folder
    for entry in victim.iterdir():
        entry.unlink()
    victim.rmdir()
    victim.symlink_to(outside)
    with pytest.raises(errors.EnvironmentProblem, match="symlink"), state.lock(kinds.SNAPSHOT, "vm1"):
        state.to_attic(kinds.SNAPSHOT, "vm1")
    assert list(outside.iterdir()) == []


def test_daemon_never_writes_through_a_symlinked_attic(tmp_path: Path) -> None:
    libvirt, state = tmp_path / "lv", tmp_path / "state"
    samples.write_folder(libvirt / "vm1", [("s1", None)], current="s1")
    (tmp_path / "ck").mkdir()
    daemon = Daemon(libvirt, tmp_path / "ck", state, write_config(tmp_path / "d.toml", quiet_period=0.05),
                    tmp_path / "daemon.err")
    try:
        daemon.wait_ready()
        outside = tmp_path / "outside"
        outside.mkdir()
        for folder in ("attic", "locks"):
            for entry in (state / folder).iterdir():
                entry.unlink()
            (state / folder).rmdir()
            (state / folder).symlink_to(outside)
        for entry in (libvirt / "vm1").iterdir():
            entry.unlink()
        (libvirt / "vm1").rmdir()  # undefine: the store file would move to the attic
        wait_for(lambda: "symlink" in daemon.stderr(), 5, daemon.describe)
        assert list(outside.iterdir()) == [], "the daemon wrote through a symlink"
        assert read_store(state, "vm1") is not None, "the store file was moved although the attic is unusable"
    finally:
        daemon.close()


# --- item 8: a stale temp of any shape stops nothing ---------------------------------------------


def test_stale_temp_folder_with_a_subfolder_is_reported_not_fatal(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    odd = env.state / "attic" / f"{fsio.TEMP_PREFIX}999999999-y"
    (odd / "sub").mkdir(parents=True)
    (env.folder / "s4.xml").write_bytes(samples.snapshot_xml("s4", "s3"))
    result = run(capsys, env.argv("consolidate", "vm1"))
    assert result.code == 0, result
    assert any(str(odd) in line and "left alone" in line for line in result.warnings), result
    assert (odd / "sub").is_dir(), "snapstore removed something it never made"


def test_stale_temp_folder_with_a_subfolder_in_an_into_root(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    into = env.tmp / "into"
    odd = into / f"{fsio.TEMP_PREFIX}999999999-y{fsio.FOREIGN_MARK}"
    (odd / "sub").mkdir(parents=True)
    result = run(capsys, env.argv("expand", "vm1", "--into", str(into)))
    assert result.code == 0, result
    assert len(result.warnings) == 1 and "left alone" in result.warnings[0], result
    assert entries(into / "vm1") == ["s1.xml", "s2.xml", "s3.xml"]


def test_daemon_starts_with_a_stale_temp_folder_holding_a_subfolder(tmp_path: Path) -> None:
    libvirt, state = tmp_path / "lv", tmp_path / "state"
    samples.write_folder(libvirt / "vm1", [("s1", None)], current="s1")
    (state / "attic" / f"{fsio.TEMP_PREFIX}999999999-y" / "sub").mkdir(parents=True)
    daemon = Daemon(libvirt, tmp_path / "ck", state, write_config(tmp_path / "d.toml"), tmp_path / "daemon.err")
    try:
        daemon.wait_ready()
        assert read_store(state, "vm1") is not None
        assert "left alone" in daemon.stderr()
    finally:
        daemon.close()


# --- item 11: names read as libvirt reads them ---------------------------------------------------


def test_name_split_by_a_comment_is_read_as_libvirt_does(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    data = samples.snapshot_xml("s4", "s3").replace(b"<name>s4</name>", b"<name>s<!-- -->4</name>")
    data = data.replace(b"<name>s3</name>", b"<name>s<!-- x -->3</name>")  # the parent name too
    (env.folder / "s4.xml").write_bytes(data)
    assert run(capsys, env.argv("consolidate", "vm1")).code == 0
    tree = store.Store(env.state).read_tree(kinds.SNAPSHOT, "vm1")
    assert tree.by_name["s4"].parent == "s3"
    into = env.tmp / "into"
    assert run(capsys, env.argv("expand", "vm1", "--into", str(into))).code == 0
    assert entries(into / "vm1") == ["s1.xml", "s2.xml", "s3.xml", "s4.xml"]


# --- item 14: a domain starting with '.' is a domain ---------------------------------------------


def test_dot_domain_consolidates_and_expands(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    samples.write_folder(env.libvirt / ".dot", [("d1", None)], current="d1")
    assert run(capsys, env.argv("consolidate", ".dot")).code == 0
    assert (env.state / "snapshots" / "%2Edot.xml").is_file()
    into = env.tmp / "into"
    assert run(capsys, env.argv("expand", ".dot", "--into", str(into))).code == 0
    assert entries(into / ".dot") == ["d1.xml"]


def test_daemon_reports_folders_that_cannot_be_domains(tmp_path: Path) -> None:
    libvirt, state = tmp_path / "lv", tmp_path / "state"
    samples.write_folder(libvirt / "vm1", [("s1", None)], current="s1")
    samples.write_folder(libvirt / ".dot", [("d1", None)], current="d1")
    samples.write_folder(libvirt / "bad\x07name", [("b1", None)], current="b1")
    daemon = Daemon(libvirt, tmp_path / "ck", state, write_config(tmp_path / "d.toml"), tmp_path / "daemon.err")
    try:
        daemon.wait_ready()
        status = daemon.wait_status(lambda s: "skipped" in s, 5, "names the skipped folder")
        assert "bad\\x07name" in status and status.startswith("2 domains"), status
        assert read_store(state, ".dot") is not None
        assert daemon.stderr().count("is not a libvirt domain's") == 1, daemon.stderr()
    finally:
        daemon.close()


# --- item 10: the watchdog is fed while locks are held -------------------------------------------


@pytest.fixture
def held_locks(tmp_path: Path) -> Iterator[list[int]]:
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def test_watchdog_fed_while_domain_locks_are_held(tmp_path: Path, held_locks: list[int]) -> None:
    libvirt, state = tmp_path / "lv", tmp_path / "state"
    domains = ["vm1", "vm2", "vm3"]
    for domain in domains:
        samples.write_folder(libvirt / domain, [("s1", None)], current="s1")
    config = write_config(tmp_path / "d.toml", quiet_period=0.05, lock_timeout=30.0)
    daemon = Daemon(libvirt, tmp_path / "ck", state, config, tmp_path / "daemon.err", watchdog_usec=1_000_000)
    try:
        daemon.wait_ready()
        for domain in domains:
            fd = os.open(state / "locks" / f"snapshots.{domain}.lock", os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
            held_locks.append(fd)
            samples.write_folder(libvirt / domain, [("s1", None), ("s2", "s1")], current="s2")
        begin = time.monotonic()
        time.sleep(4.0)
        pings = [m.at for m in daemon.notify.with_key("WATCHDOG", "1") if m.at >= begin]
        assert len(pings) >= 6, f"{len(pings)} pings in 4 s; {daemon.describe()}"
        assert max(b - a for a, b in zip([begin, *pings], pings)) < 1.0, daemon.describe()
        assert "failing: vm1, vm2, vm3" in (daemon.notify.last_status() or ""), daemon.describe()
        for fd in held_locks:
            os.close(fd)
        held_locks.clear()
        daemon.wait_status(lambda s: "failing" not in s, 40, "recovered once the locks are free")
        assert b"<name>s2</name>" in (read_store(state, "vm3") or b"")
    finally:
        daemon.close()


# --- item 15: a removed state folder is created again --------------------------------------------


def test_daemon_recreates_a_removed_state_folder(tmp_path: Path) -> None:
    libvirt, state = tmp_path / "lv", tmp_path / "state"
    samples.write_folder(libvirt / "vm1", [("s1", None)], current="s1")
    daemon = Daemon(libvirt, tmp_path / "ck", state, write_config(tmp_path / "d.toml", quiet_period=0.05),
                    tmp_path / "daemon.err")
    try:
        daemon.wait_ready()
        subprocess.run(["rm", "-rf", str(state)], check=True)
        samples.write_folder(libvirt / "vm1", [("s1", None), ("s2", "s1")], current="s2")
        wait_for(lambda: b"<name>s2</name>" in (read_store(state, "vm1") or b""), 10, daemon.describe)
        assert "created it again" in daemon.stderr()
        daemon.wait_status(lambda s: "failing" not in s, 5, "no longer failing")
    finally:
        daemon.close()


# --- item 18: the listing index's I/O errors are said -------------------------------------------


def test_index_write_failure_is_a_warning_and_leaves_no_temp(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    (env.folder / "s4.xml").write_bytes(samples.snapshot_xml("s4", "s3"))
    index = env.state / "index"
    for entry in index.iterdir():
        entry.unlink()
    index.chmod(0o500)  # root writes anyway: take the capability away with setpriv
    script = Path(sys.executable).parent / "snapstore"
    done = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--inh-caps=-all",
                           "--", str(script),
                           *env.argv("consolidate", "vm1")], capture_output=True, text=True, timeout=30)
    index.chmod(0o700)
    assert done.returncode == 0, done
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapstore: warning: ") and str(index) in lines[0], done
    assert "Permission denied" in lines[0] and "listing index" in lines[0]
    assert list(index.iterdir()) == [], "a temp was left in the index folder"
    assert b"<name>s4</name>" in env.store_file.read_bytes()


# --- item 19: every refusal caused by one file names its code ------------------------------------


def test_refusal_by_one_file_names_its_code(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    data = samples.snapshot_xml("s4", "s3").replace(b"  <active>0</active>\n", b"")
    (env.folder / "s4.xml").write_bytes(data)
    (env.folder / "s5.xml").write_bytes(samples.snapshot_xml("s5", "s3").replace(b"<name>s5</name>", b""))
    result = run(capsys, env.argv("consolidate", "vm1"))
    assert_clean_failure(result, 1, [("s4.xml", "0 <active>", f"({codes.BAD_INTERNAL_ELEMENT})"),
                                     ("s5.xml", "no <name>", f"({codes.BAD_INTERNAL_ELEMENT})")])
    assert all(line.rstrip().endswith(")") for line in result.errors)
