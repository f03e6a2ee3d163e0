"""Security (issue 8 §6): how files are created, where names lead, how the unit is confined.

strace records every open and mkdir of the real commands and of the
daemon's commit, run with umask 0 so that only the mode snapstore asks for
counts: every file it creates is O_EXCL|O_NOFOLLOW, mode 0600 (lock files:
O_CREAT|O_NOFOLLOW without O_EXCL, on purpose: every process opens the same
one); every file it reads is opened O_NOFOLLOW. Names leading out of their
folder are covered by test_hostile_input (property tests); the service
unit's hardening by tests/integration/test_unit_file.py (systemd-analyze
verify and security --offline=true), whose figure is recorded here.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import stat
import subprocess
from pathlib import Path

import campaign
import pytest
import straced
from campaign import Sandbox
from daemonproc import Daemon, wait_for, write_config

from snapstore import errors, legacydir, model
from snapstore.formats import legacy

OPENS = ("open", "openat", "creat", "mkdir", "mkdirat")
UNIT_TEST = campaign.REPO / "tests" / "integration" / "test_unit_file.py"


@pytest.fixture
def no_umask():
    old = os.umask(0)
    yield
    os.umask(old)


def policy_violations(calls: list[straced.Call], base: Path, config: Path) -> list[str]:
    found = []
    for call in calls:
        if not call.touches(base) or str(config) in call.args:
            continue
        flags = call.args
        if call.name.startswith("mkdir"):
            if not re.search(r", 0700\)?$", flags) and "/out" not in flags:
                found.append(f"folder not 0700: {call}")
        elif "O_CREAT" in flags:
            # Lock files are shared (no O_EXCL); opened by path or through locks/'s descriptor.
            exclusive = "O_EXCL" in flags or re.search(r"/locks[/>]", flags) is not None
            if not (exclusive and "O_NOFOLLOW" in flags and flags.endswith(", 0600")):
                found.append(f"created without O_EXCL|O_NOFOLLOW, 0600: {call}")
        elif "O_DIRECTORY" not in flags and "O_NOFOLLOW" not in flags:
            found.append(f"a file opened without O_NOFOLLOW: {call}")
    return found


def modes(*folders: Path) -> list[str]:
    """Everything below the folders that is wider than 0600 (files) or 0700 (folders)."""
    wide = []
    for folder in folders:
        for path in [folder, *folder.rglob("*")]:
            mode = stat.S_IMODE(path.lstat().st_mode)
            if (path.is_dir() and mode != 0o700) or (path.is_file() and mode != 0o600):
                wide.append(f"{path}: {oct(mode)}")
    return wide


COMMANDS = [("consolidate", "vm1"), ("list", "vm1"), ("expand", "vm1", "--into", "OUT", "--prune"),
            ("check", "vm1", "--repair", "--no-disks")]


def test_commands_create_exclusive_nofollow_0600(sandbox: Sandbox, tmp_path: Path, no_umask) -> None:
    campaign.write_legacy(sandbox.libvirt / "vm1", campaign.generation_files(3))
    (sandbox.base / "out").mkdir(mode=0o700)
    violations = []
    for i, command in enumerate(COMMANDS * 2):  # the second round replaces what the first created
        if i == len(COMMANDS):
            campaign.write_legacy(sandbox.libvirt / "vm1", campaign.generation_files(4))
        argv = [str(sandbox.base / "out") if arg == "OUT" else arg for arg in command]
        result, calls = straced.trace(sandbox.argv(*argv), tmp_path / "opens.log", OPENS)
        assert result.code == 0 or (command[0] == "check" and result.code == 1), result  # 1: warnings
        violations += policy_violations(calls, sandbox.base, sandbox.config)
        campaign.count("security: opens checked", sum(call.touches(sandbox.base) for call in calls))
    violations += modes(sandbox.state, sandbox.base / "out" / "vm1")
    assert not violations, "\n".join(violations)


def test_daemon_commit_creates_exclusive_nofollow_0600(sandbox: Sandbox, tmp_path: Path, no_umask) -> None:
    campaign.write_legacy(sandbox.libvirt / "vm1", campaign.generation_files(3))
    config = write_config(tmp_path / "daemon.toml", quiet_period=0.05)
    daemon = Daemon(sandbox.libvirt, sandbox.checkpoints, sandbox.state, config, tmp_path / "daemon.stderr")
    try:
        daemon.wait_ready()
        with straced.attach(daemon.pid, tmp_path / "opens.log", OPENS) as calls:
            campaign.write_legacy(sandbox.libvirt / "vm1", campaign.generation_files(4))
            wait_for(lambda: sandbox.store_file().read_bytes() == campaign.generation_bytes(4), 10, daemon.describe)
            wait_for(lambda: any("/index/" in c.result and "O_CREAT" in c.args for c in calls()), 5, "no index written")
        violations = policy_violations(calls(), sandbox.base, config) + modes(sandbox.state)
        campaign.count("security: opens checked", sum(call.touches(sandbox.base) for call in calls()))
    finally:
        daemon.close()
    assert not violations, "\n".join(violations)


def test_writing_a_folder_never_leaves_it(tmp_path: Path) -> None:
    """legacydir.write_folder makes each moment a file: a name must not lead out of the folder,
    whoever calls it (today only `expand`, which refuses such names first)."""
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "attic").mkdir()
    escaping = legacy.parse_legacy(campaign.samples.snapshot_xml("../../escaped", None, True),
                                   campaign.SNAP, "x").moment
    tree = model.Tree(campaign.SNAP, "vm1", [escaping], "../../escaped")
    with contextlib.suppress(errors.SnapstoreError, OSError):  # refusing is fine; writing outside is not
        legacydir.write_folder(root, tree, lambda files: tmp_path / "attic")
    outside = [str(p) for p in tmp_path.rglob("*") if "escaped" in p.name]
    assert not outside, (
        "BUG: legacydir.write_folder writes a moment named '../../escaped' to "
        f"{outside}: it joins each name into the path unchecked (only cli/expand checks names first)")


def test_service_unit_hardening_figure(tmp_path: Path) -> None:
    """The assertions live in tests/integration/test_unit_file.py; the figure goes to RELIABILITY.md."""
    spec = importlib.util.spec_from_file_location("unit_file_checks", UNIT_TEST)
    unit_file = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(unit_file)
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit_file.local_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    exposure = re.search(r"Overall exposure level for snapstore.service: (\d+\.\d+) (\w+)", result.stdout)
    assert exposure, result.stdout + result.stderr
    campaign.NOTES["service unit exposure (systemd-analyze security --offline=true)"] = " ".join(exposure.groups())
