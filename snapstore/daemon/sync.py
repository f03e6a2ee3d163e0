"""Bring one domain's consolidated file in step with its libvirt folder.

The consistency gate: only a folder that passes every rule of DESIGN §2
(at most one <active>1, no libvirt write in flight) is committed. An
inconsistent one is retried until the settle timeout, then the domain is
degraded: the last good file stays and the reasons are logged once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
import shlex
from collections.abc import Callable
from pathlib import Path

from snapstore import config, errors, kinds, legacydir, model, naming, ops, store
from snapstore.daemon import logs

log = logging.getLogger("snapstore.daemon")


class Outcome(enum.Enum):
    COMMITTED = "committed"
    UNCHANGED = "unchanged"
    UNSETTLED = "unsettled"   # inconsistent, still inside the settle timeout: retry
    DEGRADED = "degraded"     # inconsistent past the settle timeout: last good file kept
    GUARDED = "guarded"       # the store holds moments libvirt lost: not overwritten
    ATTIC = "attic"           # the domain folder is gone: its file moved to attic/
    ABSENT = "absent"         # neither folder nor file, or not a domain folder at all
    SKIPPED = "skipped"       # a folder whose name no libvirt domain can have: logged once, in STATUS
    FAILED = "failed"         # reading or committing failed (lock, disk): retried with backoff


_MAX_BACKOFF = 30.0
# The consistency gate: no libvirt write in flight; two reads at most (the
# second re-reads a file changed before the first whose event is still on
# its way); emptying allowed while running (libvirt deleted every moment).
_GATE = ops.Policy(allow_empty=True, in_flight_ok=False, attempts=2, by="daemon: libvirt's folder changed")


@dataclasses.dataclass
class DomainState:
    cache: legacydir.Cache = dataclasses.field(default_factory=dict)
    folder: tuple[int, int] | None = None  # identity of the folder last committed from
    uuid: str | None = None  # domain uuid of the tree last committed
    unsettled_since: float | None = None
    degraded: list[str] | None = None
    guarded: bool = False
    skipped: str | None = None  # why the folder cannot be a domain's
    undone: str | None = None  # the undo (or fleet pull) that set the store, libvirt not yet in line
    failures: int = 0
    count: int = 0


Key = tuple[kinds.Kind, str]


@dataclasses.dataclass
class Staged:
    """A commit written ahead of its deadline (Synchronizer.stage)."""

    key: Key
    folder: legacydir.LegacyFolder
    commit: store.StagedCommit
    lock: contextlib.ExitStack  # holds the domain's lock
    seen: list[int] | None  # the folder's _folder_stamp before the read


def _folder_stamp(path: Path) -> list[int] | None:
    """What any entry created, renamed or removed in a folder changes."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return [info.st_dev, info.st_ino, info.st_mtime_ns, info.st_ctime_ns]


class Synchronizer:
    def __init__(self, settings: config.Config, state: store.Store, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.store = state
        self.clock = clock
        self.domains: dict[Key, DomainState] = {}

    def root(self, kind: kinds.Kind) -> Path:
        return self.settings.root(kind)

    def all_keys(self) -> list[Key]:
        """Every domain known to libvirt's roots or to the store."""
        keys = set(self.domains)
        for kind in kinds.ALL:
            keys.update((kind, domain) for domain in self.store.domains(kind))
            if self.root(kind).is_dir():
                keys.update((kind, domain) for domain in legacydir.domains(self.root(kind)))
        return sorted(keys, key=lambda key: (key[0].name, key[1]))

    def retry_after(self, key: Key, outcome: Outcome | None) -> float | None:
        """Seconds until ``key`` is synced again, or None to wait for an event."""
        if outcome is Outcome.UNSETTLED:
            return self.settings.quiet_period
        if outcome is Outcome.FAILED:
            failures = self.domains[key].failures
            return min(_MAX_BACKOFF, max(self.settings.quiet_period, 0.1) * 2.0 ** min(failures, 10))
        return None

    def forget(self, key: Key, name: str) -> None:
        """libvirt changed the file ``name``: parse it again at the next sync."""
        state = self.domains.get(key)
        if state is not None:
            state.cache.pop(name, None)

    def sync(self, key: Key, at_start: bool = False) -> Outcome:
        kind, domain = key
        path = self.root(kind) / domain
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            self.domains.pop(key, None)  # a foreign file in libvirt's root, not a domain
            return Outcome.ABSENT
        state = self.domains.setdefault(key, DomainState())
        problem = naming.domain_problem(domain)
        if problem:
            return self._skip(key, state, problem)
        try:
            with self.store.lock(kind, domain):  # from reading the folder to the commit
                outcome = self._sync(key, state, at_start)
        except (errors.SnapstoreError, OSError) as e:
            return self._failed(key, state, e)
        state.failures = 0
        return outcome

    def _failed(self, key: Key, state: DomainState, error: Exception) -> Outcome:
        kind, domain = key
        state.failures += 1
        log.error("%s %s: %s (retrying)", kind.name, domain, error, extra=logs.fields(logs.FAILED, domain))
        self._restore_layout()
        return Outcome.FAILED

    def _skip(self, key: Key, state: DomainState, problem: str) -> Outcome:
        kind, domain = key
        if state.skipped is None:
            log.warning("%s root %s: folder %r is not a libvirt domain's (%s); ignored: move it out of the root",
                        kind.name, self.root(kind), domain, problem, extra=logs.fields(logs.FAILED))
        state.skipped = problem
        return Outcome.SKIPPED

    def _restore_layout(self) -> None:
        """A removed state folder (or subfolder) is created again, as at
        start, so the retry can commit; anything else is the retry's to meet."""
        try:
            created = self.store.prepare(sweep=False)
        except errors.SnapstoreError as e:
            log.error("state folder unusable: %s", e, extra=logs.fields(logs.FAILED))
            return
        for path in created:
            log.warning("state folder %s was missing; created it again", path, extra=logs.fields(logs.FAILED))

    def _sync(self, key: Key, state: DomainState, at_start: bool) -> Outcome:
        kind, domain = key
        try:
            folder = ops.read_consistent(self.settings, kind, domain, _GATE, state.cache)
        except errors.UnknownDomain:
            return self._folder_gone(key, state, at_start)
        except errors.FolderBusy as e:  # the change that overlapped the read has its own event: read after it
            return self._unsettled(key, state, [str(e)])
        except errors.TreeError as e:  # each problem with its code: the log says which rule
            return self._unsettled(key, state, [str(problem) for problem in e.problems])
        return self._commit(key, state, folder, at_start)

    def _commit(self, key: Key, state: DomainState, folder: legacydir.LegacyFolder, at_start: bool) -> Outcome:
        kind, domain = key
        tree = folder.tree()
        if state.guarded and tree.moments and self._held(key):
            self._set_aside(key, f"libvirt has new {kind.plural}")
        elif not state.guarded and self._replaces_another(key, state, folder, tree):
            self._set_aside(key, "its libvirt folder was re-created")
        # At start (and while guarded) an empty folder means lost metadata
        # (a reinstall): the store's emptying guard keeps the file.
        try:
            changed = ops.commit(self.store, folder, _GATE._replace(allow_empty=not (at_start or state.guarded)))
        except errors.Emptying as e:
            self._report_guard(key, state, e.held, "is empty")
            return Outcome.GUARDED
        except errors.Guarded as e:
            if state.undone is None:
                log.warning("%s %s: %s", kind.name, domain, e.reason, extra=logs.fields(logs.GUARDED, domain))
            state.undone = e.by
            return Outcome.GUARDED
        return self._committed(key, state, folder, changed)

    def _committed(self, key: Key, state: DomainState, folder: legacydir.LegacyFolder, changed: bool) -> Outcome:
        kind, domain = key
        tree = folder.tree()
        state.guarded, state.undone = False, None
        state.folder, state.uuid = folder.identity, tree.uuid() or state.uuid
        self._settled(key, state)
        state.count = len(tree)
        if changed:
            log.info("%s %s: committed %d %s, current %s", kind.name, domain, len(tree), kind.plural,
                     tree.current, extra=logs.fields(logs.COMMITTED, domain, tree.current))
            return Outcome.COMMITTED
        return Outcome.UNCHANGED

    # --- writing ahead: the end of a quiet period -------------------------------------

    def stage(self, key: Key) -> Staged | None:
        """The commit of a plain change, read, checked and written (durable)
        ahead of its deadline, the domain's lock held until it is published or
        discarded; None when anything is not plain (a first sync, a guard, an
        undo, a degraded or failing domain, a re-created folder, an emptied
        one, an unsettled read, a tree the store holds already): the sync
        then runs at the deadline, as ever, and says what it finds."""
        kind, domain = key
        state = self.domains.get(key)
        if state is None or state.folder is None or state.guarded or state.undone is not None \
                or state.degraded is not None or state.unsettled_since is not None or state.failures:
            return None
        lock = contextlib.ExitStack()
        try:
            lock.enter_context(self.store.lock(kind, domain, timeout=0))  # held by a command: not ahead
            seen = _folder_stamp(self.root(kind) / domain)  # before the read: a change after it shows
            folder = ops.read_consistent(self.settings, kind, domain, _GATE, state.cache)
            tree = folder.tree()
            commit = None
            if tree.moments and not self._replaces_another(key, state, folder, tree) \
                    and self.store.history.guarded(kind, domain) is None:  # an undo's guard: the deadline's
                commit = self.store.stage(tree, ops.recorded_sources(folder, _GATE), _GATE.by)
        except (errors.TreeError, errors.Refused, errors.LockTimeout, errors.UnknownDomain) as e:
            log.debug("%s %s: not written ahead: %s", kind.name, domain, e)  # the sync at the deadline says it
            commit = None
        except (errors.SnapstoreError, OSError) as e:  # a disk's fault: said now, the deadline's sync tries again
            log.warning("%s %s: not written ahead, synced at the deadline instead: %s", kind.name, domain, e,
                        extra=logs.fields(logs.FAILED, domain))
            commit = None
        if commit is None:
            lock.close()
            return None
        return Staged(key, folder, commit, lock, seen)

    def publish(self, staged: Staged) -> Outcome:
        """Make a staged commit live (the domain's lock released after),
        unless the folder moved since its read began without an event (a
        libvirt temp, which the watcher ignores, or an event lost): then it
        is discarded and the domain synced now."""
        state = self.domains[staged.key]
        if _folder_stamp(self.root(staged.key[0]) / staged.key[1]) != staged.seen:
            self.discard(staged)
            return self.sync(staged.key)
        try:
            with staged.lock:
                self.store.publish(staged.commit)
        except (errors.SnapstoreError, OSError) as e:
            return self._failed(staged.key, state, e)
        return self._committed(staged.key, state, staged.folder, True)

    def discard(self, staged: Staged) -> None:
        """Drop a staged commit: its folder changed before the deadline."""
        kind, domain = staged.key
        with staged.lock:
            try:
                staged.commit.discard()
            except errors.SnapstoreError as e:
                log.warning("%s %s: %s", kind.name, domain, e, extra=logs.fields(logs.FAILED, domain))

    def _replaces_another(self, key: Key, state: DomainState, folder: legacydir.LegacyFolder,
                          tree: model.Tree) -> bool:
        """True when committing would drop moments of an earlier incarnation.

        Undefine and define again within one quiet period looks like an
        ordinary change; another domain uuid, or the folder's new inode,
        tells it apart (an inode number can be reused at once, a uuid
        cannot). The store file is read only then, or on a key's first sync.
        """
        recreated = state.folder is not None and state.folder != folder.identity
        if state.folder is not None and not recreated:
            return None not in (state.uuid, tree.uuid()) and state.uuid != tree.uuid()
        old = self.store.summary(*key)  # the index: no parse of the whole file at start
        if old is None or not old.rows:
            return False
        other_uuid = None not in (old.uuid, tree.uuid()) and old.uuid != tree.uuid()
        return other_uuid or (recreated and not {row[0] for row in old.rows} <= set(tree.by_name))

    def _set_aside(self, key: Key, why: str) -> None:
        kind, domain = key
        kept = self.store.to_attic(kind, domain)
        log.warning("%s %s: %s; the previous file is kept in %s", kind.name, domain, why, kept,
                    extra=logs.fields(logs.ATTIC, domain))

    def _folder_gone(self, key: Key, state: DomainState, at_start: bool) -> Outcome:
        kind, domain = key
        held = self._held(key)
        if self.store.read_bytes(kind, domain) is None:
            self.domains.pop(key, None)
            return Outcome.ABSENT
        if at_start or state.guarded or not self.root(kind).is_dir():
            self._report_guard(key, state, held, "is missing")
            return Outcome.GUARDED
        kept = self.store.to_attic(kind, domain)
        log.info("%s %s: libvirt folder removed (undefine); file moved to %s", kind.name, domain, kept,
                 extra=logs.fields(logs.ATTIC, domain))
        self.domains.pop(key, None)
        return Outcome.ATTIC

    def _report_guard(self, key: Key, state: DomainState, held: int, what: str) -> None:
        kind, domain = key
        if not state.guarded:
            log.warning("%s %s: libvirt folder %s but the store holds %d %s; not overwriting it. "
                        "Bring them back with: snapstore expand %s%s", kind.name, domain, what, held,
                        kind.plural, shlex.quote(domain), " --checkpoints" if kind is kinds.CHECKPOINT else "",
                        extra=logs.fields(logs.GUARDED, domain))
        state.guarded = True
        state.count = held

    def _held(self, key: Key) -> int:
        try:
            found = self.store.summary(*key)
        except errors.SnapstoreError:
            return 1  # unreadable: treat as holding something, never overwrite blindly
        return len(found.rows) if found else 0

    def _unsettled(self, key: Key, state: DomainState, problems: list[str]) -> Outcome:
        kind, domain = key
        now = self.clock()
        if state.unsettled_since is None:
            state.unsettled_since = now
            log.debug("%s %s: inconsistent, waiting: %s", kind.name, domain, "; ".join(problems))
        if now - state.unsettled_since < self.settings.settle_timeout:
            return Outcome.UNSETTLED
        if state.degraded is None:
            log.warning("%s %s: degraded, keeping the last good file: %s", kind.name, domain,
                        "; ".join(problems), extra=logs.fields(logs.DEGRADED, domain))
        state.degraded = problems
        return Outcome.DEGRADED

    def _settled(self, key: Key, state: DomainState) -> None:
        if state.degraded is not None:
            log.info("%s %s: consistent again", key[0].name, key[1], extra=logs.fields(logs.RECOVERED, key[1]))
        state.unsettled_since = None
        state.degraded = None

    def status(self) -> str:
        """systemd STATUS= text: counts, and what needs an operator."""
        counts = {kind: sum(s.count for (k, _), s in self.domains.items() if k is kind) for kind in kinds.ALL}
        domains = len({domain for (_, domain), state in self.domains.items() if state.skipped is None})
        text = (f"{domains} domains, {counts[kinds.SNAPSHOT]} snapshots, "
                f"{counts[kinds.CHECKPOINT]} checkpoints")
        for label, test in (("degraded", lambda s: s.degraded is not None),
                            ("failing", lambda s: s.failures > 0),
                            ("skipped (not a libvirt domain folder)", lambda s: s.skipped is not None),
                            ("undone (run snapstore restore)", lambda s: s.undone is not None),
                            ("guarded (store kept, libvirt folder missing or empty)", lambda s: s.guarded)):
            names = sorted(d for (_, d), state in self.domains.items() if test(state))
            if names:
                text += f"; {label}: {', '.join(names)}"
        return errors.one_line(text)
