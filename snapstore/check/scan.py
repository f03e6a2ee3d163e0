"""The checks of one domain and kind, over both layouts (DESIGN §6).

Every problem becomes a finding; nothing stops at the first one, and
nothing here writes.
"""
from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

from snapstore import codes, config, errors, fsio, kinds, legacydir, model, naming, store
from snapstore.check import disks, findings, schema
from snapstore.formats import consolidated, xmlsafe

RPC_LIMIT = 4 * 1024 * 1024  # libvirt's per-string RPC cap: one moment's XML
_DEFINITION_LIMIT = 16 * 1024 * 1024


@dataclasses.dataclass
class Options:
    disks: bool = True
    schema_dir: Path = schema.SCHEMA_DIR
    definitions: Path | None = Path("/etc/libvirt/qemu")  # <domain>.xml, for the uuid check


@dataclasses.dataclass
class Scan:
    """What was read of one domain and kind; repair acts on it."""

    kind: kinds.Kind
    domain: str
    folder: legacydir.LegacyFolder | None = None
    stored: model.Tree | None = None
    store_unreadable: bool = False


class DomainCheck:
    def __init__(self, report: findings.Report, settings: config.Config, state: store.Store,
                 options: Options, kind: kinds.Kind, domain: str) -> None:
        self.report, self.settings, self.store, self.options = report, settings, state, options
        self.kind, self.domain = kind, domain
        self.flag = " --checkpoints" if kind is kinds.CHECKPOINT else ""

    def run(self) -> Scan:
        scan = Scan(self.kind, self.domain, self._folder())
        scan.stored, scan.store_unreadable = self._stored()
        self._compare(scan)
        tree = scan.folder.tree() if scan.folder is not None else scan.stored
        if tree is not None and tree.moments:
            self.report.domains.add(self.domain)
            self.report.counts[self.kind.plural] += len(tree)
            self._definition(tree)
            if self.options.disks and self.kind is kinds.SNAPSHOT:
                disks.check_images(self.report, self.domain, tree)
        return scan

    def add(self, code: str, message: str, moment: str | None = None, path: Path | str | None = None,
            hint: str | None = None) -> None:
        self.report.add(code, message, self.domain, self.kind, moment, path, hint)

    # --- libvirt's folder ---------------------------------------------------------------

    def _folder(self) -> legacydir.LegacyFolder | None:
        root = self.settings.checkpoint_dir if self.kind is kinds.CHECKPOINT else self.settings.libvirt_dir
        path = root / self.domain
        if path.is_symlink():
            self.add(codes.SYMLINK, "domain folder is a symlink, not followed", path=path,
                     hint="replace it with a real folder")
            return None
        if not path.exists():
            return None
        try:
            folder = legacydir.read_settled(root, self.kind, self.domain, self.settings.max_legacy_bytes)
        except errors.SnapstoreError as e:
            self.add(codes.NOT_REGULAR if path.exists() and not path.is_dir() else codes.UNREADABLE, str(e), path=path)
            return None
        self._file_findings(folder)
        self._tree_findings(folder.tree(), {m.name: m.source for m in folder.tree().moments})
        self._current_findings(folder)
        self._schema_findings(folder)
        return folder

    def _file_findings(self, folder: legacydir.LegacyFolder) -> None:
        for failure in folder.failures:
            code = failure.code
            if code == codes.OVER_LIBVIRT_LIMIT and _size(failure.path) > RPC_LIMIT:
                code = codes.OVER_RPC_LIMIT
            self.add(code, failure.reason, path=failure.path, hint=_FILE_HINTS.get(code))
        for note in folder.notes:
            self.add(note.code, note.text, path=note.path, hint=_FILE_HINTS.get(note.code))
        for name in sorted(os.listdir(folder.path)):
            self._mode_finding(folder.path / name)
        self._name_findings([e.moment for e in folder.entries.values()])

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

    def _schema_findings(self, folder: legacydir.LegacyFolder) -> None:
        validator = schema.validator(self.kind.name, self.options.schema_dir)
        if validator is None:
            self.report.note(f"libvirt's schemas are not installed in {self.options.schema_dir}; "
                             "schema validation skipped")
            return
        for entry in folder.entries.values():
            problem = validator.problem(entry.moment.element)
            if problem:
                self.add(codes.SCHEMA_INVALID, problem, entry.moment.name, entry.moment.source)

    # --- the store ---------------------------------------------------------------------

    def _stored(self) -> tuple[model.Tree | None, bool]:
        """The store's tree, and whether a store file exists but cannot be read."""
        path = self.store.path(self.kind, self.domain)
        try:
            data = self.store.read_bytes(self.kind, self.domain)
            if data is None:
                return None, False
            tree = consolidated.parse_consolidated(data, self.kind, str(path), self.settings.max_store_bytes)
        except errors.FormatError as e:
            self.add(e.code, e.reason, path=path, hint=f"snapstore consolidate {self.domain}{self.flag}")
            return None, True
        self._mode_finding(path)
        if tree.domain != self.domain:
            self.add(codes.WRONG_ROOT, f"holds domain {tree.domain!r}", path=path)
        self._tree_findings(tree, {m.name: str(path) for m in tree.moments})
        self._name_findings(tree.moments, str(path))
        return tree, False

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
        elif in_folder and in_store:
            self._compare_moments(in_folder, in_store, scan)

    def _compare_moments(self, in_folder: dict[str, model.Moment], in_store: dict[str, model.Moment],
                         scan: Scan) -> None:
        hint = f"snapstore consolidate {self.domain}{self.flag} (libvirt's folder wins), or --repair"
        for name in sorted(set(in_folder) - set(in_store)):
            self.add(codes.ONLY_IN_FOLDER, f"{self.kind.name} {name!r} is not in the store", name,
                     in_folder[name].source, hint)
        for name in sorted(set(in_store) - set(in_folder)):
            self.add(codes.ONLY_IN_STORE, f"{self.kind.name} {name!r} is not in libvirt's folder", name,
                     self.store.path(self.kind, self.domain), hint)
        for name in sorted(set(in_folder) & set(in_store)):
            if not in_folder[name].same_content(in_store[name]):
                self.add(codes.CONTENT_DIFFERS, f"{self.kind.name} {name!r} differs between store and folder",
                         name, in_folder[name].source, hint)
        folder_current, store_current = scan.folder.tree().current, scan.stored.current
        several = sum(1 for e in scan.folder.entries.values() if e.active) > 1  # reported as SS207
        if folder_current != store_current and not several:
            self.add(codes.CURRENT_DIFFERS, f"current is {folder_current!r} in libvirt's folder, "
                     f"{store_current!r} in the store", path=scan.folder.path, hint=hint)

    # --- the domain definition ---------------------------------------------------------

    def _definition(self, tree: model.Tree) -> None:
        uuid = _definition_uuid(self.options.definitions, self.domain)
        if uuid is None:
            return
        for moment in tree.moments:
            for found in moment.uuids:
                if found != uuid:
                    self.add(codes.UUID_VS_DEFINITION, f"{self.kind.name} {moment.name!r} embeds uuid {found}, "
                             f"the domain is {uuid}", moment.name, moment.source,
                             "this metadata belongs to another domain; restore --rewrite-uuid if intended")
                    break


def _definition_uuid(folder: Path | None, domain: str) -> str | None:
    if folder is None or naming.file_name_problem(domain):
        return None
    try:
        with fsio.opened_dir(folder, missing_ok=True) as dir_fd:
            if dir_fd is None:
                return None
            data = fsio.read_regular(dir_fd, f"{domain}.xml", _DEFINITION_LIMIT, folder / f"{domain}.xml")
        uuid = xmlsafe.parse_bytes(data, str(folder / domain), _DEFINITION_LIMIT).findtext("uuid")
    except errors.SnapstoreError:
        return None
    return uuid.strip().lower() if uuid else None


def _size(path: Path | str) -> int:
    try:
        return Path(path).lstat().st_size
    except OSError:
        return 0


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
