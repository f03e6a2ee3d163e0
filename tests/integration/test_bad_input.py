"""Bad input gets one clear line per problem, the documented exit code, no
traceback, no hang, and the last good consolidated file stays byte-identical.

DESIGN §2 (validation, hardened parsing), §3 (store), §4 (exit codes: 1 refused
or problems found, 2 usage or environment error; errors are one line on
stderr, never a traceback).

Every test first commits a good state (vm1: s1 <- s2 <- s3, current s3) with
``consolidate``, then damages the legacy folder or the command line and runs
again. Most runs are in-process (``snapstore.cli.main``); the ones that could
hang or that must prove what reaches a terminal go through the real console
script with a subprocess timeout.
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import samples
from support import cli as support_cli
from support.cli import Result, assert_clean_failure
from support.folders import Env

from snapstore import codes, kinds, model
from snapstore.formats import consolidated, legacy

REPO = Path(__file__).resolve().parents[2]
LIBVIRTD_PIDFILE = Path("/run/libvirt/libvirtd.pid")
SUBPROCESS_TIMEOUT = 30
PREFIX = support_cli.PREFIX

# --------------------------------------------------------------------------- harness
# Env, the `env` fixture (vm1: s1 <- s2 <- s3 committed) and assert_clean_failure: tests/support.

run = support_cli.in_process


def run_script(argv: list[str], timeout: float = SUBPROCESS_TIMEOUT) -> Result:
    return support_cli.console(argv, timeout=timeout)


def folder_state(folder: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Everything that would show a write: inode, mode, mtime and bytes of every entry."""
    state = {}
    for entry in sorted(folder.iterdir()):
        info = entry.lstat()
        data = entry.read_bytes() if entry.is_file() and not entry.is_symlink() else b""
        state[entry.name] = (info.st_ino, info.st_mode, info.st_mtime_ns, data)
    return state


def libvirtd_pid() -> int:
    """Debian's system libvirtd, started with scripts/libvirtd when it is not running."""
    def alive() -> int | None:
        try:
            pid = int(LIBVIRTD_PIDFILE.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    pid = alive()
    if pid is None:
        subprocess.run([str(REPO / "scripts" / "libvirtd")], check=True, timeout=60)
        pid = alive()
    assert pid is not None, f"libvirtd is not running (no live pid in {LIBVIRTD_PIDFILE})"
    return pid


# --------------------------------------------------------------------------- damaged legacy folders

SECRET = "SNAPSTORE-XXE-MARKER-4711"


def _unparsable(env: Env) -> list[tuple[str, ...]]:
    (env.folder / "s4.xml").write_bytes(samples.snapshot_xml("s4", "s3")[:-40])  # truncated write
    return [(str(env.folder / "s4.xml"), "not well-formed XML")]


def _two_active(env: Env) -> list[tuple[str, ...]]:
    (env.folder / "s1.xml").write_bytes(samples.snapshot_xml("s1", None, active=True, created=1700000000))
    return [("2 snapshots are marked current", "'s1'", "'s3'", codes.SEVERAL_CURRENT)]


def _missing_parent(env: Env) -> list[tuple[str, ...]]:
    (env.folder / "s4.xml").write_bytes(samples.snapshot_xml("s4", "ghost"))
    return [("'s4'", "parent 'ghost' does not exist", codes.MISSING_PARENT)]


def _cycle(env: Env) -> list[tuple[str, ...]]:
    (env.folder / "c1.xml").write_bytes(samples.snapshot_xml("c1", "c2"))
    (env.folder / "c2.xml").write_bytes(samples.snapshot_xml("c2", "c1"))
    return [("'c1'", "cycle", codes.CYCLE), ("'c2'", "cycle", codes.CYCLE)]


def _self_cycle(env: Env) -> list[tuple[str, ...]]:
    (env.folder / "c1.xml").write_bytes(samples.snapshot_xml("c1", "c1"))
    return [("'c1'", "cycle", codes.CYCLE)]


def _duplicate(env: Env) -> list[tuple[str, ...]]:
    (env.folder / "copy-of-s2.xml").write_bytes(samples.snapshot_xml("s2", "s1"))
    return [("'s2'", "defined more than once", codes.DUPLICATE)]


def _wrong_root(env: Env) -> list[tuple[str, ...]]:
    (env.folder / "s4.xml").write_bytes(samples.snapshot_xml("s4", "s3").replace(b"domainsnapshot",
                                                                                 b"domaincheckpoint"))
    return [(str(env.folder / "s4.xml"), "root element is <domaincheckpoint>", "expected <domainsnapshot>")]


def _xxe(env: Env) -> list[tuple[str, ...]]:
    secret = env.tmp / "secret.txt"
    secret.write_text(SECRET)
    data = samples.snapshot_xml("PLACEHOLDER", "s3").decode().replace("PLACEHOLDER", "&xxe;")
    doctype = f'<?xml version="1.0"?>\n<!DOCTYPE domainsnapshot [<!ENTITY xxe SYSTEM "file://{secret}">]>\n'
    (env.folder / "s4.xml").write_text(doctype + data)
    return [(str(env.folder / "s4.xml"), "DOCTYPE")]


def _billion_laughs(env: Env) -> list[tuple[str, ...]]:
    entities = '<!ENTITY a "lollollollol">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9))
    data = samples.snapshot_xml("s4", "s3", description="PLACEHOLDER").decode().replace("PLACEHOLDER", "&j;")
    (env.folder / "s4.xml").write_text(f'<?xml version="1.0"?>\n<!DOCTYPE lolz [{entities}]>\n{data}')
    # Refused either by snapstore's DOCTYPE rule or, earlier, by libxml2's own
    # amplification guard; both are one line naming the file.
    return [(str(env.folder / "s4.xml"), ("DOCTYPE", "entity amplification"))]


def _two_mib(env: Env) -> list[tuple[str, ...]]:
    data = samples.snapshot_xml("s4", "s3", description="x" * (2 << 20))
    (env.folder / "s4.xml").write_bytes(data)
    return [(str(env.folder / "s4.xml"), f"{len(data)} bytes", "1048576-byte limit")]


def _symlink(env: Env) -> list[tuple[str, ...]]:
    elsewhere = env.tmp / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "s4.xml"
    target.write_bytes(samples.snapshot_xml("s4", "s3"))  # a valid snapshot: only the link is wrong
    target.chmod(0o600)
    (env.folder / "s4.xml").symlink_to(target)
    return [(str(env.folder / "s4.xml"), "symlink, not followed")]


def _fifo(env: Env) -> list[tuple[str, ...]]:
    os.mkfifo(env.folder / "s4.xml", 0o600)
    return [(str(env.folder / "s4.xml"), "FIFO", "not a regular file")]


def _directory(env: Env) -> list[tuple[str, ...]]:
    (env.folder / "s4.xml").mkdir()
    return [(str(env.folder / "s4.xml"), "directory", "not a regular file")]


def _hidden(env: Env) -> list[tuple[str, ...]]:
    (env.folder / ".hidden.xml").write_bytes(samples.snapshot_xml("s4", "s3"))
    return [(str(env.folder / ".hidden.xml"), "starts with '.'")]


def _several(env: Env) -> list[tuple[str, ...]]:
    """Validation is all-or-nothing and reports every problem, each on its own line."""
    return _unparsable(env) + _missing_parent_s5(env) + _hidden(env)


def _missing_parent_s5(env: Env) -> list[tuple[str, ...]]:
    (env.folder / "s5.xml").write_bytes(samples.snapshot_xml("s5", "ghost"))
    return [("'s5'", "parent 'ghost' does not exist", codes.MISSING_PARENT)]


DAMAGE: dict[str, Callable[[Env], list[tuple[str, ...]]]] = {
    "unparsable": _unparsable,
    "two-active": _two_active,
    "missing-parent": _missing_parent,
    "cycle": _cycle,
    "self-cycle": _self_cycle,
    "duplicate-name": _duplicate,
    "wrong-root": _wrong_root,
    "xxe": _xxe,
    "billion-laughs": _billion_laughs,
    "2-MiB": _two_mib,
    "symlink": _symlink,
    "directory": _directory,
    "hidden": _hidden,
    "several": _several,
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_damaged_folder_is_refused_and_store_kept(env: Env, capsys: pytest.CaptureFixture[str],
                                                  damage: str) -> None:
    expected = DAMAGE[damage](env)
    result = run(capsys, env.argv("consolidate", "vm1"))
    assert_clean_failure(result, 1, expected)
    assert SECRET not in result.err + result.out
    env.assert_store_unchanged()
    # --dry-run validates the same way and reports the same problems
    assert_clean_failure(run(capsys, env.argv("consolidate", "--dry-run", "vm1")), 1, expected)
    env.assert_store_unchanged()


def test_duplicate_name_also_warns_which_file_holds_it(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    _duplicate(env)
    result = run(capsys, env.argv("consolidate", "vm1"))
    assert any(str(env.folder / "copy-of-s2.xml") in line and "'s2'" in line for line in result.warnings), result


def test_symlink_target_is_not_read(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    # The link points at a file that would be a perfectly valid s4: following it
    # would make consolidation succeed. It must not.
    _symlink(env)
    result = run(capsys, env.argv("consolidate", "vm1"))
    assert result.code == 1 and "s4" not in result.out, result
    env.assert_store_unchanged()


def test_folder_is_a_symlink_is_refused(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    moved = env.tmp / "real-vm2"
    samples.write_folder(moved, [("t1", None)], current="t1")
    (env.libvirt / "vm2").symlink_to(moved, target_is_directory=True)
    result = run(capsys, env.argv("consolidate", "vm2"))
    assert_clean_failure(result, 2, [(str(env.libvirt / "vm2"), "symlink")])
    assert not (env.state / "snapshots" / "vm2.xml").exists()


# --------------------------------------------------------------------------- through the real console script

SCRIPT_CASES = {
    "unparsable": (_unparsable, 1),
    "fifo": (_fifo, 1),
    "xxe": (_xxe, 1),
    "billion-laughs": (_billion_laughs, 1),
    "symlink": (_symlink, 1),
    "2-MiB": (_two_mib, 1),
    "cycle": (_cycle, 1),
}


@pytest.mark.parametrize("damage", list(SCRIPT_CASES), ids=list(SCRIPT_CASES))
def test_console_script_gives_lines_not_tracebacks(env: Env, damage: str) -> None:
    make, code = SCRIPT_CASES[damage]
    expected = make(env)
    result = run_script(env.argv("consolidate", "vm1"))
    assert_clean_failure(result, code, expected)
    assert SECRET not in result.err + result.out
    env.assert_store_unchanged()


def test_fifo_in_folder_does_not_block_even_with_all(env: Env) -> None:
    _fifo(env)
    result = run_script(env.argv("consolidate", "--all"))
    assert_clean_failure(result, 1, [(str(env.folder / "s4.xml"), "FIFO")])
    env.assert_store_unchanged()


def test_console_script_environment_errors(env: Env, tmp_path: Path) -> None:
    blocker = tmp_path / "x" / "file"
    blocker.parent.mkdir()
    blocker.write_text("a regular file, so nothing can be created under it, even by root\n")
    bad_state = blocker / "state"
    result = run_script(env.argv("consolidate", "vm1", state=bad_state))
    assert_clean_failure(result, 2, [(str(bad_state),)])
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("libvirt_dirr = '/nowhere'\n")
    result = run_script(["--config", str(unknown), "--state-dir", str(env.state), "list", "vm1"])
    assert_clean_failure(result, 2, [(str(unknown), "unknown setting 'libvirt_dirr'")])
    env.assert_store_unchanged()


def test_console_script_live_root_refusal(env: Env) -> None:
    pid = libvirtd_pid()
    result = run_script(env.argv("expand", "vm1"))
    assert_clean_failure(result, 1, [(str(env.libvirt), f"pid {pid}", "--force")])


# --------------------------------------------------------------------------- domains, settings, usage

@pytest.mark.parametrize("command", [["consolidate", "vm9"], ["consolidate", "vm1", "vm9"],
                                     ["expand", "vm9"], ["list", "vm9"]],
                         ids=["consolidate", "consolidate-one-good-one-unknown", "expand", "list"])
def test_unknown_domain_exits_2(env: Env, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    result = run(capsys, env.argv(*command))
    assert_clean_failure(result, 2, [("vm9", "unknown domain")])
    env.assert_store_unchanged()
    assert not (env.state / "snapshots" / "vm9.xml").exists()


@pytest.mark.parametrize("domain", ["..", ".", "a/b", ""])
def test_domain_names_that_are_not_folders_exit_2(env: Env, capsys: pytest.CaptureFixture[str], domain: str) -> None:
    result = run(capsys, env.argv("consolidate", domain))
    assert_clean_failure(result, 2, [("unknown domain",)])
    env.assert_store_unchanged()


def test_vanished_folder_keeps_store_file(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    for path in env.folder.iterdir():
        path.unlink()
    env.folder.rmdir()
    result = run(capsys, env.argv("consolidate", "vm1"))
    assert_clean_failure(result, 2, [("vm1", "unknown domain", str(env.folder))])
    env.assert_store_unchanged()


@pytest.mark.parametrize("command", [["consolidate", "vm1"], ["consolidate", "--dry-run", "vm1"],
                                     ["consolidate", "--all"], ["expand", "vm1", "--into", "OUT"],
                                     ["list", "vm1"]],
                         ids=["consolidate", "consolidate-dry-run", "consolidate-all", "expand", "list"])
def test_unwritable_state_dir_exits_2(env: Env, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      command: list[str]) -> None:
    blocker = tmp_path / "x" / "file"
    blocker.parent.mkdir()
    blocker.write_text("not a folder\n")
    bad_state = blocker / "state"
    command = [str(tmp_path / "out") if part == "OUT" else part for part in command]
    result = run(capsys, env.argv(*command, state=bad_state))
    assert_clean_failure(result, 2, [(str(bad_state),)])
    assert blocker.read_text() == "not a folder\n"
    assert not (tmp_path / "out").exists()
    env.assert_store_unchanged()


@pytest.mark.parametrize("content, reason", [
    (None, "no such file"),
    ("colour = 'blue'\n", "unknown setting 'colour'"),
    ("state_dir = 3\n", "setting 'state_dir'"),
    ("state_dir = [\n", "not valid TOML"),
    ("DIR", "cannot be read"),
], ids=["missing", "unknown-key", "wrong-type", "not-toml", "a-directory"])
def test_bad_config_exits_2(env: Env, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                            content: str | None, reason: str) -> None:
    path = tmp_path / "settings.toml"
    if content == "DIR":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    argv = env.argv("consolidate", "vm1")
    argv[1] = str(path)
    result = run(capsys, argv)
    assert_clean_failure(result, 2, [(str(path), reason)])
    env.assert_store_unchanged()


def test_dry_run_before_the_state_folder_exists(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """A dry run writes nothing, so a host where snapstore never ran (no state
    folder yet, as after installing it) is no environment error: it validates
    the folder and says what it would write."""
    fresh = env.tmp / "fresh-state"
    result = run(capsys, env.argv("consolidate", "--dry-run", "vm1", state=fresh))
    assert result.code == 0 and "would write" in result.out, (
        "regression: 'consolidate --dry-run' on a state folder that does not exist yet fails with "
        f"exit {result.code}: {result.err.strip()!r}; Store.replace(dry_run=True) still takes the "
        "lock, whose file under <state>/locks/ only Store.prepare() creates, and run() skips "
        "prepare() for a dry run")
    assert not (fresh / "snapshots" / "vm1.xml").exists()


@pytest.mark.parametrize("args", [[], ["--all", "vm1"], ["--dry-run"]], ids=["neither", "both", "dry-run-only"])
def test_consolidate_needs_domains_or_all(env: Env, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    result = run(capsys, env.argv("consolidate", *args))
    assert_clean_failure(result, 2, [("--all",)])
    assert result.out == ""
    env.assert_store_unchanged()


# --------------------------------------------------------------------------- expand

def _moment(name: str, parent: str | None) -> model.Moment:
    return legacy.parse_legacy(samples.snapshot_xml(name, parent), kinds.SNAPSHOT, name).moment


def test_expand_refuses_names_that_cannot_be_file_names(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    tree = model.Tree(kinds.SNAPSHOT, "vm1", [_moment("a/b", None), _moment(".x", "a/b")], "a/b")
    assert tree.validate() == []
    data = consolidated.format_consolidated(tree)
    env.store_file.write_bytes(data)
    env.good = data
    into = env.tmp / "out"
    before_live = folder_state(env.folder)
    before_state = {p.relative_to(env.state): p.read_bytes() if p.is_file() else None for p in env.state.rglob("*")}
    for extra in ([], ["--force"], ["--prune", "--force"]):
        result = run(capsys, env.argv("expand", "vm1", "--into", str(into), *extra))
        assert_clean_failure(result, 1, [("vm1", "'a/b'", "'.x'", "cannot be libvirt file names")])
        assert not into.exists(), f"expand wrote {into} although it refused"
    # into libvirt's own root too (the name check comes first, whatever libvirtd does)
    result = run(capsys, env.argv("expand", "vm1", "--force"))
    assert_clean_failure(result, 1, [("vm1", "'a/b'", "'.x'")])
    assert folder_state(env.folder) == before_live
    after_state = {p.relative_to(env.state): p.read_bytes() if p.is_file() else None for p in env.state.rglob("*")}
    assert after_state == before_state, "expand wrote into the state folder although it refused"
    env.assert_store_unchanged()


def test_expand_refuses_folder_with_extra_file_without_prune(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    into = env.tmp / "out"
    samples.write_folder(into / "vm1", [("s1", None), ("s2", "s1"), ("s3", "s2"), ("old", "s1")], current="s3")
    before = folder_state(into / "vm1")
    result = run(capsys, env.argv("expand", "vm1", "--into", str(into)))
    assert_clean_failure(result, 1, [(str(into / "vm1"), "old.xml", "--prune")])
    assert folder_state(into / "vm1") == before, "the folder changed although expand refused"
    assert sorted(p.name for p in into.iterdir()) == ["vm1"], "a temp folder was left beside the domain folder"
    assert not list((env.state / "attic").iterdir())
    env.assert_store_unchanged()
    # the control: with --prune it goes through and keeps the old files in the attic
    result = run(capsys, env.argv("expand", "vm1", "--into", str(into), "--prune"))
    assert result.code == 0 and "Traceback" not in result.err, result
    assert sorted(p.name for p in (into / "vm1").iterdir()) == ["s1.xml", "s2.xml", "s3.xml"]
    (kept,) = (env.state / "attic").iterdir()
    assert (kept / "old.xml").read_bytes() == before["old.xml"][3]


@pytest.mark.parametrize("spelling", ["default", "into-same", "into-other-spelling"])
def test_expand_into_live_root_refused_while_libvirtd_runs(env: Env, capsys: pytest.CaptureFixture[str],
                                                           spelling: str) -> None:
    pid = libvirtd_pid()
    # Remove the domain folder so that any write would show.
    for path in env.folder.iterdir():
        path.unlink()
    env.folder.rmdir()
    into = {"default": [], "into-same": ["--into", str(env.libvirt)],
            "into-other-spelling": ["--into", str(env.libvirt / ".." / env.libvirt.name)]}[spelling]
    result = run(capsys, env.argv("expand", "vm1", *into))
    assert_clean_failure(result, 1, [(str(env.libvirt), f"pid {pid}", "libvirt is running", "--force")])
    assert not env.folder.exists(), "expand wrote into the live root although it refused"
    assert sorted(p.name for p in env.libvirt.iterdir()) == []
    env.assert_store_unchanged()
    result = run(capsys, env.argv("expand", "vm1", *into, "--force"))
    assert result.code == 0 and result.err == "", result
    assert sorted(p.name for p in env.folder.iterdir()) == ["s1.xml", "s2.xml", "s3.xml"]
    assert b"<active>1</active>" in (env.folder / "s3.xml").read_bytes()


# --------------------------------------------------------------------------- warnings and emptiness

def test_stale_libvirt_temp_warns_and_consolidation_succeeds(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    stale = env.folder / "s3.xml.new"
    stale.write_bytes(samples.snapshot_xml("s3", "s2", active=True)[:50])  # interrupted write
    (env.folder / "s4.xml").write_bytes(samples.snapshot_xml("s4", "s3", created=1700000010))
    result = run(capsys, env.argv("consolidate", "vm1"))
    assert result.code == 0, result
    assert "Traceback" not in result.err
    assert len(result.lines) == 1 and result.warnings == result.lines, \
        f"expected exactly one warning line, got {result.lines}"
    assert str(stale) in result.warnings[0] and "libvirt temp" in result.warnings[0]
    assert "4 snapshots" in result.out
    assert b"<name>s4</name>" in env.store_file.read_bytes()


def test_quiet_hides_the_stale_temp_warning(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    (env.folder / "s3.xml.new").write_bytes(b"")
    result = run(capsys, env.argv("-q", "consolidate", "vm1"))
    assert result.code == 0 and result.err == "", result
    env.assert_store_unchanged()  # nothing changed, so nothing was rewritten


@pytest.mark.parametrize("leftover", [None, "s1.xml.new"], ids=["empty", "only-a-libvirt-temp"])
def test_empty_folder_refused_unless_allow_empty(env: Env, capsys: pytest.CaptureFixture[str],
                                                 leftover: str | None) -> None:
    for path in env.folder.iterdir():
        path.unlink()
    if leftover:
        (env.folder / leftover).write_bytes(b"<dom")
    result = run(capsys, env.argv("consolidate", "vm1"))
    assert_clean_failure(result, 1, [("vm1", "holds 3", "--allow-empty")])
    env.assert_store_unchanged()
    result = run(capsys, env.argv("consolidate", "--all"))
    assert_clean_failure(result, 1, [("vm1", "--allow-empty")])
    env.assert_store_unchanged()
    result = run(capsys, env.argv("consolidate", "--allow-empty", "vm1"))
    assert result.code == 0 and "Traceback" not in result.err, result
    assert consolidated.parse_consolidated(env.store_file.read_bytes(), kinds.SNAPSHOT, "s").moments == []


# --------------------------------------------------------------------------- one line means one line

def test_file_name_with_newline_stays_one_line(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """A file name is untrusted input too: a newline in it must not split the report."""
    (env.folder / "evil\nsnapstore: vm1: all good.xml").write_bytes(b"<domainsnapshot>")
    result = run(capsys, env.argv("consolidate", "vm1"))
    assert result.code == 1
    assert len(result.lines) == 1, (
        "regression: one problem (an unparsable file whose name holds a newline) printed as "
        f"{len(result.lines)} stderr lines, the second forged: {result.lines!r}; "
        "FormatError paths are printed raw (cli/common.report), not escaped like names")
    env.assert_store_unchanged()
