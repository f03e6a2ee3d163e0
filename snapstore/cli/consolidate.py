"""``snapstore consolidate``: legacy folder(s) -> consolidated file(s)."""
from __future__ import annotations

import argparse
from typing import Any

from snapstore import errors, legacydir, ops, store
from snapstore.cli import common

# Per-domain failures that let the other domains go on; anything else
# (an unusable state folder, say) stops the command at once.
_DOMAIN_ERRORS = (errors.TreeError, errors.FormatError, errors.Refused, errors.UnknownDomain, errors.LockTimeout)


def register(commands: common.Commands, options: argparse.ArgumentParser) -> None:
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
    domains = legacydir.domains(context.root(kind)) if args.all else args.domains
    state = context.store()
    if not args.dry_run:
        state.prepare()
    policy = ops.Policy(allow_empty=args.allow_empty, dry_run=args.dry_run)
    results, exit_code = [], 0
    for domain in domains:
        try:
            done = ops.consolidate(state, context.config, kind, domain, policy, lambda note: context.warn(str(note)))
            results.append(_result(done, state, args, context))
        except _DOMAIN_ERRORS as e:
            common.report(e)
            results.append({"domain": domain, "kind": kind.name, "error": str(e)})
            exit_code = max(exit_code, e.exit_code)
    if args.json:
        context.emit_json({"format": 1, "dry_run": args.dry_run, "results": results})
    return exit_code


def _result(done: ops.Consolidated, state: store.Store, args: argparse.Namespace,
            context: common.Context) -> dict[str, Any]:
    path = state.path(done.kind, done.domain)
    if not args.json:
        verb = ("would write" if args.dry_run else "written to") if done.changed else "unchanged,"
        named = f", current {common.printable(done.current)}" if done.current else ""
        context.say(f"{common.printable(done.domain)}: {done.total} {done.kind.plural}{named}: {verb} {path}")
    return {"domain": done.domain, "kind": done.kind.name, "count": done.total, "current": done.current,
            "changed": done.changed, "path": str(path)}
