"""The jobs snapstore does, each written once: the command line, the daemon
and `check --repair` call them and only decide what to say.

consolidate = read a libvirt folder in one state, check every rule, commit
it through the store's one writer. The daemon and repair compose the same
two steps (read_consistent, commit) around their own decisions, under the
domain lock held from the read to the commit.
"""
from __future__ import annotations

import contextlib
import typing
from collections.abc import Callable

from snapstore import codes, config, errors, kinds, legacydir, store


class Policy(typing.NamedTuple):
    """How one consolidation may go."""

    allow_empty: bool = False  # an emptied folder may replace a store file that holds moments
    dry_run: bool = False      # check and compare, write nothing
    in_flight_ok: bool = True  # a libvirt temp (*.xml.new) is a remark, not a refusal (the daemon waits instead)
    attempts: int = 3          # reads of a folder libvirt keeps changing before FolderBusy
    origin: store.Origin | None = None  # how a refused emptying is worded
    by: str = "consolidate"    # what the history says replaced the previous file


class Consolidated(typing.NamedTuple):
    """What one consolidation found and did."""

    kind: kinds.Kind
    domain: str
    total: int  # moments committed (or found unchanged)
    current: str | None
    changed: bool


Note = Callable[[codes.Problem], None]  # told each remark about a folder as it is read (stale temps, foreign files)


def _unheard(_problem: codes.Problem) -> None:
    """The daemon's default: remarks are check's to report."""


def consolidate(state: store.Store, settings: config.Config, kind: kinds.Kind, domain: str,
                policy: Policy = Policy(), note: Note = _unheard) -> Consolidated:
    """The domain's libvirt folder committed as its consolidated file.

    The lock is held from the read to the commit: a run that waited for it
    must not commit the folder as it was before it waited.
    """
    with contextlib.nullcontext() if policy.dry_run else state.lock(kind, domain):
        known = _unchanged(state, settings, kind, domain)
        if known is not None:
            return known
        folder = read_consistent(settings, kind, domain, policy, note=note)
        return Consolidated(kind, domain, len(folder.tree()), folder.tree().current, commit(state, folder, policy))


def _unchanged(state: store.Store, settings: config.Config, kind: kinds.Kind, domain: str) -> Consolidated | None:
    """Every file as it was at the last commit: nothing to parse (one stat each)."""
    sources = legacydir.sources(settings.root(kind), domain)
    known = state.unchanged(kind, domain, sources) if sources is not None else None
    if known is None:
        return None
    return Consolidated(kind, domain, len(known.rows), known.current, False)


def read_consistent(settings: config.Config, kind: kinds.Kind, domain: str, policy: Policy = Policy(),
                    cache: legacydir.Cache | None = None, note: Note = _unheard) -> legacydir.LegacyFolder:
    """The folder read in one state of it, or TreeError naming every broken
    rule (FolderBusy when libvirt kept changing it, UnknownDomain without it);
    its remarks go to ``note`` first, refused or not."""
    folder = legacydir.read_settled(settings.root(kind), kind, domain, settings.max_legacy_bytes, cache,
                                    policy.attempts)
    for remark in folder.notes:
        note(remark)
    problems = folder.problems()
    if not policy.in_flight_ok:
        problems += [codes.Problem(codes.LIBVIRT_TEMP, "libvirt is writing it (or crashed while writing it)",
                                   path=str(folder.path / name)) for name in folder.libvirt_temps]
    if problems:
        raise errors.TreeError(domain=domain, problems=problems)
    return folder


def commit(state: store.Store, folder: legacydir.LegacyFolder, policy: Policy = Policy()) -> bool:
    """Commit a consistent folder's tree; True when the store file changed."""
    return state.replace(folder.tree(), allow_empty=policy.allow_empty, dry_run=policy.dry_run,
                         sources=recorded_sources(folder, policy), origin=policy.origin, by=policy.by)


def recorded_sources(folder: legacydir.LegacyFolder, policy: Policy) -> legacydir.Sources | None:
    """What the index records as the folder's files: nothing when the read
    drew a remark, so that the unchanged shortcut never hides a warning."""
    return None if folder.notes or policy.dry_run else folder.sources
