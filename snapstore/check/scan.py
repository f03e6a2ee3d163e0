"""The checks of one domain and kind, over both layouts (DESIGN §6).

Every problem becomes a finding; nothing stops at the first one, and
nothing here writes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from snapstore import codes, config, errors, fsio, kinds, legacydir, limits, model, naming, store
from snapstore.check import bitmaps, disks, findings, generations, memo, schema
from snapstore.check.disks import Images  # the field "disks" hides the module in Options
from snapstore.formats import consolidated, mapping, xmlsafe

_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclasses.dataclass
class Options:
    disks: bool = True
    schema_dir: Path = schema.SCHEMA_DIR
    definitions: Path | None = Path("/etc/libvirt/qemu")  # <domain>.xml, for the uuid check
    run_dir: Path | None = bitmaps.RUN_DIR  # libvirt's status files: which domains run (the bitmap check)
    images: Images = dataclasses.field(default_factory=Images)  # one qemu-img info per image, both kinds
    memo: bool = False  # keep what each domain's files gave (check/memo.py); replayed without disks


@dataclasses.dataclass(frozen=True)
class Seen:
    """A file as the scan saw it: its folder (one name under a root) and the
    (device, inode) of both, so that whatever acts on it later reaches that
    very file through that very folder, or nothing (the folder may have been
    swapped for a symlink since)."""

    root: Path
    folder: str
    folder_id: tuple[int, int]
    name: str
    file_id: tuple[int, int] | None  # None: listed but never identified

    @property
    def path(self) -> Path:
        return self.root / self.folder / self.name

    def changed(self) -> errors.EnvironmentProblem:
        return errors.EnvironmentProblem(path=self.path, reason="changed since the scan")

    @contextlib.contextmanager
    def opened_folder(self) -> Iterator[int]:
        """The folder's descriptor (O_NOFOLLOW under the root), if it is still the one scanned."""
        try:
            fd = os.open(self.root / self.folder, _FOLDER_FLAGS)
        except OSError as e:  # gone, or swapped for a symlink (ELOOP) or a file
            raise self.changed() from e
        try:
            if _pair(os.fstat(fd)) != self.folder_id:
                raise self.changed()
            yield fd
        finally:
            os.close(fd)

    def read(self, folder_fd: int, limit: int) -> bytes:
        """The file's bytes, read through ``folder_fd``, if it is still the one scanned."""
        data, identity = fsio.read_identified(folder_fd, self.name, limit, self.path)
        if (identity[0], identity[1]) != self.file_id:
            raise self.changed()
        return data


@dataclasses.dataclass
class Scan:
    """What was read of one domain and kind; repair acts on it."""

    kind: kinds.Kind
    domain: str
    folder: legacydir.LegacyFolder | None = None
    stored: model.Tree | None = None
    store_unreadable: bool = False
    store_seen: Seen | None = None

    def seen(self, path: str | None) -> Seen | None:
        """How the scan saw ``path``: a file of libvirt's folder or the store file."""
        if self.store_seen is not None and path == str(self.store_seen.path):
            return self.store_seen
        if self.folder is None or path is None or Path(path).parent != self.folder.path:
            return None
        return _folder_seen(self.folder, Path(path).name)


class DomainCheck:
    def __init__(self, report: findings.Report, settings: config.Config, state: store.Store,
                 options: Options, kind: kinds.Kind, domain: str) -> None:
        self.report, self.settings, self.store, self.options = report, settings, state, options
        self.kind, self.domain = kind, domain
        self.flag = " --checkpoints" if kind is kinds.CHECKPOINT else ""
        self._notes: list[str] = []  # the notes of this domain's files (report.note drops repeats)

    def run(self) -> Scan:
        of, began = self._inputs()
        replayed = self._replayed(of) if of is not None and not self.options.disks else None
        if replayed is not None:
            scan, uuids = Scan(self.kind, self.domain), replayed.uuids  # nothing read: nothing to repair
        else:
            scan, uuids = self._read_both(of, began)
        generations.check_history(self.report, self.store, self.kind, self.domain)
        self._definition(uuids)
        if replayed is None and self.options.disks:
            tree = scan.folder.tree() if scan.folder is not None else scan.stored
            if tree is not None and tree.moments and self.kind is kinds.SNAPSHOT:
                disks.check_images(self.report, self.domain, tree, self.options.images)
            if tree is not None and self.kind is kinds.CHECKPOINT:
                bitmaps.check_bitmaps(self.report, self.domain, tree, scan.stored, self.options.images,
                                      self.options.run_dir, self.options.definitions)
        return scan

    def _read_both(self, of: memo.Inputs | None, began: int) -> tuple[Scan, list[memo.Uuids]]:
        """Read and check libvirt's folder and the store file, each file in
        full; what they gave is kept as the memo of ``of``."""
        first, self._notes = len(self.report.findings), []
        scan = Scan(self.kind, self.domain, self._folder())
        self._stored(scan)
        self._compare(scan)
        counted, moments = self._count(scan)
        tree = scan.folder.tree() if scan.folder is not None else scan.stored
        uuids = [(m.name, m.source, list(m.uuids)) for m in tree.moments if m.uuids] if tree is not None else []
        if of is not None and memo.settled(of, began):
            found = [[f.code, f.message, f.moment, f.path, f.hint] for f in self.report.findings[first:]]
            kept = memo.Memo(found, self._notes, counted, moments, uuids)
            self._keep(of, kept)
        return scan, uuids

    def _inputs(self) -> tuple[memo.Inputs | None, int]:
        if not self.options.memo or not self.store.index_path(self.kind, self.domain).parent.is_dir():
            return None, 0  # no store: nowhere to keep a memo
        began = time.time_ns()
        limits_ = [self.settings.max_legacy_bytes, self.settings.max_store_bytes, self.store.read_limit]
        try:
            return memo.inputs(self.settings.root(self.kind) / self.domain, self.store.path(self.kind, self.domain),
                               self.options.schema_dir, limits_), began
        except OSError:  # no memo of what cannot be stat-ed: the files are read, and their trouble reported
            return None, 0

    def _replayed(self, of: memo.Inputs) -> memo.Memo | None:
        """The memo of exactly these inputs, its findings and counts added."""
        path = self._memo_path()
        try:
            found = memo.read(path, of)
        except errors.SnapstoreError as e:
            self.store.warn(f"check memo not read, every file is read instead: {e}")
            return None
        if found is None:
            return None
        for code, message, moment, where, hint in found.findings:
            self.add(code, message, moment, where, hint)
        for note in found.notes:
            self.report.note(note)
        self._counted(found.counted, found.moments)
        return found

    def _keep(self, of: memo.Inputs, kept: memo.Memo) -> None:
        try:
            memo.write(self._memo_path(), of, kept)
        except errors.SnapstoreError as e:  # the check itself stands
            self.store.warn(f"check memo not kept: {e}")

    def _memo_path(self) -> Path:
        index_path = self.store.index_path(self.kind, self.domain)
        return index_path.with_name("check." + index_path.name)

    def _count(self, scan: Scan) -> tuple[bool, int]:
        """A domain counts when it has moment files or a store file; its moments
        are the folder's moment files, parsed or not (one snapstore refuses may
        still be a snapshot libvirt holds), else the store's."""
        files = _moment_files(scan.folder) if scan.folder is not None else 0
        counted = bool(files or scan.stored is not None or scan.store_unreadable)
        moments = files or (len(scan.stored) if scan.stored is not None else 0)
        self._counted(counted, moments)
        return counted, moments

    def _note(self, text: str) -> None:
        self._notes.append(text)
        self.report.note(text)

    def _counted(self, counted: bool, moments: int) -> None:
        if counted:
            self.report.domains.add(self.domain)
            self.report.counts[self.kind.plural] += moments

    def add(self, code: str, message: str, moment: str | None = None, path: Path | str | None = None,
            hint: str | None = None) -> None:
        self.report.add(code, message, self.domain, self.kind, moment, path, hint)

    # --- libvirt's folder ---------------------------------------------------------------

    def _folder(self) -> legacydir.LegacyFolder | None:
        root = self.settings.root(self.kind)
        path = root / self.domain
        if path.is_symlink():
            self.add(codes.SYMLINK, "domain folder is a symlink, not followed", path=path,
                     hint="replace it with a real folder")
            return None
        if not path.exists():
            return None
        validator = schema.validator(self.kind.name, self.options.schema_dir)
        invalid: dict[str, str | None] = {}  # file name -> why its element does not validate
        try:
            folder = legacydir.read_settled(
                root, self.kind, self.domain, self.settings.max_legacy_bytes,
                inspect=None if validator is None else lambda name, element: invalid.update(
                    {name: validator.problem(element)}))
        except errors.SnapstoreError as e:
            self.add(codes.NOT_REGULAR if path.exists() and not path.is_dir() else codes.UNREADABLE, str(e), path=path)
            return None
        self._file_findings(folder)
        self._tree_findings(folder.tree(), {m.name: m.source for m in folder.tree().moments})
        self._current_findings(folder)
        self._schema_findings(folder, invalid if validator is not None else None)
        return folder

    def _file_findings(self, folder: legacydir.LegacyFolder) -> None:
        for failure in folder.failures:
            code = failure.code
            if code == codes.OVER_LIBVIRT_LIMIT and _size(failure.path) > limits.RPC_STRING:
                code = codes.OVER_RPC_LIMIT
            if code == codes.UNPARSABLE and self._libvirt_loads(folder, Path(failure.path).name):
                self.add(code, f"{failure.reason}; libvirt loads it, but snapstore cannot consolidate the domain "
                         "while it is there", path=failure.path, hint=_LOADED_HINT)
            else:
                self.add(code, failure.reason, path=failure.path, hint=_FILE_HINTS.get(code))
        for note in folder.notes:
            self.add(note.code, note.message, path=note.path, hint=_FILE_HINTS.get(note.code))
        for name in folder.listed:
            self._mode_finding(folder.path / name)
        self._name_findings([e.moment for e in folder.entries.values()])

    def _libvirt_loads(self, folder: legacydir.LegacyFolder, name: str) -> bool:
        """Whether libvirt loads a file snapstore's parser refused (a DOCTYPE,
        an entity reference): read again as the scan saw it."""
        seen = _folder_seen(folder, name)
        try:
            with seen.opened_folder() as folder_fd:
                return libvirt_loads(seen.read(folder_fd, self.settings.max_legacy_bytes), self.kind)
        except errors.SnapstoreError:  # changed since: say what the read found
            return False

    def _name_findings(self, moments: list[model.Moment], path: str | None = None) -> None:
        for moment in moments:
            problem = naming.file_name_problem(moment.name) if moment.name else None  # empty: SS201
            if problem:
                self.add(codes.UNSTORABLE_NAME, f"{self.kind.name} {moment.name!r}: {problem}",
                         moment.name, path or moment.source)

    def _mode_finding(self, path: Path) -> None:
        try:
            info = path.lstat()
        except OSError:
            return
        if stat.S_ISREG(info.st_mode) and info.st_mode & 0o777 & ~0o600:
            self.add(codes.MODE_TOO_WIDE, f"mode {info.st_mode & 0o777:04o}, expected 0600", path=path,
                     hint=f"chmod 600 {path} (or snapstore check --repair)")

    def _tree_findings(self, tree: model.Tree, sources: dict[str, str]) -> None:
        for problem in tree.validate():
            self.add(problem.code, problem.message, problem.moment, sources.get(problem.moment or ""))

    def _current_findings(self, folder: legacydir.LegacyFolder) -> None:
        if not self.kind.stores_current or not folder.entries:
            return
        actives = sorted(e.moment.name for e in folder.entries.values() if e.active)
        if len(actives) > 1:
            self.add(codes.SEVERAL_CURRENT, f"{len(actives)} snapshots are marked current: "
                     f"{', '.join(map(repr, actives))}", path=folder.path,
                     hint="set <active>0</active> in all but one file, while libvirtd is stopped")
        elif not actives:
            self.add(codes.NO_CURRENT, "no snapshot is marked current", path=folder.path,
                     hint=f"virsh snapshot-current {self.domain} NAME, if one should be")

    def _schema_findings(self, folder: legacydir.LegacyFolder, invalid: dict[str, str | None] | None) -> None:
        """SS108 for each file whose element did not validate: checked as the
        folder read parsed it (header comment included), so each line named
        is a line of the bytes read, and nothing is parsed twice."""
        if invalid is None:
            self._note(f"libvirt's schemas are not installed in {self.options.schema_dir}; "
                       "schema validation skipped")
            return
        for name, entry in folder.entries.items():
            problem = invalid.get(name)
            if problem:
                self.add(codes.SCHEMA_INVALID, problem, entry.moment.name, entry.moment.source)

    # --- the store ---------------------------------------------------------------------

    def _stored(self, scan: Scan) -> None:
        """The store's tree into ``scan``, or whether a store file exists but cannot be read."""
        path = self.store.path(self.kind, self.domain)
        try:
            data = self._read_store(scan, path)
            if data is None:
                return
            if self._committed_from(scan, data):
                self._mode_finding(path)
                scan.stored = scan.folder.tree() if scan.folder is not None else None
                return
            tree = consolidated.parse_consolidated(data, self.kind, str(path), self.settings.max_store_bytes)
        except errors.FormatError as e:
            self.add(e.code, e.reason, path=path, hint=f"snapstore consolidate {self.domain}{self.flag}")
            scan.store_unreadable = True
            return
        self._mode_finding(path)
        if tree.domain != self.domain:
            self.add(codes.WRONG_ROOT, f"holds domain {tree.domain!r}", path=path)
        self._tree_findings(tree, {m.name: str(path) for m in tree.moments})
        self._name_findings(tree.moments, str(path))
        scan.stored = tree

    def _committed_from(self, scan: Scan, data: bytes) -> bool:
        """Whether the store file is, byte for byte (the SHA-256 its index
        records), the one snapstore committed from exactly the files this
        read of the folder found (the identities the index records as its
        sources): it then holds the folder's tree, validated before it was
        committed, and parsing it again would find nothing the folder's
        checks did not. Anything else (an edit, an undo, a pull, an index
        lost or stale) is parsed and compared moment by moment."""
        folder = scan.folder
        if folder is None or folder.sources is None or folder.failures:
            return False
        entry = self.store.unchanged(self.kind, self.domain, folder.sources)
        return entry is not None and entry.sha256 is not None and entry.sha256 == hashlib.sha256(data).hexdigest()

    def _read_store(self, scan: Scan, path: Path) -> bytes | None:
        """The store file's bytes (None when absent); ``scan.store_seen`` says which file."""
        with fsio.opened_dir_if_present(path.parent) as folder_fd:
            if folder_fd is None:
                return None
            try:
                data, identity = fsio.read_identified(folder_fd, path.name, self.store.read_limit, path)
            except errors.FormatError as e:
                if isinstance(e.__cause__, FileNotFoundError):
                    return None
                raise
            scan.store_seen = Seen(self.store.root, path.parent.name, _pair(os.fstat(folder_fd)), path.name,
                                   (identity[0], identity[1]))
        return data

    # --- store vs folder ---------------------------------------------------------------

    def _compare(self, scan: Scan) -> None:
        in_folder = {e.moment.name: e.moment for e in scan.folder.entries.values()} if scan.folder else {}
        in_store = scan.stored.by_name if scan.stored is not None else {}
        if in_folder and scan.stored is None and not scan.store_unreadable:
            self.add(codes.STORE_MISSING, f"no consolidated file for {len(in_folder)} {self.kind.plural}",
                     path=self.store.path(self.kind, self.domain),
                     hint=f"snapstore consolidate {self.domain}{self.flag}")
        elif in_store and not in_folder:
            self.add(codes.FOLDER_MISSING, f"libvirt's folder lacks all {len(in_store)} {self.kind.plural} "
                     "the store holds (lost metadata?)", path=self.store.path(self.kind, self.domain),
                     hint=f"snapstore expand {self.domain}{self.flag} (libvirtd stopped), or snapstore restore")
        elif scan.folder is not None and scan.stored is not None and in_folder and in_store:
            self._compare_moments(in_folder, in_store, scan.folder, scan.stored)

    def _compare_moments(self, in_folder: dict[str, model.Moment], in_store: dict[str, model.Moment],
                         folder: legacydir.LegacyFolder, stored: model.Tree) -> None:
        hint = f"snapstore consolidate {self.domain}{self.flag} (libvirt's folder wins), or --repair"
        for name in sorted(set(in_folder) - set(in_store)):
            self.add(codes.ONLY_IN_FOLDER, f"{self.kind.name} {name!r} is not in the store", name,
                     in_folder[name].source, hint)
        for name in sorted(set(in_store) - set(in_folder)):
            self.add(codes.ONLY_IN_STORE, f"{self.kind.name} {name!r} is not in libvirt's folder", name,
                     self.store.path(self.kind, self.domain), hint)
        for name in sorted(set(in_folder) & set(in_store)):
            if not mapping.same_content(in_folder[name], in_store[name]):
                self.add(codes.CONTENT_DIFFERS, f"{self.kind.name} {name!r} differs between store and folder",
                         name, in_folder[name].source, hint)
        folder_current, store_current = folder.tree().current, stored.current
        several = sum(1 for e in folder.entries.values() if e.active) > 1  # reported as SS207
        if folder_current != store_current and not several:
            self.add(codes.CURRENT_DIFFERS, f"current is {folder_current!r} in libvirt's folder, "
                     f"{store_current!r} in the store", path=folder.path, hint=hint)

    # --- the domain definition ---------------------------------------------------------

    def _definition(self, uuids: list[memo.Uuids]) -> None:
        uuid = _definition_uuid(self.options.definitions, self.domain) if uuids else None
        if uuid is None:
            return
        for name, source, found in uuids:
            other = next((u for u in found if u != uuid), None)
            if other is not None:
                self.add(codes.UUID_VS_DEFINITION, f"{self.kind.name} {name!r} embeds uuid {other}, "
                         f"the domain is {uuid}", name, source,
                         "this metadata belongs to another domain; restore --rewrite-uuid if intended")


def _definition_uuid(folder: Path | None, domain: str) -> str | None:
    if naming.domain_problem(domain):
        return None
    definition = bitmaps.read_domain_xml(folder, domain)  # None when absent or unreadable: no uuid check
    uuid = definition.findtext("uuid") if definition is not None else None
    return uuid.strip().lower() if uuid else None


def libvirt_loads(data: bytes, kind: kinds.Kind) -> bool:
    """Whether libvirt would load this file as a ``kind``: within its 1 MiB
    cap, well-formed for libxml2 as libvirt calls it (without
    XML_PARSE_NOENT, so a DOCTYPE and entity references are fine), and the
    kind's root."""
    if len(data) > limits.LIBVIRT_FILE:
        return False
    return xmlsafe.libvirt_root_tag(data) == kind.root_tag


def _folder_seen(folder: legacydir.LegacyFolder, name: str) -> Seen:
    identity = (folder.sources or {}).get(name) or folder.read_as.get(name)
    return Seen(folder.path.parent, folder.path.name, folder.identity, name,
                (identity[0], identity[1]) if identity else None)


def _moment_files(folder: legacydir.LegacyFolder) -> int:
    """Its *.xml files, parsed or not; FIFOs, sockets and folders are not files."""
    return len(folder.entries) + sum(1 for failure in folder.failures if failure.code != codes.NOT_REGULAR)


def _pair(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _size(path: Path | str) -> int:
    try:
        return Path(path).lstat().st_size
    except OSError:
        return 0


_LOADED_HINT = ("rewrite it without the DOCTYPE and entity references while libvirtd is stopped; "
                "check --repair leaves it, as libvirt loads it")
_FILE_HINTS = {
    codes.UNPARSABLE: "snapstore check --repair moves it to the attic",
    codes.WRONG_ROOT: "snapstore check --repair moves it to the attic",
    codes.LIBVIRT_TEMP: "snapstore check --repair moves it to the attic",
    codes.SYMLINK: "replace the link with the file it points to, or remove it",
    codes.NOT_REGULAR: "move it out of the folder",
    codes.FOREIGN_FILE: "move it out of the folder",
    codes.OVER_LIBVIRT_LIMIT: "libvirt ignores it; shrink the metadata or remove the snapshot",
    codes.OVER_RPC_LIMIT: "libvirt ignores it and no API can move it; shrink the metadata",
}
