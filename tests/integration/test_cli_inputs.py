"""Files the command line names: ``restore --from FILE`` is read as every other
input is (no symlink followed, no FIFO waited on, regular files only), and
``expand --into DIR`` makes the folders it creates 0700 whatever the umask.

restore reads --from before it connects, so a refused file never reaches
libvirt; the control runs use libvirt's test driver (``test:///default``,
which holds a domain named ``test``), so no host libvirt is needed.
"""
from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import samples
from support import cli as support_cli
from support.cli import Result

from snapstore import cli

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".venv" / "bin" / "snapstore"
TEST_URI = "test:///default"
DOMAIN = "test"  # the test driver's domain
TIMEOUT = 10  # a FIFO read that blocks fails the test instead of hanging the run


class Env:
    """A consolidated dump of DOMAIN (s1 <- s2, current s2) at ``dump``; ``state``
    is a state folder no restore --from may create."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.config = tmp / "empty.toml"  # defaults only, whatever the host has in /etc
        self.config.write_text("")
        self.libvirt = tmp / "libvirt"
        self.state = tmp / "state"
        self.dump = tmp / "dump.xml"

    def argv(self, *args: str) -> list[str]:
        return ["--config", str(self.config), "--libvirt-dir", str(self.libvirt), "--state-dir", str(self.state),
                *args]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    made = Env(tmp_path)
    samples.write_folder(made.libvirt / DOMAIN, [("s1", None), ("s2", "s1")], current="s2")
    assert cli.main(made.argv("-q", "consolidate", DOMAIN)) == 0
    made.dump.write_bytes((made.state / "snapshots" / f"{DOMAIN}.xml").read_bytes())
    (made.state / "snapshots" / f"{DOMAIN}.xml").unlink()
    yield made


def run_script(argv: list[str], stdin: bytes | None = None) -> Result:
    """The real console script, as an operator runs it."""
    return support_cli.console(argv, timeout=TIMEOUT, stdin=stdin)


def state_files(env: Env) -> list[str]:
    return sorted(str(path.relative_to(env.state)) for path in env.state.rglob("*") if path.is_file())


# --- restore --from ----------------------------------------------------------------------------


def _symlink(env: Env, path: Path) -> str:
    path.symlink_to(env.dump)  # a valid dump behind it: only the link is wrong
    return "is a symlink, not followed"


def _fifo(env: Env, path: Path) -> str:
    os.mkfifo(path, 0o600)  # no writer ever opens it: open() without O_NONBLOCK would wait forever
    return "is a FIFO, not a regular file"


def _socket(env: Env, path: Path) -> str:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.close()
    return "is a socket, not a regular file"


def _directory(env: Env, path: Path) -> str:
    path.mkdir()
    return "is a directory, not a regular file"


NOT_REGULAR: dict[str, Callable[[Env, Path], str]] = {
    "symlink": _symlink, "fifo": _fifo, "socket": _socket, "directory": _directory}


@pytest.mark.parametrize("kind", NOT_REGULAR)
def test_restore_from_refuses_what_is_not_a_regular_file(env: Env, kind: str) -> None:
    """Exit 1 with one line, as consolidate refuses such a file in a libvirt folder; nothing written."""
    path = env.tmp / f"{kind}.xml"
    reason = NOT_REGULAR[kind](env, path)
    before = state_files(env)
    result = run_script(env.argv("restore", DOMAIN, "--connect", TEST_URI, "--from", str(path)))
    assert result.code == 1, result
    assert result.out == "", result
    (line,) = result.err.splitlines()
    assert line.startswith(f"snapstore: {path}: {reason}"), result
    assert state_files(env) == before


@pytest.mark.parametrize("missing", ["file", "folder"])
def test_restore_from_missing_path_is_an_environment_error(env: Env, missing: str) -> None:
    """Exit 2, as before: the path names nothing (a usage slip, not a bad file)."""
    path = env.tmp / "missing.xml" if missing == "file" else env.tmp / "nowhere" / "dump.xml"
    result = run_script(env.argv("restore", DOMAIN, "--connect", TEST_URI, "--from", str(path)))
    assert result.code == 2, result
    expected = f"{path}: no such file" if missing == "file" else f"{path.parent}: no such folder"
    assert result.err.splitlines() == [f"snapstore: {expected}"], result


def test_restore_from_refuses_a_file_over_the_store_limit(env: Env) -> None:
    env.config.write_text(f"max_store_bytes = {env.dump.stat().st_size - 1}\n")
    result = run_script(env.argv("restore", DOMAIN, "--connect", TEST_URI, "--from", str(env.dump)))
    assert result.code == 1, result
    (line,) = result.err.splitlines()
    assert line.startswith(f"snapstore: {env.dump}: is {env.dump.stat().st_size} bytes, over the "), result


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_restore_from_reads_a_regular_file_and_stdin(env: Env, source: str) -> None:
    """The control: the same dump, as a regular file or on stdin, is read and compared."""
    name, stdin = (str(env.dump), None) if source == "file" else ("-", env.dump.read_bytes())
    result = run_script(env.argv("restore", DOMAIN, "--connect", TEST_URI, "--from", name, "--rewrite-uuid",
                                 "--dry-run"), stdin)
    assert result.code == 0, result
    assert result.out == f"{DOMAIN}: dry run against {TEST_URI}: 2 to define, 0 to replace, 0 already present, " \
                         "would mark s2 current; nothing changed\n", result


# --- expand --into -----------------------------------------------------------------------------


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """The process umask for one in-process run; the old one is put back."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o277], ids=["umask-000", "umask-277"])
def test_expand_into_creates_missing_folders_0700(env: Env, mask: int) -> None:
    """Under umask 000 a mkdir(0o755) made them 0777 (the parent) and 0755; under 277, 0500."""
    assert cli.main(env.argv("-q", "consolidate", DOMAIN)) == 0
    into = env.tmp / "a" / "b"
    with umask(mask):
        assert cli.main(env.argv("-q", "expand", DOMAIN, "--into", str(into))) == 0
    assert (mode(env.tmp / "a"), mode(into)) == (0o700, 0o700)
    assert sorted(path.name for path in (into / DOMAIN).iterdir()) == ["s1.xml", "s2.xml"]


def test_expand_into_leaves_existing_folders_alone(env: Env) -> None:
    assert cli.main(env.argv("-q", "consolidate", DOMAIN)) == 0
    (env.tmp / "a").mkdir()
    (env.tmp / "a").chmod(0o751)
    with umask(0):
        assert cli.main(env.argv("-q", "expand", DOMAIN, "--into", str(env.tmp / "a" / "b" / "c"))) == 0
    assert [mode(env.tmp / "a"), mode(env.tmp / "a" / "b"), mode(env.tmp / "a" / "b" / "c")] == [0o751, 0o700, 0o700]


def test_expand_into_makes_nothing_through_a_dangling_symlink(env: Env) -> None:
    assert cli.main(env.argv("-q", "consolidate", DOMAIN)) == 0
    (env.tmp / "link").symlink_to(env.tmp / "target")
    assert cli.main(env.argv("-q", "expand", DOMAIN, "--into", str(env.tmp / "link" / "b"))) == 2
    assert not (env.tmp / "target").exists()
