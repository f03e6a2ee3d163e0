"""The history of one domain and kind: damaged generations are warnings
(history never blocks a commit, and the live file does not depend on it).

A generation whose SHA-256 matches its record is the file a commit
replaced, so it parses: only the others are parsed, to say what is wrong.
A generation whose size and mtime are still those its record noted is not
read at all: its inode is never written again (a commit renames a new one
into place), so only an edit would change it, and an edit moves its mtime.
Reading every generation would read the store file a hundred times over
(650 MiB at 1,000 snapshots with the default history_keep).
"""
from __future__ import annotations

import hashlib
import os
import stat

from snapstore import codes, errors, fsio, history, kinds, store
from snapstore.check import findings
from snapstore.formats import consolidated


def check_history(report: findings.Report, state: store.Store, kind: kinds.Kind, domain: str) -> None:
    folder = state.history.folder(kind, domain)
    with fsio.opened_dir_if_present(folder) as fd:
        if fd is None:
            return
        numbers = history.numbers(fd)
        records = _records(report, state, kind, domain)
        _gaps(report, kind, domain, numbers, folder)
        for number in numbers:
            _one(report, state, fd, kind, domain, number, records.get(number))
        for name in sorted(os.listdir(fd)):
            _mode(report, fd, kind, domain, name, folder)


def _records(report: findings.Report, state: store.Store, kind: kinds.Kind,
             domain: str) -> dict[int, history.Generation]:
    try:
        return {generation.number: generation for generation in state.history.generations(kind, domain)}
    except errors.SnapstoreError as e:
        report.add(codes.HISTORY_RECORD, str(e), domain, kind, hint=_hint(domain))
        return {}


def _gaps(report: findings.Report, kind: kinds.Kind, domain: str, numbers: list[int], folder: object) -> None:
    missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers)) if numbers else []
    if missing:
        report.add(codes.HISTORY_GAP, f"generations {', '.join(map(str, missing))} are missing between "
                   f"{numbers[0]} and {numbers[-1]} (pruning removes the oldest only)", domain, kind,
                   path=str(folder), hint="nothing to repair: the generations left are usable")


def _one(report: findings.Report, state: store.Store, fd: int, kind: kinds.Kind, domain: str, number: int,
         record: history.Generation | None) -> None:
    path = state.history.folder(kind, domain) / f"{number}.xml"
    info = os.stat(path.name, dir_fd=fd, follow_symlinks=False)
    size = info.st_size
    if size > state.read_limit:
        report.add(codes.HISTORY_OVERSIZE, f"generation {number} is {size} bytes, over the {state.read_limit}-byte "
                   "limit (max_store_bytes): undo and diff cannot read it", domain, kind, path=path)
        return
    if record is None:
        report.add(codes.HISTORY_RECORD, f"generation {number} has no record (when, by what, its SHA-256)",
                   domain, kind, path=path, hint=_hint(domain))
    elif record.mtime_ns is not None and (size, info.st_mtime_ns) == (record.size, record.mtime_ns):
        return  # untouched since recorded
    try:
        data = fsio.read_regular(fd, path.name, state.read_limit, path)
        if record is None or hashlib.sha256(data).hexdigest() != record.sha256:
            consolidated.parse_consolidated(data, kind, str(path), state.read_limit)
            if record is not None:
                raise errors.FormatError(path=path, reason="does not match the SHA-256 of its record")
    except errors.FormatError as e:
        report.add(codes.HISTORY_DAMAGED, f"generation {number}: {e.reason}", domain, kind, path=path,
                   hint=_hint(domain))


def _mode(report: findings.Report, fd: int, kind: kinds.Kind, domain: str, name: str, folder: object) -> None:
    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
    if stat.S_ISREG(info.st_mode) and info.st_mode & 0o777 & ~0o600:
        report.add(codes.HISTORY_MODE, f"mode {info.st_mode & 0o777:04o}, expected 0600 (history holds the same "
                   "secrets as the store)", domain, kind, path=f"{folder}/{name}", hint=f"chmod 600 {folder}/{name}")


def _hint(domain: str) -> str:
    return f"'snapstore history {domain}' lists what is left; do not undo to a damaged generation"
