"""``snapstore expand``: consolidated file -> libvirt's per-moment layout."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from snapstore import errors, fsio, hostenv, legacydir, model
from snapstore.cli import common


def register(commands: common.Commands, options: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("expand", parents=[options], help="consolidated file -> libvirt folder",
                                 description="Write a domain's libvirt folder from its consolidated file: one "
                                             "file per moment with libvirt's header and <active> marker, mode "
                                             "0600, the whole folder swapped in atomically.")
    parser.add_argument("domain", metavar="DOMAIN")
    parser.add_argument("--into", type=Path, metavar="DIR",
                        help="a snapshot (or checkpoint) root to write into instead of libvirt's")
    parser.add_argument("--prune", action="store_true",
                        help="drop files the store does not hold (a copy goes to the attic)")
    parser.add_argument("--force", action="store_true",
                        help="write into libvirt's live root even while libvirtd runs")
    parser.add_argument("--dry-run", action="store_true", help="report, write nothing")
    common.add_kind_option(parser)
    common.add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, context: common.Context) -> int:
    kind = context.kind(args)
    store = context.store()
    tree = store.read_tree(kind, args.domain)
    if tree is None:
        raise errors.UnknownDomain(domain=args.domain, reason=(
            f"no consolidated file {store.path(kind, args.domain)} (run 'snapstore consolidate' first)"))
    _refuse_unstorable(tree)
    root = args.into or context.root(kind)
    if not args.force:
        _refuse_live_root(root, context.root(kind), context)
    if not args.dry_run:
        store.prepare()
        _make_root(root)
    result = legacydir.write_folder(root, tree, lambda files: store.keep_folder(kind, args.domain, files),
                                    prune=args.prune,
                                    dry_run=args.dry_run, limit=context.config.max_legacy_bytes)
    for line in result.warnings:
        context.warn(line)
    _report(result, tree, args, context)
    return 0


def _refuse_unstorable(tree: model.Tree) -> None:
    bad = legacydir.unstorable_names(tree)
    if bad:
        raise errors.Refused(domain=tree.domain, reason=(
            f"{len(bad)} {tree.kind.plural} cannot be libvirt file names: {', '.join(bad)}"))


def _refuse_live_root(root: Path, live_root: Path, context: common.Context) -> None:
    if root.resolve() != live_root.resolve():
        return
    daemon = hostenv.running_libvirt_daemon(context.config.libvirt_pidfiles)
    if daemon:
        pidfile, pid = daemon
        raise errors.Refused(domain=str(root), reason=(
            f"libvirt is running (pid {pid}, {pidfile}); it reads this folder only at start and may "
            "overwrite what is written now: stop it first, or pass --force"))


def _make_root(root: Path) -> None:
    """Create the folders of ``root`` that are missing, one at a time, each mode
    0700 whatever the umask (they will hold libvirt's metadata, secrets
    included); folders that exist are left as they are."""
    # lexists: a dangling symlink counts as there, so nothing is made through it
    missing = [folder for folder in (root, *root.parents) if not os.path.lexists(folder)]
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
            with fsio.opened_dir(folder) as fd:  # O_NOFOLLOW: a symlink swapped in for it is refused
                os.fchmod(fd, 0o700)  # the umask may have narrowed mkdir's mode; it must not decide it
        except FileExistsError:
            continue  # made by another process meanwhile: theirs, left alone
        except OSError as e:
            raise errors.EnvironmentProblem(path=folder, reason=f"cannot create folder: {fsio.reason(e)}") from e


def _report(result: legacydir.WriteResult, tree: model.Tree, args: argparse.Namespace,
            context: common.Context) -> None:
    if args.json:
        context.emit_json({"format": 1, "domain": tree.domain, "kind": tree.kind.name, "count": len(tree),
                           "current": tree.current, "path": str(result.path), "changed": result.changed,
                           "dry_run": args.dry_run, "attic": str(result.attic) if result.attic else None})
        return
    verb = ("would write" if args.dry_run else "written to") if result.changed else "unchanged,"
    kept = f" (previous files kept in {result.attic})" if result.attic else ""
    context.say(f"{common.printable(tree.domain)}: {len(tree)} {tree.kind.plural}: {verb} {result.path}{kept}")
