"""migration/convert-host on a whole host's corpus: an embedded libvirt root
with a few domains stands for the host (its folders, its definitions)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from lab import TIMEOUT_SECONDS, Lab, View, snapstore

SCRIPT = Path(__file__).resolve().parents[2] / "migration" / "convert-host"
SNAPSTORE = Path(sys.executable).with_name("snapstore")  # the venv's console script
DOMAINS = ["vm1", "vm 2é", "emptied"]


def build_host(lab: Lab) -> dict[str, View]:
    """vm1: a branching tree; 'vm 2é': awkward names; emptied: every snapshot
    deleted, which leaves an empty folder."""
    snap = lambda domain, name: {"op": "snapshot", "domain": domain, "name": name}  # noqa: E731
    *_, vm1, vm2 = lab.run([
        *({"op": "define", "domain": domain} for domain in DOMAINS),
        snap("vm1", "s1"), snap("vm1", "s2"), snap("vm1", "s3"),
        {"op": "revert", "domain": "vm1", "name": "s1"}, snap("vm1", "b1"),
        snap("vm 2é", "with space"), snap("vm 2é", "é快"), snap("vm 2é", "&<amp"),
        snap("emptied", "gone"), {"op": "delete", "domain": "emptied", "name": "gone"},
        {"op": "view", "domain": "vm1"}, {"op": "view", "domain": "vm 2é"},
    ])
    lab.checkpoint_dir.mkdir(parents=True, exist_ok=True)  # present on real hosts, empty here
    return {"vm1": View(**vm1), "vm 2é": View(**vm2)}


def manifest(*roots: Path) -> dict[str, tuple[int, int, int, bytes | None]]:
    """Every entry below the roots: (mode with type, uid, gid, content of files)."""
    found = {}
    for root in roots:
        for entry in [root, *sorted(root.rglob("*"))]:
            info = entry.lstat()
            content = entry.read_bytes() if stat.S_ISREG(info.st_mode) else None
            found[str(entry)] = (info.st_mode, info.st_uid, info.st_gid, content)
    return found


def same_tree(actual: View, expected: View) -> bool:
    """Names, parents and current; not list order, which libvirt changes on reload."""
    return (sorted(actual.names), actual.parents, actual.current) == (
        sorted(expected.names), expected.parents, expected.current)


def convert_host(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
                          env={**os.environ, "SNAPSTORE": str(SNAPSTORE)})


def host_options(lab: Lab, state: Path) -> list[str]:
    return ["--libvirt-dir", str(lab.snapshot_dir), "--checkpoint-dir", str(lab.checkpoint_dir),
            "--state-dir", str(state)]


@pytest.fixture
def host(tmp_path: Path) -> tuple[Lab, dict[str, View], Path]:
    lab = Lab(tmp_path / "host")
    views = build_host(lab)
    return lab, views, tmp_path / "state"


def test_convert_checks_clean_and_rollback_restores_byte_for_byte(host: tuple[Lab, dict[str, View], Path],
                                                                  tmp_path: Path) -> None:
    lab, views, state = host
    before = manifest(lab.snapshot_dir, lab.checkpoint_dir)
    backups = tmp_path / "backups"

    done = convert_host("convert", *host_options(lab, state), "--backup-dir", str(backups),
                        "--definitions", str(lab.root / "etc" / "qemu"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "convert-host: check: clean; the host is converted" in done.stdout
    [backup] = backups.iterdir()
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600  # it holds SECURE XML
    assert sorted(os.listdir(state / "snapshots")) == ["emptied.xml", "vm%202%C3%A9.xml", "vm1.xml"]
    assert manifest(lab.snapshot_dir, lab.checkpoint_dir) == before, "convert changed libvirt's folders"
    for domain, view in views.items():
        listed = snapstore("--state-dir", str(state), "list", domain, "--json")
        assert listed.code == 0 and f'"current": "{view.current}"' in listed.out

    # The host lives on: libvirt writes, something foreign appears, a file is lost.
    lab.snapshot("vm1", "after")
    (lab.snapshot_dir / "vm 2é" / "é快.xml").unlink()
    (lab.snapshot_dir / "vm1" / "stray.txt").write_text("foreign")
    assert manifest(lab.snapshot_dir, lab.checkpoint_dir) != before

    rolled = convert_host("rollback", "--backup", str(backup), *host_options(lab, state))
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert manifest(lab.snapshot_dir, lab.checkpoint_dir) == before
    [aside] = lab.snapshot_dir.parent.glob("snapshot.before-rollback-*")
    assert (aside / "vm1" / "stray.txt").read_text() == "foreign"  # what was replaced is kept
    assert same_tree(lab.view("vm1"), views["vm1"])  # libvirt reads the restored folder


def test_rollback_by_expand_rewrites_folders_from_the_store(host: tuple[Lab, dict[str, View], Path],
                                                            tmp_path: Path) -> None:
    lab, views, state = host
    done = convert_host("convert", *host_options(lab, state), "--backup-dir", str(tmp_path / "backups"),
                        "--definitions", str(lab.root / "etc" / "qemu"))
    assert done.returncode == 0, done.stdout + done.stderr
    for file in (lab.snapshot_dir / "vm 2é").iterdir():
        file.unlink()

    rolled = convert_host("rollback", "--expand", *host_options(lab, state))
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert same_tree(lab.view("vm 2é"), views["vm 2é"])
    clean = snapstore(*host_options(lab, state), "check", "--definitions", str(lab.root / "etc" / "qemu"))
    assert clean.code == 0, clean.out + clean.err


def test_rollback_refuses_libvirts_live_root_while_libvirtd_runs(tmp_path: Path) -> None:
    # Debian's libvirtd runs during the tests (scripts/test). The refusal comes
    # before anything is read, so the missing backup is never reached.
    rolled = convert_host("rollback", "--backup", str(tmp_path / "none.tar.gz"))
    assert rolled.returncode == 1
    assert "convert-host: libvirt is running (/run/libvirt/libvirtd.pid): it reads " \
           "/var/lib/libvirt/qemu/snapshot only at start" in rolled.stderr


def test_usage_errors(tmp_path: Path) -> None:
    assert convert_host("rollback", "--libvirt-dir", str(tmp_path)).returncode == 2
    missing = convert_host("convert", "--libvirt-dir", str(tmp_path / "none"), "--state-dir", str(tmp_path))
    assert (missing.returncode, missing.stderr) == (2, f"convert-host: {tmp_path}/none: no such folder\n")
