"""What every part of the reliability campaign (issue 8) shares.

Mode: ``SNAPSTORE_RELIABILITY=quick`` (the default, bounded, part of the
normal suite) or ``full`` (on demand, ``tests/reliability/run --full``).
Figures: each test adds what it tried (kills, faults, inputs) to FIGURES;
the session writes them to ``SNAPSTORE_RELIABILITY_FIGURES`` when set.

Generations: a deterministic tree per number ``n`` (``generation_files``),
so a checker knows byte for byte what a writer killed at any moment may
have left: the generation committed last, or the one it was committing.
"""
from __future__ import annotations

import abc
import collections
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import samples
from support import cli as support_cli
from support.cli import Result

from snapstore import errors, kinds, legacydir, model
from snapstore.formats import consolidated, legacy

MODE = os.environ.get("SNAPSTORE_RELIABILITY", "quick")
FULL = MODE == "full"
FIGURES: collections.Counter[str] = collections.Counter()
NOTES: dict[str, str] = {}

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).with_name("snapstore")
TEMP_PREFIX = ".snapstore-tmp-"
PREFIX = "snapstore: "
SNAP = kinds.SNAPSHOT


def budget(quick: int, full: int) -> int:
    """How many of something this mode tries."""
    return full if FULL else quick


def count(figure: str, amount: int = 1) -> None:
    FIGURES[figure] += amount


# --------------------------------------------------------------------------- sandboxes


class Sandbox:
    """A libvirt snapshot root, a checkpoint root and a state folder of one test."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.libvirt, self.checkpoints, self.state = base / "libvirt", base / "checkpoint", base / "state"
        self.config = base / "empty.toml"
        for folder in (self.libvirt, self.checkpoints):
            folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text("")  # defaults only, whatever the host has in /etc

    def argv(self, *args: str, config: Path | None = None) -> list[str]:
        return ["--config", str(config or self.config), "--libvirt-dir", str(self.libvirt),
                "--checkpoint-dir", str(self.checkpoints), "--state-dir", str(self.state), *args]

    def store_file(self, domain: str = "vm1") -> Path:
        from snapstore import store
        return store.Store(self.state).path(SNAP, domain)


def run_script(argv: list[str], timeout: float = 60.0, prefix: list[str] | None = None,
               env: dict[str, str] | None = None) -> Result:
    """The real console script (behind ``prefix``, e.g. strace or setpriv)."""
    return support_cli.console(argv, timeout=timeout, prefix=prefix or (), env=env)


def error_problems(result: Result, codes: tuple[int, ...] = (1, 2)) -> list[str]:
    """What keeps a failure from being one an operator can read: exit 1 or 2,
    every stderr line one ``snapstore: `` line, no traceback, no "internal error"."""
    problems = []
    if "Traceback" in result.err:
        problems.append("a traceback reached stderr")
    if "internal error" in result.err:
        problems.append("an unexpected exception ('internal error')")
    if result.code not in codes:
        problems.append(f"exit {result.code}, expected one of {codes}")
    if not result.lines:
        problems.append("no error line")
    problems += [f"stderr line without {PREFIX!r}: {line!r}" for line in result.lines if not line.startswith(PREFIX)]
    return problems


def assert_clear_error(result: Result, *needles: str, codes: tuple[int, ...] = (1, 2)) -> None:
    problems = error_problems(result,
                              codes) + [f"{needle!r} not said" for needle in needles if needle not in result.err]
    assert not problems, f"{'; '.join(problems)}:\n{result}"


def temps_under(*folders: Path) -> list[str]:
    """Every snapstore temp (file or folder) anywhere below the folders."""
    return sorted(str(path) for folder in folders if folder.exists()
                  for path in folder.rglob(f"{TEMP_PREFIX}*"))


def stale_temps(*folders: Path) -> list[str]:
    """The temps of processes that are gone (those of a live writer are its commit in flight)."""
    from snapstore import fsio
    return [path for path in temps_under(*folders) if fsio.is_stale_temp(Path(path).name)]


def history_problems(state: Path) -> list[str]:
    """Every generation kept must parse, and match its record's SHA-256 when it has one."""
    import hashlib
    import json

    problems = []
    for generation in sorted((state / "history").glob("*/*/*.xml")):
        data = generation.read_bytes()
        try:
            parse_store(data, str(generation))
        except AssertionError as e:
            problems.append(str(e))
        record = generation.with_suffix(".json")
        if record.exists() and json.loads(record.read_bytes())["sha256"] != hashlib.sha256(data).hexdigest():
            problems.append(f"data: {generation} does not match its record's SHA-256")
    return problems


def half_attic_copies(state: Path, whole: Callable[[dict[str, bytes]], bool],
                      seen: set[str] | None = None) -> list[str]:
    """Folders in the attic that are not a whole copy (``whole`` says what is);
    ``seen`` remembers the folders checked already, so each is read once."""
    attic, seen = state / "attic", set() if seen is None else seen
    half = []
    for folder in sorted(attic.iterdir()) if attic.exists() else []:
        if not folder.is_dir() or folder.name.startswith(TEMP_PREFIX) or str(folder) in seen:
            continue  # a temp is no copy yet: the temp checks cover it
        seen.add(str(folder))
        files = {path.name: path.read_bytes() for path in folder.iterdir()}
        if not whole(files):
            half.append(f"{folder} ({len(files)} files: {', '.join(sorted(files)) or 'none'})")
    return half


def tree_listing(folder: Path) -> dict[str, bytes | None]:
    """Relative path -> bytes (None for a folder) of everything below ``folder``."""
    return {str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes()
            for path in sorted(folder.rglob("*")) if not path.is_symlink()}


# --------------------------------------------------------------------------- generations


def generation_files(n: int) -> dict[str, bytes]:
    """The legacy folder of generation ``n``: file name -> libvirt-shaped bytes.

    Sizes, shapes and current vary with n; every ninth one carries a 200 kB
    description, so a commit spends long enough in write and fsync to be
    killed there often.
    """
    size = 1 + (n * 7) % 13
    names = [f"g{n}-{i}" if i != 2 else f"g{n} é&<{i}>" for i in range(size)]
    current = names[(n * 5) % size] if n % 4 else None
    files = {}
    for i, name in enumerate(names):
        parent = None if i == 0 else names[i - 1 if (n + i) % 3 else (i - 1) // 2]
        description = "x" * 200_000 if n % 9 == 0 and i == 0 else f"generation {n}"
        files[f"{name}.xml"] = samples.snapshot_xml(name, parent, name == current, 1700000000 + i,
                                                    description=description)
    return files


def tree_of_files(files: dict[str, bytes], domain: str = "vm1", kind: kinds.Kind = SNAP) -> model.Tree:
    parsed = [legacy.parse_legacy(data, kind, name) for name, data in files.items()]
    current = next((entry.moment.name for entry in parsed if entry.active), None)
    return model.Tree(kind, domain, [entry.moment for entry in parsed], current)


def generation_tree(n: int, domain: str = "vm1") -> model.Tree:
    return tree_of_files(generation_files(n), domain)


def generation_bytes(n: int, domain: str = "vm1") -> bytes:
    """The consolidated file generation ``n`` commits (canonical: one byte string)."""
    return consolidated.format_consolidated(generation_tree(n, domain))


def consolidated_of(folder: Path, domain: str) -> bytes:
    """The consolidated file a legacy folder as it is now must give."""
    files = {path.name: path.read_bytes() for path in folder.iterdir()}
    return consolidated.format_consolidated(tree_of_files(files, domain))


def expanded_files(n: int, domain: str = "vm1") -> dict[str, bytes]:
    """What ``expand`` writes into ``<root>/<domain>/`` for generation ``n``."""
    return legacydir.format_files(generation_tree(n, domain))


def write_legacy(folder: Path, files: dict[str, bytes]) -> Path:
    """A libvirt folder holding exactly ``files`` (mode 0600, as libvirt writes them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        if stale.name not in files:
            stale.unlink()
    for name, data in files.items():
        plant(folder, name, data)
    return folder


def plant(folder: Path, name: str, data: bytes) -> Path:
    """Put one file into a folder in one rename, as libvirt does (no reader sees it
    half written); the temp sits two levels up, outside any watched root."""
    temp = folder.parent.parent / f"planting-{os.getpid()}-{name}"
    temp.write_bytes(data)
    os.chmod(temp, 0o600)
    os.rename(temp, folder / name)
    return folder / name


def parse_store(data: bytes, source: str = "store") -> model.Tree:
    """A store file parsed and validated; AssertionError ("data: ...") names what is wrong."""
    try:
        tree = consolidated.parse_consolidated(data, SNAP, source)
    except errors.SnapstoreError as e:
        raise AssertionError(f"data: {source} does not parse: {e}") from e
    problems = tree.validate()
    assert not problems, f"data: {source} is inconsistent: {problems}"
    return tree


class Actor(abc.ABC):
    """A thread repeating ``act()`` until stopped, ``pause()`` seconds apart; an exception
    ends it and stop() raises it again."""

    def __init__(self, name: str) -> None:
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    @abc.abstractmethod
    def act(self) -> None:
        """One step of the actor's work."""

    def pause(self) -> float:
        return 0.0

    def _loop(self) -> None:
        try:
            while not self.stopping.wait(self.pause()):
                self.act()
        except BaseException as e:  # raised again by join()
            self.error = e

    def start(self) -> Actor:
        self._thread.start()
        return self

    def join(self, timeout: float = 120) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"{self._thread.name} did not end within {timeout} s: a deadlock?"
        if self.error is not None:
            raise self.error

    def stop(self, timeout: float = 120) -> None:
        self.stopping.set()
        self.join(timeout)


class Versions(Actor):
    """Every version some store files go through while a test runs: each commit renames a
    new inode into place, so a new (inode, size, mtime) is a new version, read through
    the fd opened on it."""

    def __init__(self, *paths: Path) -> None:
        super().__init__("versions")
        self.seen: dict[Path, list[bytes]] = {path: [] for path in paths}
        self._last: dict[Path, tuple[int, int, int]] = {}

    def pause(self) -> float:
        return 0.0005  # leave the CPU to the processes under test

    def act(self) -> None:
        for path in self.seen:
            try:
                file = open(path, "rb")  # noqa: SIM115 (opened here, used in the with below)
            except FileNotFoundError:
                continue
            with file:
                info = os.fstat(file.fileno())
                if self._last.get(path) != (info.st_ino, info.st_size, info.st_mtime_ns):
                    self._last[path] = (info.st_ino, info.st_size, info.st_mtime_ns)
                    self.seen[path].append(file.read())

    def stop(self, timeout: float = 120) -> dict[Path, list[bytes]]:
        super().stop(timeout)
        return self.seen
