"""The outbox: generations committed on this host, queued for the fleet.

    <state>/outbox/<kind>.<stem>.<N>.xml   generation N: a hard link to the
                                           inode the commit renamed into place
                                           (never written again)
    <state>/outbox/<kind>.<stem>.<N>.json  its record (history.Committed),
                                           written after the link: an entry
                                           is queued once its record is there
    <state>/outbox/shipped/<kind>.<stem>   the newest generation the database
                                           acknowledged: "N sha256"

The process that commits queues (the daemon from its recorder thread, a
command at once); the daemon's shipper sends and acknowledges. Records
follow the store's rules (temp, fsync, rename, folder fsync; 0600,
O_EXCL|O_NOFOLLOW). A crash between the commit and its queueing loses
nothing: at its start the daemon queues every live generation the shipped
marks do not name (seed). The outbox is bounded: over ``limit`` entries,
the oldest generations of a domain with a newer one queued are dropped,
each said; never a domain's newest.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import re
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from snapstore import codes, errors, fsio, history, kinds, naming

_ENTRY = re.compile(r"(?P<kind>[a-z]+)\.(?P<stem>.+)\.(?P<number>\d+)\.json")
_RECORD_LIMIT = 64 << 20
SHIPPED = "shipped"

Warn = Callable[[str], None]


class Entry(typing.NamedTuple):
    name: str  # <kind>.<stem>.<N>, without suffix
    kind: kinds.Kind
    stem: str
    number: int


class Queued(typing.NamedTuple):
    entry: Entry
    committed: history.Committed


class Superseded(errors.SnapstoreError):
    """The generation was replaced, and not kept, before it could be queued."""


class Outbox:
    def __init__(self, state_dir: Path, limit: int, warn: Warn) -> None:
        self.state_dir = state_dir
        self.root = state_dir / "outbox"
        self.limit = limit
        self.warn = warn

    @contextlib.contextmanager
    def _opened(self) -> Iterator[int]:
        """The outbox folder, made when missing; never a symlink."""
        with fsio.opened_dir(self.state_dir) as state_fd, fsio.subfolder(state_fd, "outbox") as fd:
            yield fd

    # --- queueing --------------------------------------------------------------------------

    def put(self, committed: history.Committed, sources: list[Path]) -> None:
        """Queue ``committed``, linked from the first of ``sources`` (the store
        file, then its history generation) that is still its inode. Whole or
        not at all: a record that cannot be written takes its link with it."""
        name = entry_name(committed.kind, committed.domain, committed.number)
        record = self.root / f"{name}.json"
        try:
            with self._opened() as fd:
                linked = self._link(fd, f"{name}.xml", committed, sources)
                try:
                    fsio.write_replacing(fd, record.name, json.dumps(committed.encode(), ensure_ascii=False).encode())
                except BaseException:
                    if linked:  # best effort, on an error already said; a leftover is swept once shipped past
                        with contextlib.suppress(OSError):
                            os.unlink(f"{name}.xml", dir_fd=fd)
                    raise
                try:
                    os.fsync(fd)
                except OSError as e:
                    raise errors.QueueError(path=record, reason=(
                        f"queued, but the outbox folder's fsync failed ({fsio.reason(e)}): a crash may lose it "
                        "(the daemon's next start queues it again)")) from e
                self._bound(fd)
        except OSError as e:
            raise errors.QueueError(path=record, reason=f"not queued: {fsio.reason(e)}") from e

    def _link(self, fd: int, target: str, committed: history.Committed, sources: list[Path]) -> bool:
        """True when the link was made here, False when it was there already."""
        for candidate in sources:
            with fsio.opened_dir_if_present(candidate.parent) as src_fd:
                if src_fd is None or not _is(src_fd, candidate.name, committed.identity):
                    continue
                try:
                    os.link(candidate.name, target, src_dir_fd=src_fd, dst_dir_fd=fd, follow_symlinks=False)
                except FileExistsError:
                    if not _is(fd, target, committed.identity):
                        raise errors.QueueError(path=self.root / target, reason=(
                            "not queued: holds another file of the same generation number; left as it is")) from None
                    return False
                if _is(fd, target, committed.identity):
                    return True
                os.unlink(target, dir_fd=fd)  # replaced between the check and the link: not this generation
        raise Superseded(f"{committed.domain}: generation {committed.number} of its {committed.kind.plural} was "
                         "replaced before it was queued, and is not kept; a newer one is queued")

    def _bound(self, fd: int) -> None:
        """Over the limit: drop the oldest generations of domains with newer ones queued."""
        queued = _entries(fd)
        excess = len(queued) - self.limit
        if excess <= 0:
            return
        by_domain: dict[tuple[str, str], list[Entry]] = collections.defaultdict(list)
        for entry in queued:
            by_domain[(entry.kind.name, entry.stem)].append(entry)
        older = sorted((entry for group in by_domain.values() for entry in sorted(group, key=_number)[:-1]),
                       key=_number)
        for entry in older[:excess]:
            self._drop(fd, entry)
            self.warn(f"fleet outbox over its limit of {self.limit}: dropped generation {entry.number} of "
                      f"{_describe(entry)} (a newer one is queued)")
        if excess > len(older):
            self.warn(f"fleet outbox holds {len(queued) - len(older)} generations, over its limit of "
                      f"{self.limit}, each the newest of its domain: none dropped")
        fsio.fsync_dir(fd, self.root)

    # --- shipping --------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Queued entries, oldest generation of each domain first."""
        with fsio.opened_dir_if_present(self.root) as fd:
            return [] if fd is None else _entries(fd)

    def read(self, entry: Entry, limit: int) -> tuple[history.Committed, bytes] | None:
        """The record and the file of ``entry``, the file's SHA-256 checked
        against the record; None (and said) when it cannot be shipped: it is
        dropped (the daemon's next seed queues the live generation again).
        A read that fails (EIO, EMFILE) raises: the entry is tried again."""
        path = self.root / f"{entry.name}.json"
        try:
            with fsio.opened_dir(self.root) as fd:
                record = history.decode_committed(json.loads(fsio.read_regular(fd, path.name, _RECORD_LIMIT, path)))
                data = fsio.read_regular(fd, f"{entry.name}.xml", limit, self.root / f"{entry.name}.xml")
            if hashlib.sha256(data).hexdigest() != record.sha256:
                raise ValueError("the file is not the one its record describes (SHA-256 differs)")
            return record, data
        except errors.FormatError as e:
            if e.code == codes.UNREADABLE and not isinstance(e.__cause__, FileNotFoundError):
                raise
            self._drop_said(entry, path, e)
        except ValueError as e:  # json's errors too
            self._drop_said(entry, path, e)
        return None

    def _drop_said(self, entry: Entry, path: Path, error: Exception) -> None:
        self.warn(f"fleet outbox: {path}: cannot be shipped, dropped: {error}")
        self.done([entry])

    def done(self, entries: list[Entry], shipped: Sequence[history.Committed] = ()) -> None:
        """Acknowledged (or dropped): marks written, then entries removed, the record first."""
        with self._opened() as fd:
            newest: dict[tuple[str, str], history.Committed] = {}
            for committed in shipped:  # one mark per domain: only its newest matters
                key = (committed.kind.name, committed.domain)
                if key not in newest or newest[key].number < committed.number:
                    newest[key] = committed
            if newest:
                with fsio.subfolder(fd, SHIPPED) as marks_fd:
                    for committed in newest.values():
                        _mark(marks_fd, committed)
                    fsio.fsync_dir(marks_fd, self.root / SHIPPED)
            for entry in entries:
                self._drop(fd, entry)
            fsio.fsync_dir(fd, self.root)

    def _drop(self, fd: int, entry: Entry) -> None:
        for suffix in (".json", ".xml"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.name + suffix, dir_fd=fd)

    # --- what was shipped --------------------------------------------------------------------

    def shipped(self, kind: kinds.Kind, domain: str) -> tuple[int, str] | None:
        """(N, sha256) of the newest generation of ``domain`` the database acknowledged."""
        with fsio.opened_dir_if_present(self.root / SHIPPED) as fd:
            return None if fd is None else _mark_of(fd, f"{kind.plural}.{naming.domain_stem(domain)}")

    def sweep(self) -> None:
        """Temps of dead writers, and links whose record never came of
        generations already shipped (a crash between link and record)."""
        with self._opened() as fd, fsio.subfolder(fd, SHIPPED):  # both folders made: the sweeps need them
            names = os.listdir(fd)
        for left in fsio.sweep_temps(self.root).left + fsio.sweep_temps(self.root / SHIPPED).left:
            self.warn(left)
        queued = {entry.name for entry in self.entries()}
        with self._opened() as fd:
            for name in names:
                stem = name.removesuffix(".xml")
                if name.endswith(".xml") and stem not in queued and self._shipped_beyond(stem):
                    with contextlib.suppress(FileNotFoundError):  # removed meanwhile: what we wanted
                        os.unlink(name, dir_fd=fd)

    def _shipped_beyond(self, name: str) -> bool:
        match = _ENTRY.fullmatch(name + ".json")
        if match is None:
            return False
        with fsio.opened_dir_if_present(self.root / SHIPPED) as fd:
            mark = _mark_of(fd, f"{match['kind']}.{match['stem']}") if fd is not None else None
        return mark is not None and mark[0] >= int(match["number"])


def entry_name(kind: kinds.Kind, domain: str, number: int) -> str:
    return f"{kind.plural}.{naming.domain_stem(domain)}.{number}"


def _entries(fd: int) -> list[Entry]:
    found = []
    for name in os.listdir(fd):
        match = _ENTRY.fullmatch(name)
        kind = next((k for k in kinds.ALL if match and k.plural == match["kind"]), None)
        if match and kind:
            found.append(Entry(name.removesuffix(".json"), kind, match["stem"], int(match["number"])))
    return sorted(found, key=lambda e: (e.kind.name, e.stem, e.number))


def _number(entry: Entry) -> int:
    return entry.number


def _describe(entry: Entry) -> str:
    domain = naming.unescape_domain(entry.stem) if naming.is_escaped_form(entry.stem) else entry.stem
    return f"{domain}'s {entry.kind.plural}"


def _is(fd: int, name: str, identity: list[int]) -> bool:
    try:
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return fsio.identity(info) == identity  # device, inode, size, mtime: a reused inode number differs


def _mark_of(fd: int, name: str) -> tuple[int, str] | None:
    """A shipped mark, None when there is none or it does not read: a mark is
    a hint, and a missing one only means a generation is sent (and skipped) again."""
    if not fsio.exists(fd, name):
        return None
    try:
        number, sha = fsio.read_regular(fd, name, 256, name).decode().split()
        return int(number), sha
    except (errors.FormatError, ValueError, UnicodeDecodeError):
        return None


def _mark(fd: int, committed: history.Committed) -> None:
    """The domain's mark, unless it already names a later generation."""
    name = f"{committed.kind.plural}.{naming.domain_stem(committed.domain)}"
    mark = _mark_of(fd, name)
    if mark is not None and mark[0] > committed.number:
        return
    fsio.write_replacing(fd, name, f"{committed.number} {committed.sha256}\n".encode())
