"""Host migration in one job: dump from one libvirt, keep the dump durably,
restore into another, and (when asked) remove the source's metadata once
the target holds every moment, so libvirt can migrate the domain.

The dump is kept in the store's attic (or a file named by the caller), not
in the store's own file: where the daemon runs, it keeps that file in step
with the local libvirt folder, which the restore (or the deletion on the
source) changes step by step. Nothing rewrites a file in attic/.
"""
from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path

from snapstore import bridge, errors, fsio, kinds, model, store
from snapstore.formats import consolidated

Progress = Callable[[str], bridge.Progress | None]  # step ("dump", "restore", "delete") -> progress callback


class Options(typing.NamedTuple):
    replace: bool = False
    rewrite_uuid: bool = False
    delete_source: bool = False
    output: Path | None = None  # keep the dump here instead of the attic


class Transferred(typing.NamedTuple):
    tree: model.Tree
    dump: Path
    restored: bridge.RestoreResult
    deleted: bridge.Steps | None  # None when not asked for, or the restore was incomplete


def transfer(state: store.Store, source_uri: str, target_uri: str, kind: kinds.Kind, domain: str,
             options: Options, progress: Progress, dumped: Callable[[model.Tree, Path], None],
             warn: Callable[[str], None]) -> Transferred:
    """The whole migration; ``dumped`` is told once the dump is durable,
    ``warn`` where the dump is kept when a later step fails."""
    with bridge.connected_pair(source_uri, target_uri) as (source, target):
        if options.delete_source and bridge.same_instance(source, target):
            raise errors.UsageError(reason=f"--from {source_uri} and --to {target_uri} reach the same libvirt: "
                                           "deleting the source's metadata would delete what was restored")
        bridge.check_domain(target, domain)  # before anything is written
        tree = bridge.dump(source, kind, domain, progress("dump"))
        path = keep_dump(state, tree, options.output)
        dumped(tree, path)
        try:
            restored = bridge.restore(target, tree, replace=options.replace, rewrite_uuid=options.rewrite_uuid,
                                      progress=progress("restore"))
        except errors.SnapstoreError:  # refused, or libvirt failed before the first redefinition
            warn(f"{domain}: nothing was deleted on {source_uri}; the dump is kept in {path}")
            raise
        deleted = None
        if restored.complete and options.delete_source:
            deleted = _delete_source(source, tree, progress("delete"))
    return Transferred(tree, path, restored, deleted)


def keep_dump(state: store.Store, tree: model.Tree, output: Path | None) -> Path:
    """The dump made durable: ``output`` replaced atomically, or a new file in the attic."""
    data = consolidated.format_consolidated(tree)
    if output is not None:
        fsio.atomic_write(output, data)
        return output
    state.prepare()
    return state.keep_file(tree.kind.plural, tree.domain, ".xml", data)


def _delete_source(source: bridge.Host, tree: model.Tree, progress: bridge.Progress | None) -> bridge.Steps:
    """Remove the source's metadata, but only what the target now holds."""
    again = bridge.dump(source, tree.kind, tree.domain)
    changes = bridge.differences(tree, again)
    if changes:
        raise errors.Refused(domain=tree.domain, reason=(
            f"{source.uri} changed after the dump ({'; '.join(changes)}); its metadata was not deleted: "
            "run the transfer again"))
    return bridge.delete_metadata(source, tree, progress)
