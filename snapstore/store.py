"""snapstore's state folder: one consolidated file per domain and kind.

    <state>/snapshots/<escaped domain>.xml
    <state>/checkpoints/<escaped domain>.xml
    <state>/locks/<kind>.<escaped domain>.lock
    <state>/attic/          files set aside, never silently deleted

Every command and the daemon share the per-domain lock: an flock on a
separate lock file, since the data file's inode changes at every rename.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shlex
import stat
import threading
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from snapstore import codes, errors, fsio, history, index, kinds, limits, naming

if typing.TYPE_CHECKING:
    from snapstore import model

# `list` reads the index and never parses XML, so the formats (lxml) are
# imported where a file is parsed or written, not when this module loads.

T = TypeVar("T")
_FOLDERS = ("snapshots", "checkpoints", "locks", "attic", "index")
_LOCK_POLL = 0.02


class Origin(typing.NamedTuple):
    """Where a tree to commit came from, for the words of a refusal."""

    says: str      # "the legacy folder has", "qemu:///system reports"
    recovery: str  # how to bring the moments back


class StagedCommit(typing.NamedTuple):
    """A commit written ahead by Store.stage: publish or discard it."""

    tree: model.Tree
    data: bytes
    sources: index.Sources | None
    by: str
    file: fsio.Staged

    def discard(self) -> None:
        self.file.discard()


UNDO = "undo"  # the start of what an undo's commit says replaced the file
PULL = "fleet pull"  # the start of what a fleet pull's commit says
_BRINGS_BACK = (UNDO, PULL)  # commits that may replace a guarded file (see _respect_undo)


def legacy_origin(kind: kinds.Kind, domain: str) -> Origin:
    flag = " --checkpoints" if kind is kinds.CHECKPOINT else ""
    return Origin("the legacy folder has", f"bring them back with 'snapstore expand {shlex.quote(domain)}{flag}'")


class Store:
    def __init__(self, root: Path, lock_timeout: float = 10.0,
                 read_limit: int = limits.STORE_FILE, warn: Callable[[str], None] | None = None,
                 keep: history.Limits = history.Limits(),
                 on_commit: Callable[[history.Committed], None] | None = None) -> None:
        self.root = Path(root)
        self.lock_timeout = lock_timeout
        self.read_limit = read_limit
        # Derived files (index), history and sweeps fail without failing the
        # commit: said here, never swallowed.
        self.warn = warn or _log_warning
        self.history = history.History(self.root / "history", keep, self.warn)
        self._held: dict[tuple[int, Path], int] = {}  # (thread, lock file) -> depth
        # Told of each generation once it is live (the fleet's outbox), under
        # the domain's lock; its failure is a warning: the commit stood.
        self.on_commit = on_commit

    def path(self, kind: kinds.Kind, domain: str) -> Path:
        return self.root / kind.plural / (naming.domain_stem(domain) + ".xml")

    def generation_files(self, kind: kinds.Kind, domain: str, number: int) -> list[Path]:
        """Where generation ``number`` is while it is live, then once replaced."""
        return [self.path(kind, domain), self.history.folder(kind, domain) / f"{number}.xml"]

    def index_path(self, kind: kinds.Kind, domain: str) -> Path:
        return self.root / "index" / f"{kind.plural}.{naming.domain_stem(domain)}.json"

    def prepare(self, sweep: bool = True) -> list[Path]:
        """Create the layout (mode 0700) and sweep temps of dead writers
        (`check --repair` sweeps them itself, to report each); return the
        folders that had to be created."""
        created = self._make_layout()
        if sweep:
            for folder in self.temp_folders():
                for left in fsio.sweep_temps(folder).left:
                    self.warn(left)
            try:
                for left in self.history.sweep():
                    self.warn(left)
            except errors.SnapstoreError as e:  # history never blocks a commit
                self.warn(f"history: temps not swept: {e}")
        return created

    def temp_folders(self) -> list[Path]:
        """The subfolders where a commit puts its temps."""
        return [self.root / name for name in (*(kind.plural for kind in kinds.ALL), "attic", "index")]

    def _make_layout(self) -> list[Path]:
        # The root may be a symlink (systemd's DynamicUser= makes
        # /var/lib/snapstore one); nothing inside it may be.
        created = [self.root] if _make_folder(self.root) else []
        created += [self.root / name for name in _FOLDERS if _make_usable(self.root / name)]
        try:  # history never blocks a commit: a folder it cannot have is a warning
            created += [self.history.root] if _make_usable(self.history.root) else []
        except errors.SnapstoreError as e:
            self.warn(f"history: {e}")
        return created

    def domains(self, kind: kinds.Kind) -> list[str]:
        with fsio.opened_dir_if_present(self.root / kind.plural) as dir_fd:
            if dir_fd is None:
                return []
            names = [entry.name[:-4] for entry in os.scandir(dir_fd)
                     if entry.name.endswith(".xml") and entry.is_file(follow_symlinks=False)]
        found = [naming.unescape_domain(name) for name in names if naming.is_escaped_form(name)]
        found += filter(None, (self._long_name(kind, stem) for stem in names if naming.is_bounded_stem(stem)))
        return sorted(found)

    def _long_name(self, kind: kinds.Kind, stem: str) -> str | None:
        """The domain stored under a bounded stem, from its file's ``domain``
        attribute; None for a file that is not what that name would give."""
        path = self.root / kind.plural / (stem + ".xml")
        try:
            data = _unless_missing(path, lambda dir_fd: fsio.read_regular(dir_fd, path.name, self.read_limit, path))
        except errors.FormatError:  # unreadable: its domain cannot be known, so it is not listed
            return None
        if data is None:
            return None
        from snapstore.formats import consolidated

        domain = consolidated.domain_attribute(data, kind)
        return domain if domain is not None and naming.domain_stem(domain) == stem else None

    @contextlib.contextmanager
    def lock(self, kind: kinds.Kind, domain: str, timeout: float | None = None) -> Iterator[None]:
        """The domain's lock, re-entrant within one thread: a caller holds it
        from reading libvirt's folder to the commit, and the commit takes it
        again (a second flock of the same file in one process would block).
        Waited for ``timeout`` seconds (default: the store's lock_timeout)."""
        path = self.root / "locks" / f"{kind.plural}.{naming.domain_stem(domain)}.lock"
        key = (threading.get_ident(), path)
        if key in self._held:
            self._held[key] += 1
            try:
                yield
            finally:
                self._held[key] -= 1
            return
        with _flocked(path, self.lock_timeout if timeout is None else timeout):
            self._held[key] = 1
            try:
                yield
            finally:
                del self._held[key]

    def read_bytes(self, kind: kinds.Kind, domain: str) -> bytes | None:
        path = self.path(kind, domain)
        return _unless_missing(path, lambda dir_fd: fsio.read_regular(dir_fd, path.name, self.read_limit, path))

    def read_tree(self, kind: kinds.Kind, domain: str) -> model.Tree | None:
        """The committed tree, validated, or None when there is no file."""
        data = self.read_bytes(kind, domain)
        if data is None:
            return None
        source = str(self.path(kind, domain))
        from snapstore.formats import consolidated

        tree = consolidated.parse_consolidated(data, kind, source, self.read_limit)
        if tree.domain != domain:
            raise errors.FormatError(path=source, reason=f"holds domain {tree.domain!r}, expected {domain!r}")
        _raise_problems(tree)
        return tree

    def replace(self, tree: model.Tree, allow_empty: bool = False, dry_run: bool = False,
                sources: index.Sources | None = None, origin: Origin | None = None, by: str = "snapstore") -> bool:
        """Commit ``tree`` unless the file already holds it; True when written.

        Refuses to replace moments with an empty tree unless ``allow_empty``
        (errors.Emptying, worded by ``origin``: where the empty tree came
        from and how to bring the moments back).  ``sources``: identities of
        the legacy folder's entries the tree was read from, recorded in the
        index (see unchanged()). The file replaced becomes a generation of
        the history, recorded as replaced ``by`` this command or event.
        """
        data = self._formatted(tree)
        if dry_run:  # no lock: a dry run must work before the state folder exists
            return self._needs_write(tree, data, allow_empty, origin)
        with self.lock(tree.kind, tree.domain):
            if not self._writes(tree, data, by, allow_empty, origin):
                if sources is not None:
                    self._write_index(tree, sources)
                return False
            self._commit(tree, data, sources, by)
        return True

    def stage(self, tree: model.Tree, sources: index.Sources | None, by: str) -> StagedCommit | None:
        """The commit replace() would make, written ahead (durable, under a
        temp name) and not yet published; None when the file holds the tree
        already. The caller holds the domain's lock from its read of the
        folder until it publishes or discards the commit, so nothing else
        can commit in between; an emptying is never staged."""
        data = self._formatted(tree)
        with self.lock(tree.kind, tree.domain):
            if not self._writes(tree, data, by, False, None):
                return None
            return StagedCommit(tree, data, sources, by, self._staged_file(tree, data))

    def publish(self, commit: StagedCommit) -> None:
        """Make a staged commit live, exactly as replace() would have; if it
        fails before the rename, its temp is removed all the same."""
        with self.lock(commit.tree.kind, commit.tree.domain):
            try:
                self._commit(commit.tree, commit.data, commit.sources, commit.by, commit.file)
            finally:
                self._discarded(commit.file)

    def _discarded(self, file: fsio.Staged) -> None:
        try:
            file.discard()  # nothing once published
        except errors.WriteError as e:
            self.warn(str(e))

    def _formatted(self, tree: model.Tree) -> bytes:
        from snapstore.formats import consolidated

        _raise_problems(tree)
        data = consolidated.format_consolidated(tree)
        self._refuse_unreadable(tree, data)
        return data

    def _writes(self, tree: model.Tree, data: bytes, by: str, allow_empty: bool, origin: Origin | None) -> bool:
        """Under the lock: whether committing ``data`` is due and allowed."""
        self._respect_undo(tree, by)
        return self._needs_write(tree, data, allow_empty, origin)

    def undo(self, kind: kinds.Kind, domain: str, number: int, dry_run: bool = False) -> model.Tree:
        """Make generation ``number`` the live file again, through the same
        locked atomic commit (the file it replaces becomes a generation too,
        so an undo can be undone), and guard it until libvirt holds its
        moments again. Returns the tree undone to."""
        from snapstore.formats import consolidated

        path = self.history.folder(kind, domain) / f"{number}.xml"
        with self.lock(kind, domain):
            try:
                data = self.history.read(kind, domain, number, self.read_limit)
            except errors.EnvironmentProblem as e:
                raise errors.UnknownDomain(domain=domain, reason=f"no history of its {kind.plural}") from e
            tree = consolidated.parse_consolidated(data, kind, str(path), self.read_limit)
            if not dry_run:
                self.bring_back(tree, f"{UNDO} to generation {number}")
        return tree

    def bring_back(self, tree: model.Tree, by: str) -> None:
        """Commit ``tree`` (an undo's generation, a fleet pull), empty or not,
        and guard it until libvirt holds its moments again: a commit from
        libvirt's folder would otherwise drop what was brought back."""
        with self.lock(tree.kind, tree.domain):
            self.replace(tree, allow_empty=True, by=by)
            self.history.guard(tree.kind, tree.domain, list(tree.by_name), by)

    def _respect_undo(self, tree: model.Tree, by: str) -> None:
        """A store file brought back (undo, fleet pull) is replaced only by
        another such commit, or by a tree that holds again every moment it
        brought back (libvirt redefined them: the guard is lifted)."""
        try:
            guarded = self.history.guarded(tree.kind, tree.domain)
        except errors.SnapstoreError as e:  # history never blocks a commit
            self.warn(f"{tree.domain}: history of its {tree.kind.plural}: undo guard not read: {e}")
            return
        if guarded is None:
            return
        names, brought_by = guarded
        missing = sorted(names - set(tree.by_name))
        if by.startswith(_BRINGS_BACK) or not missing:
            self.history.unguard(tree.kind, tree.domain)
            return
        flag = " --checkpoints" if tree.kind is kinds.CHECKPOINT else ""
        raise errors.Guarded(domain=tree.domain, plural=tree.kind.plural, by=brought_by, missing=missing, flag=flag)

    def _staged_file(self, tree: model.Tree, data: bytes) -> fsio.Staged:
        try:
            return fsio.Staged(self.path(tree.kind, tree.domain), data)
        except errors.WriteError as e:
            # A disk filled by history older than its (maybe lowered) limits:
            # prune by the limits, then try once more; the live file is never touched.
            if not _out_of_space(e) or not self.history.prune(tree.kind, tree.domain):
                raise
            return fsio.Staged(self.path(tree.kind, tree.domain), data)

    def _commit(self, tree: model.Tree, data: bytes, sources: index.Sources | None, by: str,
                staged: fsio.Staged | None = None) -> None:
        path = self.path(tree.kind, tree.domain)
        keeping = self.history.limits.keep > 0
        # Only a stat before the rename: what the old file held is read after
        # it (its index still describes it), off the commit's visible latency.
        replaced = self._identity(path) if keeping else None
        kept: list[history.Pending] = []

        def link_old(dir_fd: int) -> None:
            pending = self.history.keep(dir_fd, path.name, tree.kind, tree.domain) if keeping else None
            kept.extend([pending] if pending is not None else [])

        (staged or self._staged_file(tree, data)).publish(before_rename=link_old)
        before = self._replaced(tree.kind, tree.domain, replaced, kept[0]) if kept and replaced else None
        after = _snapshot(tree, data) if keeping or self.on_commit else None
        self._write_index(tree, sources, after)  # under the lock: no other commit can slip in
        if kept and before is not None and after is not None:
            self.history.record(kept[0], before, after, by)
        if self.on_commit is not None and after is not None:
            if keeping and replaced is not None and not kept:
                # The history could not keep the file replaced (warned): this
                # generation's number is not known, and a guess could reuse one.
                self.warn(f"{tree.domain}: fleet: generation of its {tree.kind.plural} not queued: the file it "
                          "replaced was not kept in the history, so its number is unknown (the commit itself "
                          "stands; the next commit is queued)")
            else:
                self._announce(tree, after, len(data), kept[0].number + 1 if kept else None, by)

    def _announce(self, tree: model.Tree, after: history.Snapshot, size: int, number: int | None, by: str) -> None:
        """Tell on_commit of the generation now live (number: one past the
        generation just kept; else the history's count, read here)."""
        import time as clock

        path = self.path(tree.kind, tree.domain)
        try:
            with fsio.opened_dir(path.parent) as fd:
                info = fsio.identity(os.stat(path.name, dir_fd=fd, follow_symlinks=False))
                if number is None:
                    number = self.history.live_number(fd, path.name, tree.kind, tree.domain)
            assert self.on_commit is not None and after.sha256 is not None
            self.on_commit(history.Committed(tree.kind, tree.domain, number, clock.time(), by, after.sha256, size,
                                             tree.current, after.digests, tree.uuid(), info))
        except (OSError, errors.SnapstoreError) as e:
            self.warn(f"{tree.domain}: fleet: generation of its {tree.kind.plural}: {e} "
                      "(the commit itself stands; the daemon queues it at its next start)")

    def _replaced(self, kind: kinds.Kind, domain: str, of: index.Identity,
                  pending: history.Pending) -> history.Snapshot | None:
        """What the replaced file held: from its index (not yet rewritten, and
        checked against the file's identity), else parsed from the generation."""
        from snapstore.formats import consolidated

        found = self._read_index(kind, domain, of)
        if found is not None and found.digests is not None:
            return history.Snapshot(found.digests, found.current, found.sha256)
        try:
            data = self.history.read(kind, domain, pending.number, self.read_limit)
            tree = consolidated.parse_consolidated(data, kind, f"generation {pending.number}", self.read_limit)
        except errors.SnapstoreError as e:
            self.warn(f"{domain}: history of its {kind.plural}: generation {pending.number} not read: {e}")
            return None
        return history.Snapshot({m.name: m.digest for m in tree.moments}, tree.current, None)

    def _refuse_unreadable(self, tree: model.Tree, data: bytes) -> None:
        """Never commit a file every later command would refuse to read."""
        if len(data) > self.read_limit:
            raise errors.Refused(domain=tree.domain, reason=(
                f"the consolidated file of {len(tree)} {tree.kind.plural} would be {len(data)} bytes, over the "
                f"{self.read_limit}-byte limit snapstore reads (max_store_bytes); not written"))

    def unchanged(self, kind: kinds.Kind, domain: str, sources: index.Sources) -> index.Entry | None:
        """The index, when the file was consolidated from a folder whose entries
        all still have the identities in ``sources``; else None."""
        of = self._identity(self.path(kind, domain))
        found = self._read_index(kind, domain, of) if of is not None else None
        return found if found is not None and found.sources == sources else None

    def listing(self, kind: kinds.Kind, domain: str) -> tuple[str | None, list[index.Row]] | None:
        """(current, rows) for `list`."""
        found = self.summary(kind, domain)
        return (found.current, found.rows) if found is not None else None

    def summary(self, kind: kinds.Kind, domain: str) -> index.Entry | None:
        """The index of the committed file, None when there is no file: from
        the index while it matches the file, else from the file itself (and
        the index is rebuilt)."""
        path = self.path(kind, domain)
        before = self._identity(path)
        if before is None:
            return None
        found = self._read_index(kind, domain, before)
        if found is not None:
            return found
        tree = self.read_tree(kind, domain)
        if tree is None:
            return None
        # With history on, the digests too: diff and the next commit then parse nothing.
        digests = {m.name: m.digest for m in tree.moments} if self.history.limits.keep > 0 else None
        if self._identity(path) == before:  # else the file changed while read: do not record a mix
            self._save_index(self.index_path(kind, domain),
                             index.encode(domain, tree.current, _rows(tree), before, uuid=tree.uuid(),
                                          digests=digests))
        return index.Entry(tree.current, _rows(tree), tree.uuid(), None, digests)

    def _identity(self, path: Path) -> index.Identity | None:
        """The store file's identity, None when absent; the folder must be usable."""
        with fsio.opened_dir_if_present(path.parent) as dir_fd:
            if dir_fd is None:
                return None
            try:
                return fsio.identity(os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False))
            except FileNotFoundError:
                return None
            except OSError as e:
                raise errors.FormatError(path=path, reason=f"cannot be read: {fsio.reason(e)}",
                                         code=codes.UNREADABLE) from e

    def _write_index(self, tree: model.Tree, sources: index.Sources | None = None,
                     kept: history.Snapshot | None = None) -> None:
        of = self._identity(self.path(tree.kind, tree.domain))
        if of is not None:
            digests, sha = (kept.digests, kept.sha256) if kept is not None else (None, None)
            self._save_index(self.index_path(tree.kind, tree.domain),
                             index.encode(tree.domain, tree.current, _rows(tree), of, sources, tree.uuid(),
                                          digests, sha))

    def _read_index(self, kind: kinds.Kind, domain: str, of: index.Identity) -> index.Entry | None:
        try:
            return index.read(self.index_path(kind, domain), of, domain)
        except errors.SnapstoreError as e:
            self.warn(f"{e} (the listing index; read from the store file instead)")
            return None

    def _save_index(self, path: Path, data: bytes) -> None:
        """The index is derived (rebuilt when stale), so failing to write it
        fails nothing; but a disk that fails this write fails the next commit
        too: said, never swallowed."""
        try:
            index.write(path, data)
        except errors.SnapstoreError as e:
            self.warn(f"{e} (the listing index only; the store file itself is committed)")

    def _needs_write(self, tree: model.Tree, data: bytes, allow_empty: bool, origin: Origin | None) -> bool:
        path = self.path(tree.kind, tree.domain)
        if _unless_missing(path, lambda dir_fd: fsio.holds(dir_fd, path.name, data, self.read_limit, path)):
            return False
        if not tree.moments and not allow_empty:
            self._refuse_emptying(tree, origin or legacy_origin(tree.kind, tree.domain))
        return True

    def _refuse_emptying(self, tree: model.Tree, origin: Origin) -> None:
        from snapstore.formats import consolidated

        old = self.read_bytes(tree.kind, tree.domain)
        held = len(consolidated.parse_consolidated(old, tree.kind, "", self.read_limit)) if old else 0
        if held:
            raise errors.Emptying(domain=tree.domain, plural=tree.kind.plural, held=held, origin=origin.says,
                                  recovery=origin.recovery)

    def keep_folder(self, kind: kinds.Kind, domain: str, files: dict[str, bytes]) -> Path:
        """A replaced legacy folder's files, copied into attic/ whole or not at
        all: built under a temp name (swept if we die), then renamed."""
        kept = self.root / "attic" / naming.attic_name(kind.plural, domain, ".folder")
        with fsio.opened_dir(kept.parent) as attic_fd:
            temp = fsio.temp_name()
            try:
                fsio.write_folder(attic_fd, temp, files)
                os.rename(temp, kept.name, src_dir_fd=attic_fd, dst_dir_fd=attic_fd)
            except OSError as e:
                fsio.remove_quietly(attic_fd, temp)
                raise errors.WriteError(path=kept, reason=fsio.reason(e)) from e
            fsio.fsync_dir(attic_fd, kept)
        return kept

    def keep_file(self, label: str, domain: str, suffix: str, data: bytes) -> Path:
        """A new file in attic/ (created O_EXCL, fsynced, the folder too):
        a transfer's dump, a file repair moved out of libvirt's folder."""
        kept = self.root / "attic" / naming.attic_name(label, domain, suffix)
        with fsio.opened_dir(kept.parent) as attic_fd:
            try:
                fsio.write_new(attic_fd, kept.name, data)
            except OSError as e:
                raise errors.WriteError(path=kept, reason=fsio.reason(e)) from e
            fsio.fsync_dir(attic_fd, kept)
        return kept

    def to_attic(self, kind: kinds.Kind, domain: str) -> Path:
        """Move a domain's file to attic/ with a UTC timestamp; return the new path.
        Both folders through O_NOFOLLOW descriptors: a symlinked attic/ is refused."""
        source = self.path(kind, domain)
        target = self.root / "attic" / naming.attic_name(kind.plural, domain, ".xml")
        with self.lock(kind, domain), fsio.opened_dir(source.parent) as fd, \
                fsio.opened_dir(target.parent) as attic_fd:
            try:
                os.rename(source.name, target.name, src_dir_fd=fd, dst_dir_fd=attic_fd)
            except OSError as e:
                raise errors.WriteError(path=source, reason=f"cannot move it to the attic: {fsio.reason(e)}") from e
            fsio.fsync_dir(fd, target)
            fsio.fsync_dir(attic_fd, target)
        return target


def _unless_missing(path: Path, action: Callable[[int], T]) -> T | None:
    """``action`` on the folder of ``path``; None when the folder or the file is missing."""
    try:
        with fsio.opened_dir_if_present(path.parent) as dir_fd:
            return None if dir_fd is None else action(dir_fd)
    except errors.FormatError as e:
        if isinstance(e.__cause__, FileNotFoundError):
            return None
        raise


def _out_of_space(error: errors.WriteError) -> bool:
    cause = error.__cause__
    return isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)


def _snapshot(tree: model.Tree, data: bytes) -> history.Snapshot:
    import hashlib  # only commits that keep history need it

    return history.Snapshot({m.name: m.digest for m in tree.moments}, tree.current,
                            hashlib.sha256(data).hexdigest())


def _rows(tree: model.Tree) -> list[index.Row]:
    return [(m.name, m.parent, m.creation_time, m.state) for m in tree.topological()]


def _raise_problems(tree: model.Tree) -> None:
    problems = tree.validate()
    if problems:
        raise errors.TreeError(domain=tree.domain, problems=problems)


def _log_warning(text: str) -> None:
    import logging  # only a library caller without its own warn gets here

    logging.getLogger("snapstore").warning("%s", text)


def _make_usable(path: Path) -> bool:
    """_make_folder, then refuse it unless it opens as a folder, not a symlink
    (O_NOFOLLOW: a clear error); True when it was created."""
    made = _make_folder(path)
    with fsio.opened_dir(path) as _fd:
        return made


def _make_folder(path: Path) -> bool:
    """mkdir 0700; True when it was created."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return False
    except OSError as e:
        raise errors.EnvironmentProblem(path=path, reason=f"cannot create state folder: {fsio.reason(e)}") from e
    return True


@contextlib.contextmanager
def _flocked(path: Path, timeout: float) -> Iterator[None]:
    # Read-only is enough for flock, and lets the service's dynamic user
    # (CAP_DAC_READ_SEARCH) lock a file root's commands created; opened
    # through locks/ as an O_NOFOLLOW descriptor, so a symlinked locks/ is refused.
    with fsio.opened_dir(path.parent) as dir_fd:
        try:
            fd = os.open(path.name, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         0o600, dir_fd=dir_fd)
        except OSError as e:
            raise errors.EnvironmentProblem(path=path, reason=f"cannot open lock file: {fsio.reason(e)}") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO put there must not block us
        os.close(fd)
        raise errors.EnvironmentProblem(path=path, reason="lock file is not a regular file")
    try:
        _acquire(fd, path, timeout)
        yield
    finally:
        os.close(fd)  # closing the last fd releases the flock


def _acquire(fd: int, path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise errors.EnvironmentProblem(path=path, reason=f"cannot lock: {fsio.reason(e)}") from e
        if time.monotonic() >= deadline:
            raise errors.LockTimeout(path=path, timeout=timeout)
        time.sleep(_LOCK_POLL)
