"""Debian's strace around the real binary: trace system calls, inject faults.

``trace`` runs a command under ``strace -f -y`` (every fd argument shown
with its path) and parses the calls. ``sites`` picks, per system call
name, the occurrence numbers (strace counts per syscall and per tracee)
of the calls that touch a folder of the test. ``inject`` runs the same
command again with ``-e inject=NAME:error=ERRNO:when=N`` (or
``signal=SIGKILL``: a crash exactly there) and returns the call that was
tampered with, so a test can check the fault hit the file it aimed at.
``attach`` does the same to the main thread of a running process.
"""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import campaign

# What a commit is made of (DESIGN §3); rename is spelled three ways.
WRITE_PATH = ("openat", "write", "fsync", "fdatasync", "rename", "renameat", "renameat2", "linkat")
# Where a crash can fall: the write path and the calls that make or remove entries.
CRASH_POINTS = (*WRITE_PATH, "mkdir", "mkdirat", "unlink", "unlinkat", "rmdir")
# The history's own calls: the link of the replaced file, its record, pruning.
HISTORY_CALLS = ("openat", "write", "fsync", "linkat", "mkdirat", "unlinkat")
# The fleet outbox's own calls: its folder, the link of the committed file, its record, dropping entries.
OUTBOX_CALLS = ("openat", "write", "fsync", "linkat", "rename", "renameat", "renameat2", "mkdirat", "unlinkat")
ERRNOS = ("EIO", "ENOSPC", "EACCES", "EXDEV")
_LINE = re.compile(r"^(?:(?P<pid>\d+)\s+)?(?P<name>\w+)\((?P<rest>.*)$")  # no pid without -f
_ENV = {**os.environ, "PYTHONHASHSEED": "0"}  # the same calls in the same order, run after run


@dataclasses.dataclass(frozen=True)
class Call:
    pid: int
    name: str
    args: str
    result: str

    @property
    def injected(self) -> bool:
        return "(INJECTED)" in self.result

    @property
    def fd_arg(self) -> str:
        return self.args.split(",", 1)[0]

    def touches(self, folder: Path) -> bool:
        """True when the call names a path below ``folder``, or ``folder`` itself
        as its parent's fd and its name (``mkdirat(3</a>, "b", ...)``); never stdout or stderr."""
        if self.name == "write" and self.fd_arg.split("<", 1)[0] in ("1", "2"):
            return False
        if fd_path(self) == str(folder.parent) and self.args.split(", ", 2)[1:2] == [f'"{folder.name}"']:
            return True
        return str(folder) in self.args or str(folder) in self.result

    def __str__(self) -> str:
        return f"{self.name}({self.args}) = {self.result}"


@dataclasses.dataclass(frozen=True)
class Site:
    """The ``when``-th call of ``name``: what one injection aims at."""

    name: str
    when: int
    call: Call
    on_folder: bool = False  # an fsync of a folder's fd (the commit's last step)

    @property
    def label(self) -> str:
        return f"{self.name}{'(folder)' if self.on_folder else ''}#{self.when}"

    @property
    def shape(self) -> tuple[str, bool, bool, str]:
        """Calls of one shape fail the same way: reading the 2nd or the 9th file of a folder."""
        where = fd_path(self.call) + self.call.args.split(",", 2)[1] if self.name == "openat" else fd_path(self.call)
        return self.name, self.on_folder, "O_CREAT" in self.call.args, re.sub(r"[^/<>\"]*\d[^/<>\"]*", "#", where)


def choose(targets: list[Site], full: bool, most: int = 12) -> list[Site]:
    """Every site, or in quick mode one site of each shape, at most ``most``
    spread evenly from the first call to the last."""
    if full:
        return targets
    first: dict[tuple, Site] = {}
    for site in targets:
        first.setdefault(site.shape, site)
    shapes = list(first.values())
    if len(shapes) <= most:
        return shapes
    return [shapes[round(i * (len(shapes) - 1) / (most - 1))] for i in range(most)]


def plan(targets: list[Site], full: bool) -> list[tuple[Site, str]]:
    """(site, errno) runs: every site with every errno, or in quick mode a
    sample of sites (``choose``) with one errno each, in rotation."""
    if full:
        return [(site, errno) for site in targets for errno in ERRNOS]
    return [(site, ERRNOS[i % len(ERRNOS)]) for i, site in enumerate(choose(targets, full))]


def run_plan(runs: list[tuple[Site, str]], one: Callable[[Site, str], None], figure: str) -> None:
    """Each run in turn; a broken guarantee does not stop the others: the test
    fails once at the end, naming every failing run and the first message of each call."""
    broken: dict[str, str] = {}
    for site, errno in runs:
        try:
            one(site, errno)
        except AssertionError as e:
            broken.setdefault(site.label, f"{errno}: {e}")
        campaign.count(figure)
    campaign.count(f"{figure}: runs that broke a guarantee", len(broken))
    assert not broken, f"BUG: {len(broken)} faulted call(s) broke a guarantee: " + "\n\n".join(
        f"[{label}] {message}" for label, message in broken.items())


def fd_path(call: Call) -> str:
    """The path of a call's first argument when it is an fd (``5</a/b>``), else ''."""
    first = call.fd_arg
    return first.partition("<")[2][:-1] if first[:1].isdigit() and first.endswith(">") else ""


def parse(text: str) -> list[Call]:
    """Complete calls in order; an interrupted call is joined with its resumption."""
    calls, pending = [], {}
    for line in text.splitlines():
        if " resumed>" in line:
            pid = int(line.split()[0])
            line = pending.pop(pid, "") + line.split(" resumed>", 1)[1]
        elif line.endswith("<unfinished ...>"):
            pending[int(line.split()[0])] = line[: -len("<unfinished ...>")].rstrip()
            continue
        match = _LINE.match(line)
        if not match or ") = " not in match["rest"]:
            continue
        args, _, result = match["rest"].rpartition(") = ")
        calls.append(Call(int(match["pid"] or 0), match["name"], args, result))
    return calls


def sites(calls: list[Call], folder: Path, names: tuple[str, ...] = WRITE_PATH) -> list[Site]:
    """Every call of ``names`` that touches ``folder``, with its occurrence number."""
    seen: dict[tuple[int, str], int] = {}
    opened: dict[tuple[int, str], str] = {}  # (pid, fd) -> flags of the openat that returned it
    found = []
    for call in calls:
        if call.name == "openat":
            opened[call.pid, call.result.split("<", 1)[0]] = call.args
        if call.name not in names:
            continue
        when = seen[call.pid, call.name] = seen.get((call.pid, call.name), 0) + 1
        if call.touches(folder):
            fd = call.fd_arg.split("<", 1)[0]
            on_folder = call.name == "fsync" and "O_DIRECTORY" in opened.get((call.pid, fd), "")
            found.append(Site(call.name, when, call, on_folder))
    return found


def _strace(log: Path, names: tuple[str, ...], extra: tuple[str, ...]) -> list[str]:
    return ["strace", "-f", "-qq", "-y", "-s", "256", "-o", str(log), "-e", f"trace={','.join(names)}", *extra]


def trace(argv: list[str], log: Path, names: tuple[str, ...] = WRITE_PATH,
          extra: tuple[str, ...] = ()) -> tuple[campaign.Result, list[Call]]:
    """The console script under strace: its result and its calls."""
    result = campaign.run_script(argv, prefix=[*_strace(log, names, extra), "--"], env=_ENV)
    return result, parse(log.read_text(errors="replace"))


def inject_option(site: Site, error: str | None = None, kill: bool = False) -> tuple[str, ...]:
    fault = f"error={error}" if error else "error=EINTR:signal=SIGKILL" if kill else ""
    return ("-e", f"inject={site.name}:{fault}:when={site.when}")


def inject(argv: list[str], log: Path, site: Site, error: str | None = None,
           kill: bool = False) -> tuple[campaign.Result, Call | None]:
    """Run again with ``site`` failing with ``error`` (or the process killed
    there, the call not made); the result and the call that was hit."""
    result, calls = trace(argv, log, (site.name,), inject_option(site, error, kill))
    hit = [call for call in calls if call.injected]
    if kill and not hit:  # a killed call has no result line: take the last one started
        text = log.read_text(errors="replace").splitlines()
        started = [line for line in text if f" {site.name}(" in line]
        hit = [Call(0, site.name, started[-1], "(killed)")] if started else []
    return result, hit[0] if hit else None


@contextmanager
def attach(pid: int, log: Path, names: tuple[str, ...], extra: tuple[str, ...] = ()) -> Iterator[Callable[[],
                                                                                                          list[Call]]]:
    """strace attached to ``pid``'s main thread only (no -f: the daemon's
    watcher threads keep their own counters and are left alone)."""
    command = [part for part in _strace(log, names, extra) if part != "-f"]
    tracer = subprocess.Popen([*command, "-p", str(pid)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while _tracer_of(pid) != tracer.pid:
        if time.monotonic() > deadline or tracer.poll() is not None:
            tracer.kill()
            raise AssertionError(f"strace could not attach to {pid}: {tracer.stderr.read()!r}")
        time.sleep(0.005)
    try:
        yield lambda: parse(log.read_text(errors="replace"))
    finally:
        tracer.send_signal(signal.SIGINT)  # strace detaches and exits
        tracer.wait(timeout=10)


def _tracer_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return 0
