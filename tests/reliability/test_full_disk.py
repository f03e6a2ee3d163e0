"""A real full disk (issue 8 §3): the state folder on a small tmpfs, filled up.

``consolidate``, ``expand`` and the daemon meet ENOSPC for real (no
injection): out of blocks, then out of inodes. Each says so in one line,
loses nothing (the old file byte-identical, no temp), and once space
returns the same command, or the daemon's retry, commits.
"""
from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import campaign
import pytest
from campaign import Sandbox
from daemonproc import Daemon, wait_for, write_config

from snapstore import cli

# Generation 9 carries a 200 kB description: it cannot fit once the disk is full.
OLD, NEW = 1, 9


@contextlib.contextmanager
def tmpfs(mount: Path, options: str) -> Iterator[Path]:
    mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(mount: Path, what: str = "blocks") -> list[Path]:
    """Use every block left (one big file), or every inode left (empty files)."""
    fillers = [mount / "filler"]
    if what == "blocks":
        with open(fillers[0], "wb") as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        return fillers
    with contextlib.suppress(OSError):
        for i in range(100_000):
            fillers.append(mount / f"inode{i}")
            fillers[-1].touch()
    return fillers


def free(fillers: list[Path]) -> None:
    for path in fillers:
        path.unlink(missing_ok=True)


@pytest.fixture(params=["blocks", "inodes"])
def full(request, sandbox: Sandbox, tmp_path: Path) -> Iterator[tuple[Sandbox, str]]:
    """The sandbox's state folder on a 2 MiB tmpfs holding generation OLD; filled by the test."""
    options = "size=2m,nr_inodes=64" if request.param == "inodes" else "size=2m"
    with tmpfs(tmp_path / "disk", options) as mount:
        mount.joinpath("state").mkdir()
        sandbox.state.symlink_to(mount / "state")  # the root may be a symlink (DynamicUser= makes one)
        campaign.write_legacy(sandbox.libvirt / "vm1", campaign.generation_files(OLD))
        assert cli.main(["-q", *sandbox.argv("consolidate", "vm1")]) == 0
        yield sandbox, request.param


def test_commands_on_a_full_disk(full: tuple[Sandbox, str]) -> None:
    sandbox, what = full
    old = sandbox.store_file().read_bytes()
    campaign.write_legacy(sandbox.libvirt / "vm1", campaign.generation_files(NEW))
    fillers = fill(sandbox.state.resolve().parent, what)
    result = campaign.run_script(sandbox.argv("consolidate", "vm1"))
    campaign.count(f"full disk: commands run out of {what}")
    campaign.assert_clear_error(result, "No space left on device")
    assert sandbox.store_file().read_bytes() == old, "data: the old file changed on a full disk"
    assert campaign.temps_under(sandbox.state) == []
    free(fillers)
    result = campaign.run_script(sandbox.argv("consolidate", "vm1"))
    assert result.code == 0 and sandbox.store_file().read_bytes() == campaign.generation_bytes(NEW), result


def test_expand_on_a_full_disk(full: tuple[Sandbox, str]) -> None:
    """The target folder and the attic live on the full disk: expand must fail as cleanly."""
    sandbox, what = full
    out = sandbox.state.resolve().parent / "out"
    assert campaign.run_script(sandbox.argv("expand", "vm1", "--into", str(out))).code == 0
    before = campaign.tree_listing(out)
    campaign.write_legacy(sandbox.libvirt / "vm1", campaign.generation_files(NEW))
    assert campaign.run_script(sandbox.argv("consolidate", "vm1")).code == 0
    fillers = fill(sandbox.state.resolve().parent, what)
    result = campaign.run_script(sandbox.argv("expand", "vm1", "--into", str(out), "--prune"))
    campaign.count(f"full disk: commands run out of {what}")
    half = campaign.half_attic_copies(sandbox.state, lambda files: files == campaign.expanded_files(OLD))
    problems = campaign.error_problems(result) + [f"half-written attic copy: {half}"] * bool(half)
    problems += ["data: the folder changed"] * (campaign.tree_listing(out) != before)
    problems += [f"temps left: {campaign.temps_under(out)}"] * bool(campaign.temps_under(out))
    free(fillers)
    assert not problems, (f"BUG: expand on a full disk ({what}): {'; '.join(problems)} "
                          f"(legacydir._keep_in_attic: its OSError is not turned into a WriteError, and "
                          f"the partial copy stays)\n{result}")
    result = campaign.run_script(sandbox.argv("expand", "vm1", "--into", str(out), "--prune"))
    assert result.code == 0 and campaign.tree_listing(out / "vm1") == campaign.expanded_files(NEW), result


def test_daemon_on_a_full_disk(full: tuple[Sandbox, str], tmp_path: Path) -> None:
    sandbox, what = full
    config = write_config(tmp_path / "daemon.toml", quiet_period=0.05)
    daemon = Daemon(sandbox.libvirt, sandbox.checkpoints, sandbox.state, config, tmp_path / "daemon.stderr")
    try:
        daemon.wait_ready()
        old = sandbox.store_file().read_bytes()
        fillers = fill(sandbox.state.resolve().parent, what)
        campaign.write_legacy(sandbox.libvirt / "vm1", campaign.generation_files(NEW))
        daemon.wait_status(lambda s: "failing: vm1" in s, 10, "failing: vm1 on a full disk")
        assert "No space left on device (retrying)" in daemon.stderr(), daemon.describe()
        assert sandbox.store_file().read_bytes() == old, "data: the old file changed on a full disk"
        assert campaign.temps_under(sandbox.state) == []
        free(fillers)
        wait_for(lambda: sandbox.store_file().read_bytes() == campaign.generation_bytes(NEW), 40,
                 lambda: f"no recovery once space returned; {daemon.describe()}")
        daemon.wait_status(lambda s: "failing" not in s, 5, "failing cleared")
        assert daemon.alive() and "Traceback" not in daemon.stderr(), daemon.describe()
        campaign.count(f"full disk: daemon commits out of {what}")
    finally:
        daemon.close()


def test_the_filler_really_fills(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "size=1m") as mount:
        fill(mount)
        with pytest.raises(OSError) as info:
            (mount / "one-more").write_bytes(b"x" * 8192)
        assert info.value.errno == errno.ENOSPC


def test_history_filling_the_disk_never_costs_the_live_file(full: tuple[Sandbox, str]) -> None:
    """History on (issue 13): generations pile up until the disk is full. Every
    commit stands whole or fails clearly with the old file kept, the history
    stays valid, and pruning (a smaller history_max_bytes) makes room again."""
    sandbox, what = full
    config = sandbox.base / "history.toml"
    config.write_text("history_keep = 1000\n")
    committed = sandbox.store_file().read_bytes()
    failed = 0
    for generation in [*range(2, 9)] * 3:  # generation 9's 200 kB description is left out: it never fits
        campaign.write_legacy(sandbox.libvirt / "vm1", campaign.generation_files(generation))
        result = campaign.run_script(sandbox.argv("consolidate", "vm1", config=config))
        if result.code == 0:
            committed = campaign.generation_bytes(generation)
        else:
            failed += 1
            campaign.assert_clear_error(result, "No space left on device")
        assert sandbox.store_file().read_bytes() == committed, f"data: the live file after generation {generation}"
        assert campaign.history_problems(sandbox.state) == [] and campaign.temps_under(sandbox.state) == []
    assert failed or what == "blocks", "the history never filled the disk: the test proves nothing"
    config.write_text("history_max_bytes = 1\n")  # prune to the newest generation
    campaign.write_legacy(sandbox.libvirt / "vm1", campaign.generation_files(3))
    result = campaign.run_script(sandbox.argv("consolidate", "vm1", config=config))
    assert sandbox.store_file().read_bytes() in (committed, campaign.generation_bytes(3)), result
    kept = list((sandbox.state / "history").glob("*/*/*.xml"))
    assert len(kept) <= 1 and campaign.history_problems(sandbox.state) == [], (kept, result)
    campaign.count(f"full disk: history commits out of {what}", 22)
