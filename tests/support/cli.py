"""The one way tests run snapstore's command line, and what a run gave.

``in_process`` calls ``cli.main`` (fast; stdout and stderr from pytest's
capsys); ``console`` runs the installed console script in a fresh process,
as an operator does: needed where a run could hang (a timeout fails the
test), where a process may open one embedded libvirt root only, or behind
strace or setpriv.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from snapstore import cli

WARNING = "snapstore: warning: "
SCRIPT = Path(sys.executable).with_name("snapstore")  # the venv's console script
TIMEOUT = 60.0


@dataclasses.dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.err.splitlines()

    @property
    def errors(self) -> list[str]:
        return [line for line in self.lines if not line.startswith(WARNING)]

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.lines if line.startswith(WARNING)]

    @property
    def data(self) -> dict[str, Any]:
        return json.loads(self.out)  # type: ignore[no-any-return]

    @property
    def codes(self) -> set[str]:
        """Finding codes of a `check --json` run."""
        return {f["code"] for f in self.data["findings"]}

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.out}--- stderr ---\n{self.err}"


def in_process(capsys: pytest.CaptureFixture[str], argv: Sequence[str]) -> Result:
    capsys.readouterr()  # drop anything printed before
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return Result(code, out, err)


def console(argv: Sequence[str], *, timeout: float = TIMEOUT, stdin: str | bytes | None = None,
            prefix: Sequence[str] = (), env: dict[str, str] | None = None) -> Result:
    """The console script (behind ``prefix``, e.g. strace or setpriv); a run
    that does not end within ``timeout`` fails the test instead of hanging it."""
    binary = isinstance(stdin, bytes)
    try:
        done = subprocess.run([*prefix, str(SCRIPT), *argv], capture_output=True, timeout=timeout, env=env,
                              text=not binary, input=stdin,
                              stdin=subprocess.DEVNULL if stdin is None else None)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"snapstore {' '.join(argv)} did not finish within {timeout} s") from None
    if binary:
        return Result(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))
    return Result(done.returncode, done.stdout, done.stderr)


PREFIX = "snapstore: "


def assert_clean_failure(result: Result, code: int, expected: list[tuple[str | tuple[str, ...], ...]]) -> None:
    """Exit ``code``; stderr is one ``snapstore: `` line per expected problem.

    Each entry of ``expected`` is a group of substrings that must all appear in
    one and the same error line (the file or snapshot, and the rule); every
    error line matches exactly one group (a tuple inside a group lists
    acceptable alternatives). Warnings may accompany the errors
    but must be single ``snapstore: warning: `` lines too.
    """
    context = f"exit {result.code}\n--- stderr ---\n{result.err}--- stdout ---\n{result.out}"
    assert "Traceback" not in result.err, f"a traceback reached stderr:\n{context}"
    assert "internal error" not in result.err, f"an unexpected exception was reported:\n{context}"
    assert result.code == code, f"expected exit {code}:\n{context}"
    for line in result.lines:
        assert line.startswith(PREFIX), f"stderr line does not start with {PREFIX!r}: {line!r}\n{context}"
    unmatched = list(result.errors)
    for group in expected:
        hits = [line for line in unmatched if all(_holds(line, part) for part in group)]
        assert hits, f"no error line holds all of {group}:\n{context}"
        unmatched.remove(hits[0])
    assert not unmatched, f"expected exactly {len(expected)} error line(s), got extra {unmatched}:\n{context}"


def _holds(line: str, part: str | tuple[str, ...]) -> bool:
    """``part`` is a substring, or a tuple of acceptable alternatives."""
    return any(alt in line for alt in part) if isinstance(part, tuple) else part in line
