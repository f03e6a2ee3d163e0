"""`check --repair` must act on what it checked, and only on what libvirt itself skips (issue 11).

The corpus, its copies and the helpers are test_check.py's (real libvirt
made them).  Where a race matters, the scan and the repair run in-process
as separate steps (snapstore.check.run.scan_all, then Repairer), and the
tree is changed between the two, deterministically:

- a folder or file swapped after the scan (or while it is copied to the
  attic) is never touched: a mode is not set and nothing is moved through a
  symlink, in another folder, or under the same name; a file the scan did not
  identify, or a temp folder holding a symlink, is left with a note (A2);
- a file only snapstore refuses (a DOCTYPE, an entity reference: libvirt
  loads it, as the embedded driver shows) stays where it is; a file libvirt
  cannot parse is still moved out (A3);
- a rebuild reads the folder again under the domain's lock: a store
  committed since the scan never goes back to the scan's state (A4);
- a store file that breaks a tree rule itself is rebuilt (A16);
- the summary counts a domain refused for one bad file, and its files (A20);
- SS108 names a line of the file itself (A21).
"""
from __future__ import annotations

import dataclasses
import fcntl
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import test_check
from lab import Lab
from lxml import etree
from test_check import (
    DOMAIN,
    OTHER,
    Env,
    attic_files,
    check,
    content_differs,
    edit_store,
    repair,
    repairs,
    replace,
    schema_invalid,
    set_active,
    store_duplicate,
    store_other_domain,
    stored,
    unparsable,
)

from snapstore import cli, codes, config, fsio, store
from snapstore.check import findings, run, scan
from snapstore.check.repair import Repairer

corpus, env = test_check.corpus, test_check.env  # its fixtures: the corpus, and a fresh copy per test

CHANGED = "changed since the scan, not repaired"


# --------------------------------------------------------------------------- the scan and the repair, apart

@dataclasses.dataclass
class Scanned:
    """One `check` scan in-process, kept so that the repair can run later on it."""

    report: findings.Report
    scans: list[scan.Scan]
    state: store.Store
    settings: config.Config

    def repair(self) -> None:
        Repairer(self.report, self.state, self.settings, dry_run=False).repair(list(self.report.findings),
                                                                                self.scans)

    @property
    def codes(self) -> set[str]:
        return {finding.code for finding in self.report.findings}


def scanned(env: Env, lock_timeout: float = 10.0) -> Scanned:
    settings = config.Config(libvirt_dir=env.snapshots, checkpoint_dir=env.checkpoints, state_dir=env.state)
    state = store.Store(env.state, lock_timeout)
    report = findings.Report()
    options = scan.Options(disks=False, definitions=env.definitions)
    return Scanned(report, run.scan_all(report, settings, state, options, [DOMAIN]), state, settings)


def consolidate(env: Env) -> None:
    assert cli.main(["--libvirt-dir", str(env.snapshots), "--checkpoint-dir", str(env.checkpoints),
                     "--state-dir", str(env.state), "--config", str(env.config), "consolidate", DOMAIN]) == 0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def write(path: Path, data: bytes, file_mode: int) -> None:
    """A new inode in place of whatever ``path`` was (made beside it, then renamed
    over it, so the old inode is still in use and cannot be handed out again)."""
    temp = path.with_name(path.name + ".swap")
    temp.write_bytes(data)
    temp.chmod(file_mode)
    temp.rename(path)


# --------------------------------------------------------------------------- A2: swapped after the scan

def folder_for_a_symlink(env: Env, name: str, data: bytes, file_mode: int) -> Path:
    """mv vm1 vm1.real; ln -s decoy vm1 (a decoy holding a file of the same name)."""
    decoy = env.root / "decoy"
    decoy.mkdir()
    write(decoy / name, data, file_mode)
    env.folder.rename(env.folder.with_name(DOMAIN + ".real"))
    env.folder.symlink_to(decoy)
    return decoy / name


def folder_for_another(env: Env, name: str, data: bytes, file_mode: int) -> Path:
    """mv vm1 vm1.real; mkdir vm1: a real folder, but not the one scanned."""
    env.folder.rename(env.folder.with_name(DOMAIN + ".real"))
    env.folder.mkdir(mode=0o700)
    write(env.folder / name, data, file_mode)
    return env.folder / name


def file_for_another(env: Env, name: str, data: bytes, file_mode: int) -> Path:
    """The folder scanned, but another file under the name."""
    write(env.folder / name, data, file_mode)
    return env.folder / name


SWAPS = [folder_for_a_symlink, folder_for_another, file_for_another]


@pytest.mark.parametrize("swap", SWAPS, ids=lambda swap: swap.__name__)
def test_repair_sets_no_mode_on_what_replaced_the_scanned_file(env: Env, swap: Callable[..., Path]) -> None:
    env.file("s3").chmod(0o644)
    data = env.file("s3").read_bytes()
    done = scanned(env)
    assert done.codes == {codes.MODE_TOO_WIDE}
    decoy = swap(env, "s3.xml", data, 0o644)
    done.repair()
    assert mode(decoy) == 0o644, f"repair set the mode of {decoy}, which it never scanned"
    assert done.report.repairs == [], done.report.repairs
    assert any(CHANGED in note for note in done.report.notes), done.report.notes


@pytest.mark.parametrize("swap", SWAPS, ids=lambda swap: swap.__name__)
def test_repair_moves_nothing_that_replaced_the_scanned_file(env: Env, swap: Callable[..., Path]) -> None:
    unparsable(env)
    junk = env.file("s3").read_bytes()
    done = scanned(env)
    assert codes.UNPARSABLE in done.codes
    decoy = swap(env, "s3.xml", junk, 0o600)
    done.repair()
    assert decoy.read_bytes() == junk, f"repair moved {decoy}, which it never scanned"
    assert list(env.attic.iterdir()) == [], "nothing may reach the attic"
    assert not [r for r in done.report.repairs if r.code == codes.UNPARSABLE], done.report.repairs
    assert any(CHANGED in note for note in done.report.notes), done.report.notes


def test_repair_leaves_a_file_swapped_while_it_was_copied(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy into the attic is made; the name is checked once more before the
    unlink: a file swapped in meanwhile stays, and the copy is kept."""
    unparsable(env)
    junk = env.file("s3").read_bytes()
    done = scanned(env)
    real_write_new = fsio.write_new

    def write_then_swap(*args: object, **kwargs: object) -> None:
        real_write_new(*args, **kwargs)
        write(env.file("s3"), b"libvirt's new s3", 0o600)

    monkeypatch.setattr(fsio, "write_new", write_then_swap)
    done.repair()
    assert env.file("s3").read_bytes() == b"libvirt's new s3"
    assert [path.read_bytes() for path in env.attic.iterdir()] == [junk]
    assert not [r for r in done.report.repairs if r.code == codes.UNPARSABLE], done.report.repairs
    assert any(CHANGED in note for note in done.report.notes), done.report.notes


def test_repair_touches_no_file_the_scan_did_not_identify(env: Env) -> None:
    env.file("s3").chmod(0o644)
    done = scanned(env)
    folder = done.scans[0].folder
    folder.sources.pop("s3.xml")  # as if it appeared between the read and the listing
    folder.read_as.pop("s3.xml")
    done.repair()
    assert mode(env.file("s3")) == 0o644 and done.report.repairs == []
    assert any("not identified by the scan" in note for note in done.report.notes), done.report.notes


def test_repair_leaves_a_temp_folder_holding_what_snapstore_never_makes(env: Env,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    temp = env.snapshots / (test_check.FOREIGN_TEMP)
    temp.mkdir()
    (temp / "link").symlink_to(env.file("s1"))
    result, changes = repair(capsys, env)
    assert temp.is_dir() and (temp / "link").is_symlink(), changes
    assert result.data["repairs"] == [], result
    assert any("not a regular file" in note and "not repaired" in note for note in result.data["notes"]), result
    assert result.codes == {codes.SNAPSTORE_TEMP}, result


# --------------------------------------------------------------------------- A3: only what libvirt skips

def with_doctype(env: Env) -> None:
    replace(env.file("s3"), "<domainsnapshot>", "<!DOCTYPE domainsnapshot>\n<domainsnapshot>")


def with_entity(env: Env) -> None:
    replace(env.file("s3"), "<domainsnapshot>",
            '<!DOCTYPE domainsnapshot [<!ENTITY note "kept by libvirt">]>\n<domainsnapshot>')
    replace(env.file("s3"), "<name>s3</name>\n", "<name>s3</name>\n  <description>&note;</description>\n")


def undefined_entity(env: Env) -> None:
    """An entity reference without a DOCTYPE: not well-formed, for libvirt too."""
    replace(env.file("s3"), "<name>s3</name>\n", "<name>s3</name>\n  <description>&note;</description>\n")


LOADED = [with_doctype, with_entity]


@pytest.mark.parametrize("damage", LOADED, ids=["doctype", "entity-reference"])
def test_repair_leaves_a_file_libvirt_loads(env: Env, capsys: pytest.CaptureFixture[str],
                                            damage: Callable[[Env], None]) -> None:
    damage(env)
    env.file("s3").chmod(0o644)
    assert "s3" in Lab(env.root).view(DOMAIN).names, "the premise: libvirt loads this file"
    original = env.file("s3").read_bytes()
    dry = check(capsys, env, "--repair", "--dry-run", "--json")
    assert repairs(dry) == [(codes.MODE_TOO_WIDE, str(env.file("s3")), False)], dry
    result, changes = repair(capsys, env)
    assert env.file("s3").read_bytes() == original and mode(env.file("s3")) == 0o600, changes
    assert repairs(result) == [(codes.MODE_TOO_WIDE, str(env.file("s3")), True)], result
    assert attic_files(changes, env) == {}, "a file libvirt loads was moved out"
    assert any("libvirt loads this file" in note for note in result.data["notes"]), result
    # s3 stays in the folder: nothing is orphaned (no SS203), and it is still reported
    assert codes.MISSING_PARENT not in result.codes and codes.UNPARSABLE in result.codes, result


@pytest.mark.parametrize("damage", LOADED, ids=["doctype", "entity-reference"])
def test_check_says_libvirt_loads_the_file_it_refuses(env: Env, capsys: pytest.CaptureFixture[str],
                                                      damage: Callable[[Env], None]) -> None:
    damage(env)
    found = check(capsys, env, "--json")
    refused = [f for f in found.data["findings"] if f["code"] == codes.UNPARSABLE]
    assert [f["path"] for f in refused] == [str(env.file("s3"))], found
    assert "libvirt loads it" in refused[0]["message"] and "--repair leaves it" in refused[0]["hint"], found
    assert refused[0]["severity"] == codes.ERROR and found.code == 3, "snapstore still cannot consolidate it"


def test_repair_moves_out_a_file_libvirt_cannot_parse(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    undefined_entity(env)
    env.file("s3").chmod(0o644)  # moved out, so no mode to set
    assert "s3" not in Lab(env.root).view(DOMAIN).names, "the premise: libvirt skips this file"
    original = env.file("s3").read_bytes()
    found = check(capsys, env, "--json")
    assert {codes.UNPARSABLE, codes.MODE_TOO_WIDE} <= found.codes and "libvirt loads it" not in found.out, found
    result, changes = repair(capsys, env)
    assert repairs(result) == [(codes.UNPARSABLE, str(env.file("s3")), True)], result
    assert not [note for note in result.data["notes"] if "not repaired" in note], result
    assert list(attic_files(changes, env).values()) == [original]
    assert not env.file("s3").exists()


# --------------------------------------------------------------------------- A4: a rebuild reads the folder again

def describe(env: Env) -> None:
    """libvirt rewrites s3 with a description."""
    content_differs(env)


def test_repair_never_takes_the_store_back_to_the_scanned_state(env: Env) -> None:
    edit_store(env, lambda root: root.remove(stored(root, "b1")))
    done = scanned(env)
    assert done.codes == {codes.ONLY_IN_FOLDER}
    describe(env)
    consolidate(env)  # while the repair waited: the store is newer than the scan
    newer = env.store_file.read_bytes()
    assert b"<description>edited</description>" in newer
    done.repair()
    assert env.store_file.read_bytes() == newer, "the store went back to the state the scan saw"
    assert list(env.attic.iterdir()) == [], "the newer store file was moved to the attic"
    assert done.report.repairs == [], done.report.repairs
    assert any("already holds libvirt's folder" in note for note in done.report.notes), done.report.notes


def test_repair_rebuilds_from_the_folder_as_it_is_now(env: Env) -> None:
    edit_store(env, lambda root: root.remove(stored(root, "b1")))
    old = env.store_file.read_bytes()
    done = scanned(env)
    describe(env)  # after the scan, not committed by anyone
    done.repair()
    rebuilt = env.store_file.read_bytes()
    assert b"<description>edited</description>" in rebuilt and b"<name>b1</name>" in rebuilt, \
        "the store was rebuilt from the folder as the scan saw it, not as it is"
    assert [path.read_bytes() for path in env.attic.iterdir()] == [old]
    assert [(r.code, r.done) for r in done.report.repairs] == [(codes.STORE_MISSING, True)]


def test_repair_does_not_rebuild_from_a_folder_broken_since_the_scan(env: Env) -> None:
    edit_store(env, lambda root: root.remove(stored(root, "b1")))
    old = env.store_file.read_bytes()
    done = scanned(env)
    set_active(env, "s3", "1")  # two current now
    done.repair()
    assert env.store_file.read_bytes() == old and list(env.attic.iterdir()) == []
    assert done.report.repairs == []
    assert any("changed since the scan" in note and "not rebuilt" in note for note in done.report.notes), \
        done.report.notes


def test_repair_does_not_rebuild_from_a_folder_emptied_since_the_scan(env: Env) -> None:
    edit_store(env, lambda root: root.remove(stored(root, "b1")))
    old = env.store_file.read_bytes()
    done = scanned(env)
    for path in env.folder.iterdir():
        path.unlink()
    done.repair()
    assert env.store_file.read_bytes() == old and list(env.attic.iterdir()) == []
    assert any("emptied since the scan" in note for note in done.report.notes), done.report.notes


def test_repair_waits_for_the_domain_lock_then_gives_up(env: Env) -> None:
    edit_store(env, lambda root: root.remove(stored(root, "b1")))
    old = env.store_file.read_bytes()
    done = scanned(env, lock_timeout=0.1)
    lock = env.state / "locks" / f"snapshots.{DOMAIN}.lock"
    with open(lock, "a+b") as held:  # another snapstore process commits this domain
        fcntl.flock(held, fcntl.LOCK_EX)
        done.repair()
    assert env.store_file.read_bytes() == old and list(env.attic.iterdir()) == []
    assert any("not rebuilt" in note and "lock held" in note for note in done.report.notes), done.report.notes


# --------------------------------------------------------------------------- A16: tree rules broken in the store file

def store_missing_parent(env: Env) -> None:
    edit_store(env, lambda root: setattr(stored(root, "s3").find("parent/name"), "text", "ghost"))


def store_cycle(env: Env) -> None:
    def change(root: etree._Element) -> None:
        parent = etree.SubElement(stored(root, "s1"), "parent")
        etree.SubElement(parent, "name").text = "s3"
    edit_store(env, change)


@pytest.mark.parametrize("damage,own", [
    (store_duplicate, codes.DUPLICATE),
    (store_missing_parent, codes.MISSING_PARENT),
    (store_cycle, codes.CYCLE),
    (store_other_domain, codes.WRONG_ROOT),
], ids=["duplicate", "missing-parent", "cycle", "other-domain"])
def test_repair_rebuilds_a_store_file_that_breaks_a_tree_rule(env: Env, corpus: Env,
                                                             capsys: pytest.CaptureFixture[str],
                                                             damage: Callable[[Env], None], own: str) -> None:
    damage(env)
    damaged = env.store_file.read_bytes()
    found = check(capsys, env, "--json")
    assert own in found.codes and all(f["path"] == str(env.store_file) for f in found.data["findings"]
                                      if f["code"] == own), found
    result, changes = repair(capsys, env)
    assert repairs(result) == [(codes.STORE_MISSING, str(env.store_file), True)], result
    assert env.store_file.read_bytes() == corpus.store_file.read_bytes()
    assert list(attic_files(changes, env).values()) == [damaged]
    assert result.code == 0 and result.data["findings"] == [], result


# --------------------------------------------------------------------------- A20: the summary counts

def without_active(path: Path) -> None:
    data = path.read_text()
    start = data.index("  <active>")
    path.write_text(data[:start] + data[data.index("\n", start) + 1:])


def test_summary_counts_a_domain_refused_for_one_bad_file(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    folder = env.snapshots / "dom"
    folder.mkdir(mode=0o700)
    shutil.copy2(env.file("t1", OTHER), folder / "t1.xml")
    without_active(folder / "t1.xml")
    result = check(capsys, env, "dom")
    assert result.code == 3 and [line.split()[1] for line in result.out.splitlines()
                                 if line.startswith("  error")] == [codes.BAD_INTERNAL_ELEMENT], result
    assert result.out.splitlines()[-1] == "summary: 1 errors, 0 warnings in 1 domains (1 snapshots, 0 checkpoints)"


def test_summary_counts_every_moment_file(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    without_active(env.file("t1", OTHER))  # vm 2é: its only file refused
    unparsable(env)                        # vm1: one of four files refused
    summary = check(capsys, env, "--json", "--no-disks").data["summary"]
    assert (summary["domains"], summary["snapshots"], summary["checkpoints"]) == (2, 5, 0), summary


def test_summary_counts_a_store_file_without_a_folder(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(env.snapshots / OTHER)
    result = check(capsys, env, "--no-disks")
    assert result.out.splitlines()[-1].endswith(" in 2 domains (5 snapshots, 0 checkpoints)"), result


# --------------------------------------------------------------------------- A21: SS108 lines

def test_schema_finding_names_a_line_of_the_file(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    schema_invalid(env)
    lines = env.file("s3").read_text().splitlines()
    line = next(number for number, text in enumerate(lines, 1) if "<state>bogus</state>" in text)
    assert line > 7, "libvirt's header comment comes first"
    result = check(capsys, env, "--json", "--no-disks")
    invalid = [f for f in result.data["findings"] if f["code"] == codes.SCHEMA_INVALID]
    assert [f["path"] for f in invalid] == [str(env.file("s3"))], result
    assert invalid[0]["message"].startswith(f"line {line}: "), (
        f"SS108 must name line {line} of {env.file('s3')} ({lines[line - 1].strip()}): {invalid[0]['message']}")
