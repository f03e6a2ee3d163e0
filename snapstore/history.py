"""History: every consolidated file a commit replaced, kept as a generation.

    <state>/history/<kind>/<stem>/<N>.xml   the replaced file: a hard link to
                                            its inode (a commit always renames
                                            a new inode into place, so the old
                                            one is never written again)
    <state>/history/<kind>/<stem>/<N>.json  what the generation was and what
                                            replaced it (Generation)

N counts up per domain and kind and is never reused: pruning never removes
the newest generation. A commit links the file it replaces just before its
rename (the commit's own order, fsync before rename and folder fsync after,
is unchanged), then, after the rename, writes the record, fsyncs the history
folder and prunes: a power cut between the rename and that fsync can lose
the one generation being kept, never the live file. The
history never blocks a commit: a failure there is a warning. A crash between
the link and the rename leaves a generation holding the live file's own
inode; the next commit finds it and records it instead of linking again.
Everything is 0600 (folders 0700), created O_EXCL|O_NOFOLLOW, fsynced.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import time
import typing
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from snapstore import errors, fsio, kinds, naming

FORMAT = 1
_GENERATION = re.compile(r"(\d+)\.xml")
_RECORD_LIMIT = 64 << 20
_GUARD = "guard.json"
_MOMENTS = ".moments.json"  # <N>.moments.json: each moment's digest, for a diff that parses no XML


class Change(typing.NamedTuple):
    """What the commit that replaced a generation changed (moments by name)."""

    added: list[str]
    removed: list[str]
    changed: list[str]  # same name, other content
    current: tuple[str | None, str | None]  # before, after

    def summary(self) -> str:
        """``+3 −1 ~2, current s4→s5`` (only what changed; "no change" otherwise)."""
        parts = [f"{sign}{len(names)}" for sign, names in (("+", self.added), ("−", self.removed),
                                                           ("~", self.changed)) if names]
        if self.current[0] != self.current[1]:
            parts.append(f"current {self.current[0] or '-'}→{self.current[1] or '-'}")
        return ", ".join(parts) if parts else "no change"


class Generation(typing.NamedTuple):
    number: int
    replaced_at: float  # seconds since the epoch
    replaced_by: str    # the command or daemon event whose commit replaced it
    sha256: str
    size: int
    moments: int
    current: str | None
    change: Change      # to the file that replaced it
    mtime_ns: int | None = None  # the file's, when recorded: check reads a generation again only if it moved


class Limits(typing.NamedTuple):
    keep: int = 100                   # generations per domain and kind; 0: no history
    max_age: float = 30 * 86400.0     # seconds
    max_bytes: int = 256 * 1024 * 1024  # per domain and kind


class Snapshot(typing.NamedTuple):
    """What a commit knows of a file: its moments (name -> digest), current, SHA-256."""

    digests: dict[str, str]
    current: str | None
    sha256: str | None


class Committed(typing.NamedTuple):
    """A generation as it became the live file: what the fleet replicates.

    The same notion as a kept Generation, numbered alike: the live file is
    generation ``number``, and keeps that number when a later commit
    replaces it (``Generation.number``)."""

    kind: kinds.Kind
    domain: str
    number: int
    committed_at: float  # seconds since the epoch
    committed_by: str
    sha256: str
    size: int
    current: str | None
    digests: dict[str, str]  # moment name -> digest
    uuid: str | None
    identity: list[int]  # the live file's (dev, ino, ...): a commit renames a new inode into place

    def encode(self) -> dict[str, Any]:
        return {"format": FORMAT, "kind": self.kind.name, "domain": self.domain, "generation": self.number,
                "committed_at": self.committed_at, "committed_by": self.committed_by, "sha256": self.sha256,
                "size": self.size, "moments": len(self.digests), "current": self.current,
                "digests": self.digests, "uuid": self.uuid, "identity": self.identity}


def decode_committed(data: Any) -> Committed:
    """The inverse of Committed.encode, every field checked (ValueError on a
    bad record: a record the database would refuse must not reach it)."""
    try:
        if data["format"] != FORMAT:
            raise ValueError(f"record format {data['format']!r}, expected {FORMAT}")
        digests, uuid, current = data["digests"], data["uuid"], data["current"]
        committed = Committed(kinds.by_name(str(data["kind"])), _text(data["domain"]), int(data["generation"]),
                              float(data["committed_at"]), _text(data["committed_by"]), _text(data["sha256"]),
                              int(data["size"]), None if current is None else _text(current),
                              {_text(k): _text(v) for k, v in dict(digests).items()},
                              None if uuid is None else str(uuidlib.UUID(_text(uuid))),
                              [int(n) for n in data["identity"]])
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not a generation record: {e!r}") from e
    if not re.fullmatch(r"[0-9a-f]{64}", committed.sha256) or committed.number < 1:
        raise ValueError("not a generation record: a SHA-256 and a number from 1 expected")
    return committed


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


class Pending(typing.NamedTuple):
    """A generation linked before a commit's rename, to be recorded after it."""

    kind: kinds.Kind
    domain: str
    number: int
    size: int


Warn = Callable[[str], None]


class History:
    def __init__(self, root: Path, limits: Limits, warn: Warn) -> None:
        self.root = root  # <state>/history
        self.limits = limits
        self.warn = warn

    def folder(self, kind: kinds.Kind, domain: str) -> Path:
        return self.root / kind.plural / naming.domain_stem(domain)

    def sweep(self) -> list[str]:
        """Temps of dead writers in every domain's history folder; what was left alone."""
        left: list[str] = []
        for kind in kinds.ALL:
            with fsio.opened_dir_if_present(self.root / kind.plural) as fd:
                stems = [entry.name for entry in os.scandir(fd) if entry.is_dir(follow_symlinks=False)] \
                    if fd is not None else []
            for stem in stems:
                left += fsio.sweep_temps(self.root / kind.plural / stem).left
        return left

    # --- at a commit ---------------------------------------------------------------------

    def keep(self, store_fd: int, name: str, kind: kinds.Kind, domain: str) -> Pending | None:
        """Link the store file ``name`` (about to be replaced) as the next
        generation; None when there is nothing to keep or history is off."""
        if self.limits.keep <= 0:
            return None
        try:
            return self._link(store_fd, name, kind, domain)
        except (OSError, errors.SnapstoreError) as e:
            self._say(kind, domain, "not kept", e)
            return None

    def record(self, pending: Pending, before: Snapshot, after: Snapshot, replaced_by: str) -> None:
        """The generation's record, written once its successor is committed; then prune."""
        try:
            self._write_record(pending, before, after, replaced_by)
        except (OSError, errors.SnapstoreError) as e:
            self._say(pending.kind, pending.domain, f"generation {pending.number} has no record", e)
        self.prune(pending.kind, pending.domain)

    def _link(self, store_fd: int, name: str, kind: kinds.Kind, domain: str) -> Pending | None:
        try:
            live = os.stat(name, dir_fd=store_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None  # the first commit: nothing replaced
        folder = self.folder(kind, domain)
        with fsio.opened_dir(self.root) as root_fd, fsio.subfolder(root_fd, kind.plural) as kind_fd, \
                fsio.subfolder(kind_fd, folder.name) as fd:
            for left in fsio.sweep_temps(folder).left:
                self.warn(left)
            held = numbers(fd)
            newest = held[-1] if held else 0
            if newest and _same_inode(fd, f"{newest}.xml", live):  # linked by a commit that died before its rename
                return Pending(kind, domain, newest, live.st_size)
            # No fsync here: the commit's own syscalls stay as they were; the
            # record's folder fsync, right after the rename, makes the link durable.
            os.link(name, f"{newest + 1}.xml", src_dir_fd=store_fd, dst_dir_fd=fd, follow_symlinks=False)
        return Pending(kind, domain, newest + 1, live.st_size)

    def live_number(self, store_fd: int, name: str, kind: kinds.Kind, domain: str) -> int:
        """The generation number of the live store file ``name``: one past the
        newest kept, or the newest itself when that is the live file's own
        inode (linked by a commit that died before its rename)."""
        live = os.stat(name, dir_fd=store_fd, follow_symlinks=False)
        with fsio.opened_dir_if_present(self.folder(kind, domain)) as fd:
            if fd is None:
                return 1
            held = numbers(fd)
            newest = held[-1] if held else 0
            return newest if newest and _same_inode(fd, f"{newest}.xml", live) else newest + 1

    def _write_record(self, pending: Pending, before: Snapshot, after: Snapshot, replaced_by: str) -> None:
        folder = self.folder(pending.kind, pending.domain)
        with fsio.opened_dir(folder) as fd:
            sha = before.sha256 or _sha256_of(fd, f"{pending.number}.xml")
            kept = os.stat(f"{pending.number}.xml", dir_fd=fd, follow_symlinks=False)
            record = {"format": FORMAT, "generation": pending.number, "replaced_at": time.time(),
                      "replaced_by": replaced_by, "sha256": sha, "size": kept.st_size, "mtime_ns": kept.st_mtime_ns,
                      "moments": len(before.digests), "current": before.current,
                      "change": _change(before, after)._asdict()}
            moments = {"format": FORMAT, "current": before.current, "digests": before.digests}
            # Each whole or not at all (a kill mid-write leaves a temp, swept by the next commit).
            for name, content in ((f"{pending.number}{_MOMENTS}", moments), (f"{pending.number}.json", record)):
                fsio.write_replacing(fd, name, json.dumps(content, ensure_ascii=False).encode())
            fsio.fsync_dir(fd, folder)

    # --- pruning -------------------------------------------------------------------------

    def prune(self, kind: kinds.Kind, domain: str, now: float | None = None) -> list[int]:
        """Oldest first, never the newest: over ``keep``, older than
        ``max_age``, or while the folder holds more than ``max_bytes``."""
        try:
            return self._prune(kind, domain, time.time() if now is None else now)
        except (OSError, errors.SnapstoreError) as e:
            self._say(kind, domain, "not pruned", e)
            return []

    def _prune(self, kind: kinds.Kind, domain: str, now: float) -> list[int]:
        folder = self.folder(kind, domain)
        with fsio.opened_dir_if_present(folder) as fd:
            if fd is None:
                return []
            sizes = {number: _size(fd, number) for number in numbers(fd)}
            doomed = self._doomed(fd, sizes, now)
            for number in doomed:
                for suffix in (".json", _MOMENTS, ".xml"):  # the file last: never a record without its file
                    _unlink_if_present(fd, f"{number}{suffix}")
            if doomed:
                fsio.fsync_dir(fd, folder)
        return doomed

    def _doomed(self, fd: int, sizes: dict[int, int], now: float) -> list[int]:
        ordered = sorted(sizes)
        doomed: list[int] = []
        total = sum(sizes.values())
        for number in ordered[:-1]:  # never the newest
            left = len(ordered) - len(doomed)
            too_old = now - _replaced_at(fd, number, now) > self.limits.max_age
            if left > max(self.limits.keep, 1) or too_old or total > self.limits.max_bytes:
                doomed.append(number)
                total -= sizes[number]
        return doomed

    # --- undo's guard ---------------------------------------------------------------------

    def guard(self, kind: kinds.Kind, domain: str, names: list[str], by: str) -> None:
        """After an undo or a fleet pull (``by``): the moments libvirt must hold
        again before a commit from its folder may replace the store file (see
        Store.replace)."""
        folder = self.folder(kind, domain)
        data = json.dumps({"format": FORMAT, "by": by, "moments": sorted(names)}).encode()
        with fsio.opened_dir(self.root) as root_fd, fsio.subfolder(root_fd, kind.plural) as kind_fd, \
                fsio.subfolder(kind_fd, folder.name) as fd:
            fsio.write_replacing(fd, _GUARD, data)
            fsio.fsync_dir(fd, folder)

    def guarded(self, kind: kinds.Kind, domain: str) -> tuple[set[str], str] | None:
        """(the moments brought back, the commit that brought them), or None."""
        path = self.folder(kind, domain) / _GUARD
        with fsio.opened_dir_if_present(path.parent) as fd:
            if fd is None or not fsio.exists(fd, _GUARD):
                return None
            try:
                data = json.loads(fsio.read_regular(fd, _GUARD, _RECORD_LIMIT, path))
                by = data["by"] if "by" in data else f"undo to generation {int(data['generation'])}"  # 0.1's guards
                return set(data["moments"]), str(by)
            except (ValueError, KeyError, TypeError) as e:
                raise errors.FormatError(path=path, reason=f"not an undo guard: {e}") from e

    def unguard(self, kind: kinds.Kind, domain: str) -> None:
        folder = self.folder(kind, domain)
        with fsio.opened_dir_if_present(folder) as fd:
            if fd is not None and fsio.exists(fd, _GUARD):
                os.unlink(_GUARD, dir_fd=fd)
                fsio.fsync_dir(fd, folder)

    # --- reading -------------------------------------------------------------------------

    def generations(self, kind: kinds.Kind, domain: str) -> list[Generation]:
        """Every recorded generation, oldest first."""
        with fsio.opened_dir_if_present(self.folder(kind, domain)) as fd:
            if fd is None:
                return []
            return [generation for number in numbers(fd)
                    if (generation := self._generation(fd, kind, domain, number)) is not None]

    def _generation(self, fd: int, kind: kinds.Kind, domain: str, number: int) -> Generation | None:
        path = self.folder(kind, domain) / f"{number}.json"
        try:
            data = json.loads(fsio.read_regular(fd, path.name, _RECORD_LIMIT, path))
            return _decode(data)
        except errors.FormatError as e:
            if isinstance(e.__cause__, FileNotFoundError):
                return None  # linked, not yet recorded (a commit in flight, or one that died)
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise errors.FormatError(path=path, reason=f"not a generation record: {e}") from e

    def moments(self, kind: kinds.Kind, domain: str, number: int) -> Snapshot | None:
        """Generation ``number``'s moment digests and current, None when not recorded."""
        path = self.folder(kind, domain) / f"{number}{_MOMENTS}"
        with fsio.opened_dir_if_present(path.parent) as fd:
            if fd is None or not fsio.exists(fd, path.name):
                return None
            try:
                data = json.loads(fsio.read_regular(fd, path.name, _RECORD_LIMIT, path))
                return Snapshot(dict(data["digests"]), data["current"], None)
            except (ValueError, KeyError, TypeError) as e:
                raise errors.FormatError(path=path, reason=f"not a generation's moment list: {e}") from e

    def read(self, kind: kinds.Kind, domain: str, number: int, limit: int) -> bytes:
        path = self.folder(kind, domain) / f"{number}.xml"
        with fsio.opened_dir(path.parent) as fd:
            return fsio.read_regular(fd, path.name, limit, path)

    def _say(self, kind: kinds.Kind, domain: str, what: str, error: BaseException) -> None:
        self.warn(f"{domain}: history of its {kind.plural}: {what}: {error} (the commit itself stands)")


def snapshot_of(digests: dict[str, str], current: str | None, sha256: str | None = None) -> Snapshot:
    return Snapshot(digests, current, sha256)


def change(before: Snapshot, after: Snapshot) -> Change:
    """What changed between two snapshots of a file, by moment digest."""
    return _change(before, after)


def _change(before: Snapshot, after: Snapshot) -> Change:
    old, new = before.digests, after.digests
    return Change(added=sorted(set(new) - set(old)), removed=sorted(set(old) - set(new)),
                  changed=sorted(name for name in set(old) & set(new) if old[name] != new[name]),
                  current=(before.current, after.current))


def _decode(data: dict[str, Any]) -> Generation:
    change = data["change"]
    mtime = data.get("mtime_ns")  # records before 0.1's issue 16 have none
    return Generation(int(data["generation"]), float(data["replaced_at"]), str(data["replaced_by"]),
                      str(data["sha256"]), int(data["size"]), int(data["moments"]), data["current"],
                      Change(list(change["added"]), list(change["removed"]), list(change["changed"]),
                             (change["current"][0], change["current"][1])),
                      int(mtime) if mtime is not None else None)


def numbers(fd: int) -> list[int]:
    """The generation numbers a history folder holds, in order."""
    return sorted(int(match[1]) for name in os.listdir(fd) if (match := _GENERATION.fullmatch(name)))


def _same_inode(fd: int, name: str, live: os.stat_result) -> bool:
    try:
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (info.st_dev, info.st_ino) == (live.st_dev, live.st_ino)


def _size(fd: int, number: int) -> int:
    try:
        return os.stat(f"{number}.xml", dir_fd=fd, follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0


def _replaced_at(fd: int, number: int, default: float) -> float:
    """When the generation was replaced; its file's change time when it has no record."""
    try:
        return float(json.loads(fsio.read_regular(fd, f"{number}.json", _RECORD_LIMIT, f"{number}.json"))
                     ["replaced_at"])
    except (errors.SnapstoreError, ValueError, KeyError, TypeError):
        try:
            return os.stat(f"{number}.xml", dir_fd=fd, follow_symlinks=False).st_ctime
        except FileNotFoundError:
            return default


def _sha256_of(fd: int, name: str) -> str:
    import hashlib

    return hashlib.sha256(fsio.read_regular(fd, name, 1 << 34, name)).hexdigest()



def _unlink_if_present(fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=fd)
