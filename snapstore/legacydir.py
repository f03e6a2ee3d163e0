"""Read and write libvirt's per-domain folders (``<root>/<domain>/<name>.xml``).

libvirtd parses every file in a domain's folder at start, whatever its
name, so nothing of ours (no temp, no lock) is ever left inside one: a
folder is built aside under a temp name and swapped in with
renameat2(RENAME_EXCHANGE), as Radicale swaps collections.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import stat
import typing
from collections.abc import Callable
from pathlib import Path

from snapstore import codes, errors, fsio, index, kinds, model, naming
from snapstore.formats import legacy, xmlsafe

if typing.TYPE_CHECKING:
    from lxml import etree

LIBVIRT_TEMP_SUFFIX = ".new"  # virFileRewrite's temp: <name>.xml.new


@dataclasses.dataclass
class LegacyFolder:
    """What one domain folder holds: parsed moments and what was wrong."""

    kind: kinds.Kind
    domain: str
    path: Path
    entries: dict[str, legacy.LegacyMoment] = dataclasses.field(default_factory=dict)  # by file name
    failures: list[errors.FormatError] = dataclasses.field(default_factory=list)
    notes: list[codes.Problem] = dataclasses.field(default_factory=list)
    libvirt_temps: list[str] = dataclasses.field(default_factory=list)  # <name>.xml.new: a write in flight
    identity: tuple[int, int] = (0, 0)  # (device, inode): changes when the folder is re-created
    listed: list[str] = dataclasses.field(default_factory=list)  # every entry, sorted
    read_as: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # file -> identity when read
    sources: dict[str, list[int]] | None = None  # set by read_settled: every entry's identity after the read

    @functools.cached_property
    def _tree(self) -> model.Tree:
        actives = [e.moment.name for e in self.entries.values() if e.active]
        current = actives[0] if len(actives) == 1 else None
        return model.Tree(self.kind, self.domain, [e.moment for e in self.entries.values()], current)

    def tree(self) -> model.Tree:
        """The folder's tree (built once: the folder is read once and not changed)."""
        return self._tree

    def problems(self) -> list[codes.Problem]:
        """Every reason this folder cannot be consolidated as it is."""
        found = [codes.Problem(f.code, f.reason, path=str(f.path)) for f in self.failures]
        found += self.tree().validate()
        actives = sorted(e.moment.name for e in self.entries.values() if e.active)
        if len(actives) > 1:
            found.append(codes.Problem(codes.SEVERAL_CURRENT, f"{len(actives)} {self.kind.plural} are marked "
                                                              f"current: {', '.join(map(repr, actives))}"))
        return found


def domain_folder(root: Path, domain: str) -> Path:
    problem = naming.domain_problem(domain)
    if problem:
        raise errors.UnknownDomain(domain=domain, reason=f"snapstore cannot hold this domain ({problem})")
    return root / domain


def domains(root: Path) -> list[str]:
    """Domain folders under a snapshot or checkpoint root (symlinks skipped)."""
    if not root.is_dir():
        raise errors.EnvironmentProblem(path=root, reason="no such folder")
    return sorted(entry.name for entry in os.scandir(root)
                  if entry.is_dir(follow_symlinks=False) and not fsio.is_temp(entry.name, foreign=True))


Sources = index.Sources
# File name -> (its identity when read, parsed entry): lets a caller that
# reads the same folder again parse only the files that changed.
Cache = dict[str, tuple[list[int], legacy.LegacyMoment]]


# File name, parsed element: see legacy.parse_legacy's ``inspect``.
Inspect = Callable[[str, "etree._Element"], None]


def read_folder(root: Path, kind: kinds.Kind, domain: str, limit: int = legacy.LIBVIRT_FILE_LIMIT,
                cache: Cache | None = None, inspect: Inspect | None = None) -> LegacyFolder:
    """Every entry of a domain folder, parsed; ``folder.read_as`` holds the
    identity of each file as read (fstat of the descriptor read from).

    A file in ``cache`` is taken from it unread: whoever passes a cache drops
    the entries of files that changed, and read_settled proves afterwards
    that the others did not.
    """
    path = domain_folder(root, domain)
    folder = LegacyFolder(kind, domain, path)
    with fsio.opened_dir_if_present(path) as dir_fd:
        if dir_fd is None:
            raise errors.UnknownDomain(domain=domain, reason=f"no folder {path}")
        info = os.fstat(dir_fd)
        folder.identity = (info.st_dev, info.st_ino)
        folder.listed = sorted(os.listdir(dir_fd))
        for name in folder.listed:
            hit = cache.get(name) if cache is not None else None
            if hit is not None:
                folder.read_as[name] = hit[0]
                _add(folder, name, hit[1])
            else:
                _read_entry(folder, dir_fd, name, limit, cache, inspect)
    if cache is not None:
        for gone in set(cache) - set(folder.listed):
            del cache[gone]
    return folder


def read_settled(root: Path, kind: kinds.Kind, domain: str, limit: int = legacy.LIBVIRT_FILE_LIMIT,
                 cache: Cache | None = None, attempts: int = 3, inspect: Inspect | None = None) -> LegacyFolder:
    """read_folder, proven to have seen one state of the folder.

    libvirt changes a folder file by file (a new current snapshot is a new
    file, then the old current rewritten), so a read that overlaps a change
    can see a state the folder never held: no current snapshot, say.  After
    the read every entry is stat-ed once more: the same names, and each file
    with the identity (inode, size, mtime) it had when read, prove that what
    was read is what the folder holds now.  Otherwise the changed files are
    read again, and after ``attempts`` reads FolderBusy.  ``folder.sources``
    is that last listing, reusable as the index's sources.
    """
    cache = {} if cache is None else cache  # a second attempt reads only what changed
    for _attempt in range(attempts):
        folder = read_folder(root, kind, domain, limit, cache, inspect)
        after = sources(root, domain)
        changed = _changed_since_read(folder, after)
        if not changed:
            folder.sources = after
            return folder
        for name in changed:
            cache.pop(name, None)
    raise errors.FolderBusy(domain=domain, path=domain_folder(root, domain), attempts=attempts)


def _changed_since_read(folder: LegacyFolder, after: Sources | None) -> set[str]:
    if after is None:
        raise errors.UnknownDomain(domain=folder.domain, reason=f"folder {folder.path} removed while read")
    changed = set(after).symmetric_difference(folder.listed)
    changed.update(name for name, identity in folder.read_as.items() if after.get(name) != identity)
    return changed


def sources(root: Path, domain: str) -> Sources | None:
    """The identity (fsio.identity) of every entry of a domain folder, None
    when there is no folder."""
    with fsio.opened_dir_if_present(domain_folder(root, domain)) as dir_fd:
        if dir_fd is None:
            return None
        found: Sources = {}
        for name in os.listdir(dir_fd):
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:  # removed meanwhile (libvirt deleting a snapshot)
                found[name] = []
                continue
            found[name] = fsio.identity(info)
        return found


def _read_entry(folder: LegacyFolder, dir_fd: int, name: str, limit: int, cache: Cache | None,
                inspect: Inspect | None = None) -> None:
    display = f"{folder.path}{os.sep}{name}"  # a string: a Path per file costs more than parsing it
    if name.endswith(LIBVIRT_TEMP_SUFFIX):
        folder.notes.append(codes.Problem(codes.LIBVIRT_TEMP, "libvirt temp left by an interrupted write, ignored",
                                          path=display))
        folder.libvirt_temps.append(name)
        return
    if not name.endswith(".xml"):
        folder.notes.append(codes.Problem(codes.FOREIGN_FILE,
                                          "not a .xml file, ignored (libvirtd still parses it at start)",
                                          path=display))
        return
    if name.startswith("."):
        folder.failures.append(errors.FormatError(path=display,
                                                  reason="file name starts with '.'; qemu cannot hold such a name",
                                                  code=codes.UNSTORABLE_NAME))
        return
    try:
        data, identity = fsio.read_identified(dir_fd, name, limit, display)
        folder.read_as[name] = identity
        entry = legacy.parse_legacy(data, folder.kind, display, limit,
                                    None if inspect is None else lambda element: inspect(name, element))
    except errors.FormatError as e:
        folder.failures.append(e)
        return
    if cache is not None:
        cache[name] = (identity, entry)
    _add(folder, name, entry)


def _add(folder: LegacyFolder, name: str, entry: legacy.LegacyMoment) -> None:
    if naming.legacy_file_name(entry.moment.name) != name:
        folder.notes.append(codes.Problem(codes.FILE_NAME_MISMATCH, f"holds {folder.kind.name} {entry.moment.name!r}; "
                                          "its name wins, as in libvirt", entry.moment.name,
                                          f"{folder.path}{os.sep}{name}"))
    folder.entries[name] = entry


def format_files(tree: model.Tree) -> dict[str, bytes]:
    """File name -> content of the legacy folder that holds ``tree``."""
    return {naming.legacy_file_name(m.name): legacy.format_legacy(m, tree.kind, m.name == tree.current)
            for m in tree.topological()}


def unstorable_names(tree: model.Tree) -> list[str]:
    """'name' (reason) for each moment that cannot be a libvirt file name."""
    return [f"{m.name!r} ({naming.file_name_problem(m.name)})"
            for m in tree.moments if naming.file_name_problem(m.name)]


@dataclasses.dataclass
class WriteResult:
    path: Path
    changed: bool
    attic: Path | None = None  # where the replaced folder's files were kept
    warnings: list[str] = dataclasses.field(default_factory=list)  # stale temps that could not be swept


Keep = Callable[[dict[str, bytes]], Path]  # copies a replaced folder's files aside; where they went


def write_folder(root: Path, tree: model.Tree, keep: Keep, prune: bool = False,
                 dry_run: bool = False, limit: int = legacy.LIBVIRT_FILE_LIMIT) -> WriteResult:
    """Make ``root/<domain>`` hold exactly ``tree``.

    Files the tree does not hold are refused unless ``prune``; every file
    replaced or pruned is first handed to ``keep`` (the store's attic:
    nothing is lost, and snapstore's own folder has one writer).
    """
    bad = unstorable_names(tree)
    if bad:  # checked here too: a name is joined into a path below
        raise errors.Refused(domain=tree.domain, reason=f"cannot be libvirt file names: {', '.join(bad)}")
    files = format_files(tree)
    path = domain_folder(root, tree.domain)
    left = fsio.sweep_temps(root, foreign=True).left if not dry_run and root.is_dir() else []
    result = _write_folder_swept(root, path, tree, files, keep, prune, dry_run, limit)
    result.warnings += left
    return result


def _write_folder_swept(root: Path, path: Path, tree: model.Tree, files: dict[str, bytes], keep: Keep,
                        prune: bool, dry_run: bool, limit: int) -> WriteResult:
    existing = _existing_files(path, limit)
    extras = sorted(set(existing or {}) - set(files))
    if extras and not prune:
        raise errors.Refused(domain=tree.domain, reason=(
            f"{path} holds {len(extras)} file(s) the store does not: {', '.join(extras)}; "
            "pass --prune to replace the folder (they are kept in the attic)"))
    if existing is not None and _same(existing, files, tree.kind):
        return WriteResult(path, changed=False)
    if dry_run:
        return WriteResult(path, changed=True)
    kept = keep(existing) if existing else None
    _swap_in(root, path.name, files)
    return WriteResult(path, changed=True, attic=kept)


def _existing_files(path: Path, limit: int) -> dict[str, bytes] | None:
    """Raw content of every entry of the current folder, or None if absent."""
    with fsio.opened_dir_if_present(path) as dir_fd:
        if dir_fd is None:
            return None
        return {name: _raw(dir_fd, name, path, limit) for name in os.listdir(dir_fd)}


def _raw(dir_fd: int, name: str, folder: Path, limit: int) -> bytes:
    mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    if not stat.S_ISREG(mode):
        raise errors.Refused(domain=folder.name, reason=f"{folder / name} is not a regular file; "
                                                        "move it away before expanding")
    return fsio.read_regular(dir_fd, name, max(limit, 64 << 20), folder / name)


def _same(existing: dict[str, bytes], files: dict[str, bytes], kind: kinds.Kind) -> bool:
    """Equal in content (C14N, <active> included), whatever the indentation or quotes."""
    if set(existing) != set(files):
        return False
    return all(_canonical_file(existing[name], kind) == _canonical_file(files[name], kind) for name in files)


def _canonical_file(data: bytes, kind: kinds.Kind) -> bytes | None:
    try:
        return xmlsafe.canonical(xmlsafe.parse_bytes(data, "", len(data)))
    except errors.FormatError:
        return None


def _swap_in(root: Path, name: str, files: dict[str, bytes]) -> None:
    """Build the folder under a temp name beside it, then swap it in atomically."""
    with fsio.opened_dir(root) as root_fd:
        temp = fsio.temp_name(foreign=True)
        try:
            fsio.write_folder(root_fd, temp, files)
            if fsio.exists(root_fd, name):
                fsio.exchange(root_fd, temp, name)
            else:
                os.rename(temp, name, src_dir_fd=root_fd, dst_dir_fd=root_fd)
        except OSError as e:
            fsio.remove_quietly(root_fd, temp)
            raise errors.WriteError(path=root / name, reason=fsio.reason(e)) from e
        fsio.fsync_dir(root_fd, root / name)
        fsio.remove_quietly(root_fd, temp)  # the old folder; a leftover is swept as stale

