"""`check --repair`: only safe changes, each reported; metadata is never deleted.

- temps of dead snapstore processes are removed (they were never committed);
- modes wider than 0600 are tightened;
- unparsable files, files with a wrong root and libvirt's stale *.new are
  moved to attic/ (libvirt skips or never renamed them);
- a store file is rebuilt from a consistent, non-empty libvirt folder, the
  old file going to attic/ first.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from snapstore import codes, errors, fsio, naming, store
from snapstore.check import findings, scan

_TO_ATTIC = (codes.UNPARSABLE, codes.WRONG_ROOT, codes.LIBVIRT_TEMP)
_STORE_REBUILD = (codes.STORE_MISSING, codes.ONLY_IN_FOLDER, codes.ONLY_IN_STORE,
                  codes.CONTENT_DIFFERS, codes.CURRENT_DIFFERS)


class Repairer:
    def __init__(self, report: findings.Report, state: store.Store, dry_run: bool) -> None:
        self.report, self.store, self.dry_run = report, state, dry_run

    def repair(self, found: list[findings.Finding], scans: list[scan.Scan]) -> None:
        to_attic = {f.path for f in found if f.code in _TO_ATTIC and not self._in_store(f.path)}
        for finding in found:
            if finding.code == codes.SNAPSTORE_TEMP:
                self._do(finding, "removed", _remove)
            elif finding.code == codes.MODE_TOO_WIDE and finding.path not in to_attic:
                self._do(finding, "mode set to 0600", _chmod)
            elif finding.path in to_attic:
                self._do(finding, "moved to the attic", self._to_attic)
        for done in scans:
            codes_seen = {f.code for f in found if f.domain == done.domain and f.kind == done.kind.name}
            if codes_seen & set(_STORE_REBUILD) or done.store_unreadable:
                self._rebuild(done)

    def _do(self, finding: findings.Finding, action: str, change) -> None:
        path = Path(finding.path)
        if not self.dry_run:
            try:
                change(path)
            except (OSError, errors.SnapstoreError) as e:
                self.report.note(f"could not repair {path}: {e}")
                return
        self.report.repairs.append(findings.Repair(finding.code, str(path), action, not self.dry_run))

    def _in_store(self, path: str | None) -> bool:
        return path is not None and Path(path).parent.parent == self.store.root

    def _to_attic(self, path: Path) -> None:
        """Copy into attic/ durably, then remove the original."""
        with fsio.opened_dir(path.parent) as folder_fd:
            data = fsio.read_regular(folder_fd, path.name, 1 << 30, path)
            with fsio.opened_dir(self.store.root / "attic") as attic_fd:
                fsio.write_new(attic_fd, naming.attic_name("file", path.parent.name, "." + path.name), data)
                os.fsync(attic_fd)
            os.unlink(path.name, dir_fd=folder_fd)
            fsio.fsync_dir(folder_fd, path)

    def _rebuild(self, done: scan.Scan) -> None:
        # The folder as scanned: if it held junk, the store may hold the good
        # copies, so it is not rebuilt in the same run (check again, decide).
        folder = done.folder
        if folder is None or not folder.entries or folder.problems() or folder.libvirt_temps:
            self.report.note(f"{done.kind.name} {done.domain}: store not rebuilt, libvirt's folder is not "
                             "consistent and non-empty")
            return
        path = self.store.path(done.kind, done.domain)
        if not self.dry_run:
            if self.store.read_bytes(done.kind, done.domain) is not None:
                self.store.to_attic(done.kind, done.domain)
            self.store.replace(folder.tree())
        self.report.repairs.append(findings.Repair(codes.STORE_MISSING, str(path),
                                                   "rebuilt from libvirt's folder (old file kept in the attic)",
                                                   not self.dry_run))


def _remove(path: Path) -> None:
    if stat.S_ISDIR(path.lstat().st_mode):
        with fsio.opened_dir(path.parent) as dir_fd:
            fsio.remove_tree(dir_fd, path.name)
    else:
        path.unlink()


def _chmod(path: Path) -> None:
    """fchmod through an O_NOFOLLOW descriptor: never the target of a link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise errors.EnvironmentProblem(path=path, reason="no longer a regular file")
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
