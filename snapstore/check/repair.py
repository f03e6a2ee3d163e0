"""`check --repair`: only safe changes, each reported; metadata is never deleted.

- temps of dead snapstore processes are removed (they were never committed);
- modes wider than 0600 are tightened;
- files libvirt itself skips (not well-formed for libvirt, wrong root) and
  libvirt's stale *.new are moved to attic/; a file only snapstore refuses (a
  DOCTYPE, an entity reference) stays, as libvirt loads it;
- a store file is rebuilt from a consistent, non-empty libvirt folder, the
  old file going to attic/ first.

A file is changed only through the folder the scan read: the folder opened
O_NOFOLLOW under its root must still be that folder (device, inode) and the
file opened O_NOFOLLOW through it must still be that file; otherwise a note
says it changed since the scan, and it is left as it is.  A rebuild reads
the folder again under the domain's lock, so a store never goes back to
what an older scan saw.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from snapstore import codes, config, errors, fsio, kinds, legacydir, ops, store
from snapstore.check import findings, scan

_TO_ATTIC = (codes.UNPARSABLE, codes.WRONG_ROOT, codes.LIBVIRT_TEMP)
_STORE_REBUILD = (codes.STORE_MISSING, codes.ONLY_IN_FOLDER, codes.ONLY_IN_STORE,
                  codes.CONTENT_DIFFERS, codes.CURRENT_DIFFERS)
# Found in the store file itself: a consistent folder rebuilds it as well.
_STORE_BREAKS = (codes.WRONG_ROOT, codes.EMPTY_NAME, codes.DUPLICATE, codes.MISSING_PARENT, codes.CYCLE,
                 codes.CURRENT_MISSING, codes.UUID_MISMATCH, codes.NAME_PATTERN)
_ATTIC_READ_LIMIT = 1 << 30
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Repairer:
    def __init__(self, report: findings.Report, state: store.Store, settings: config.Config,
                 dry_run: bool) -> None:
        self.report, self.store, self.settings, self.dry_run = report, state, settings, dry_run
        self.scans: dict[tuple[str, str], scan.Scan] = {}  # (kind name, domain) -> what was read
        self.moved: set[str] = set()  # paths moved to the attic (or that would be, in a dry run)

    def repair(self, found: list[findings.Finding], scans: list[scan.Scan]) -> None:
        self.scans = {(done.kind.name, done.domain): done for done in scans}
        for finding in found:
            if finding.code == codes.SNAPSTORE_TEMP:
                self._do(finding, "removed", self._remove)
            elif finding.code in _TO_ATTIC and not self._in_store(finding.path):
                self._do(finding, "moved to the attic", self._move_out)
        for finding in found:  # after the moves: a file moved out needs no mode
            if finding.code == codes.MODE_TOO_WIDE and finding.path not in self.moved:
                self._do(finding, "mode set to 0600", self._chmod)
        for done in scans:
            if self._needs_rebuild(done, found):
                self._rebuild(done)

    def _do(self, finding: findings.Finding, action: str, change: Callable[[findings.Finding], bool]) -> None:
        """Report ``change`` as a repair unless it declines (False) or fails (a note)."""
        try:
            if not change(finding):
                return
        except (OSError, errors.SnapstoreError, fsio.NotOurs) as e:
            self.report.note(f"{finding.path}: {_reason(e)}, not repaired")
            return
        self.report.repairs.append(findings.Repair(finding.code, str(finding.path), action, not self.dry_run))

    def _in_store(self, path: str | None) -> bool:
        return path is not None and Path(path).parent.parent == self.store.root

    def _seen(self, finding: findings.Finding) -> scan.Seen:
        """How the scan saw the finding's file; a file it did not identify is not touched."""
        done = self.scans.get((finding.kind or "", finding.domain or ""))
        seen = done.seen(finding.path) if done is not None else None
        if seen is None or seen.file_id is None:
            raise errors.EnvironmentProblem(path=str(finding.path), reason="not identified by the scan")
        return seen

    # --- files ------------------------------------------------------------------------

    def _remove(self, finding: findings.Finding) -> bool:
        if not self.dry_run:
            _remove_temp(Path(str(finding.path)))
        return True

    def _chmod(self, finding: findings.Finding) -> bool:
        """fchmod through an O_NOFOLLOW descriptor of the very file the scan saw."""
        seen = self._seen(finding)
        with seen.opened_folder() as folder_fd:
            fd = os.open(seen.name, _FILE_FLAGS, dir_fd=folder_fd)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != seen.file_id:
                    raise seen.changed()
                if not self.dry_run:
                    os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
        return True

    def _move_out(self, finding: findings.Finding) -> bool:
        """Copy into attic/ durably, then remove the original: only a file
        libvirt skips too (its *.new temps, or what it cannot load)."""
        seen = self._seen(finding)
        with seen.opened_folder() as folder_fd:
            data = seen.read(folder_fd, _ATTIC_READ_LIMIT)
            if finding.code != codes.LIBVIRT_TEMP and scan.libvirt_loads(data, _kind(finding)):
                self.report.note(f"{finding.path}: libvirt loads this file, so it stays where it is; snapstore "
                                 "cannot consolidate the domain until it is rewritten")
                return False
            if not self.dry_run:
                self._to_attic(folder_fd, seen, data)
        self.moved.add(str(finding.path))
        return True

    def _to_attic(self, folder_fd: int, seen: scan.Seen, data: bytes) -> None:
        self.store.keep_file("file", seen.folder, "." + seen.name, data)
        # By name, so once more: still the file that was copied (a swap meanwhile leaves both).
        info = os.stat(seen.name, dir_fd=folder_fd, follow_symlinks=False)
        if (info.st_dev, info.st_ino) != seen.file_id:
            raise seen.changed()
        os.unlink(seen.name, dir_fd=folder_fd)
        fsio.fsync_dir(folder_fd, seen.path)

    # --- the store file ---------------------------------------------------------------

    def _needs_rebuild(self, done: scan.Scan, found: list[findings.Finding]) -> bool:
        path = str(self.store.path(done.kind, done.domain))
        mine = [f for f in found if f.domain == done.domain and f.kind == done.kind.name]
        return done.store_unreadable or any(
            f.code in _STORE_REBUILD or (f.code in _STORE_BREAKS and f.path == path) for f in mine)

    def _rebuild(self, done: scan.Scan) -> None:
        # The folder as scanned: if it held junk, the store may hold the good
        # copies, so it is not rebuilt in the same run (check again, decide).
        if done.folder is None or not _consistent(done.folder):
            self._not_rebuilt(done, "libvirt's folder is not consistent and non-empty")
            return
        try:
            rebuilt = self.dry_run or self._rebuild_locked(done)
        except errors.SnapstoreError as e:
            self._not_rebuilt(done, str(e))
            return
        if rebuilt:
            self.report.repairs.append(findings.Repair(
                codes.STORE_MISSING, str(self.store.path(done.kind, done.domain)),
                "rebuilt from libvirt's folder (old file kept in the attic)", not self.dry_run))

    def _rebuild_locked(self, done: scan.Scan) -> bool:
        """Under the domain's lock, from the folder read again: a commit made
        since the scan (consolidate, the daemon) may hold a newer state than
        the scan saw, and the store must never go back to the older one."""
        kind, domain = done.kind, done.domain
        with self.store.lock(kind, domain):
            try:
                folder = ops.read_consistent(self.settings, kind, domain, ops.Policy(in_flight_ok=False))
            except errors.TreeError as e:
                self._not_rebuilt(done, f"libvirt's folder changed since the scan: {e}")
                return False
            if not self._still_differs(done, folder):
                return False
            if self.store.read_bytes(kind, domain) is not None:
                self.store.to_attic(kind, domain)
            ops.commit(self.store, folder, ops.Policy(by="check --repair"))
        return True

    def _still_differs(self, done: scan.Scan, folder: legacydir.LegacyFolder) -> bool:
        """Whether the folder read again still calls for a rebuild (replace's
        dry run also refuses a tree it could not write, before anything moves)."""
        if not folder.entries:
            self._not_rebuilt(done, "libvirt's folder was emptied since the scan")
            return False
        if not self.store.replace(folder.tree(), dry_run=True):
            self._not_rebuilt(done, "it already holds libvirt's folder (committed since the scan)")
            return False
        return True

    def _not_rebuilt(self, done: scan.Scan, why: str) -> None:
        self.report.note(f"{done.kind.name} {done.domain}: store not rebuilt, {why}")


def _consistent(folder: legacydir.LegacyFolder) -> bool:
    return bool(folder.entries) and not folder.problems() and not folder.libvirt_temps


def _kind(finding: findings.Finding) -> kinds.Kind:
    return next(kind for kind in kinds.ALL if kind.name == finding.kind)


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError):
        return fsio.reason(error)
    return str(getattr(error, "reason", None) or error)  # the path is named by the note already


def _remove_temp(path: Path) -> None:
    """A temp of a dead snapstore process, through its folder's descriptor."""
    with fsio.opened_dir(path.parent) as folder_fd:
        if stat.S_ISDIR(os.stat(path.name, dir_fd=folder_fd, follow_symlinks=False).st_mode):
            fsio.remove_tree(folder_fd, path.name)
        else:
            os.unlink(path.name, dir_fd=folder_fd)
