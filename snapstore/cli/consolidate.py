"""``snapstore consolidate``: legacy folder(s) -> consolidated file(s)."""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from snapstore import errors, kinds, lazy
from snapstore.cli import common

legacydir = lazy.module("snapstore.legacydir")
store_ = lazy.module("snapstore.store")

# Per-domain failures that let the other domains go on; anything else
# (an unusable state folder, say) stops the command at once.
_DOMAIN_ERRORS = (errors.TreeError, errors.FormatError, errors.Refused, errors.UnknownDomain, errors.LockTimeout)


def register(commands: argparse._SubParsersAction, options: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("consolidate", parents=[options], help="legacy folders -> consolidated files",
                                 description="Read libvirt's per-moment files of each domain, validate them "
                                             "all-or-nothing and commit one consolidated file per domain.")
    parser.add_argument("domains", nargs="*", metavar="DOMAIN")
    parser.add_argument("--all", action="store_true", help="every domain folder under the libvirt root")
    parser.add_argument("--dry-run", action="store_true", help="validate and report, write nothing")
    parser.add_argument("--allow-empty", action="store_true",
                        help="let an empty legacy folder replace a store file that holds moments")
    common.add_kind_option(parser)
    common.add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, context: common.Context) -> int:
    if args.all == bool(args.domains):
        raise errors.UsageError(reason="name one or more domains, or pass --all (not both)")
    kind = context.kind(args)
    root = context.root(kind)
    domains = legacydir.domains(root) if args.all else args.domains
    store = context.store()
    if not args.dry_run:
        store.prepare()
    results, exit_code = [], 0
    for domain in domains:
        try:
            results.append(_consolidate(domain, kind, root, store, args, context))
        except _DOMAIN_ERRORS as e:
            common.report(e)
            results.append({"domain": domain, "kind": kind.name, "error": str(e)})
            exit_code = max(exit_code, e.exit_code)
    if args.json:
        context.emit_json({"format": 1, "dry_run": args.dry_run, "results": results})
    return exit_code


def _consolidate(domain: str, kind: kinds.Kind, root: Path, store: store_.Store,
                 args: argparse.Namespace, context: common.Context) -> dict[str, Any]:
    # Held from reading the folder to the commit: a run that waited for the
    # lock must not commit the folder as it was before it waited.
    with contextlib.nullcontext() if args.dry_run else store.lock(kind, domain):
        return _consolidate_locked(domain, kind, root, store, args, context)


def _consolidate_locked(domain: str, kind: kinds.Kind, root: Path, store: store_.Store,
                        args: argparse.Namespace, context: common.Context) -> dict[str, Any]:
    sources = legacydir.sources(root, domain)
    known = store.unchanged(kind, domain, sources) if sources is not None else None
    if known is not None:  # every file as it was at the last commit: nothing to parse
        return _result(domain, kind, len(known["rows"]), known["current"], False, store, args, context)
    folder = legacydir.read_settled(root, kind, domain, context.config.max_legacy_bytes)
    for note in folder.notes:
        context.warn(str(note))
    problems = folder.problems()
    if problems:
        raise errors.TreeError(domain=domain, problems=problems)
    tree = folder.tree()
    # Recorded only for a folder without remarks, so the shortcut never hides a warning.
    changed = store.replace(tree, allow_empty=args.allow_empty, dry_run=args.dry_run,
                            sources=None if folder.notes or args.dry_run else folder.sources)
    return _result(domain, kind, len(tree), tree.current, changed, store, args, context)


def _result(domain: str, kind: kinds.Kind, count: int, current: str | None, changed: bool,
            store: store_.Store, args: argparse.Namespace, context: common.Context) -> dict[str, Any]:
    path = store.path(kind, domain)
    if not args.json:
        verb = ("would write" if args.dry_run else "written to") if changed else "unchanged,"
        named = f", current {common.printable(current)}" if current else ""
        context.say(f"{common.printable(domain)}: {count} {kind.plural}{named}: {verb} {path}")
    return {"domain": domain, "kind": kind.name, "count": count, "current": current,
            "changed": changed, "path": str(path)}
