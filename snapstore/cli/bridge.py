"""``snapstore dump``, ``restore`` and ``transfer``: metadata between a running
libvirt and a consolidated file, through libvirt's API (snapstore.bridge)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from snapstore import bridge, errors, fsio, kinds, model, store, transfer
from snapstore.cli import common
from snapstore.formats import consolidated

PROGRESS_EVERY = 100  # moments between two progress lines on stderr; shorter runs show none


def register(commands: common.Commands, options: argparse.ArgumentParser) -> None:
    _register_dump(commands, options)
    _register_restore(commands, options)
    _register_transfer(commands, options)


def _register_dump(commands: common.Commands, options: argparse.ArgumentParser) -> None:
    parser = common.domain_command(
        commands, options, run_dump, "dump", "libvirt (API) -> consolidated file",
        "Read every snapshot of a domain from a running libvirt, secrets included, one per "
        "call, and commit them as one consolidated file (the store's, unless -o).")
    _add_connect(parser)
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write this file (atomically, mode 0600) instead of the store; '-' for stdout")
    parser.add_argument("--allow-empty", action="store_true",
                        help="let a domain without snapshots replace a store file that holds some")


def _register_restore(commands: common.Commands, options: argparse.ArgumentParser) -> None:
    parser = common.domain_command(
        commands, options, run_restore, "restore", "consolidated file -> libvirt (API)",
        "Redefine every snapshot of a consolidated file in a running libvirt: parents first, "
        "the current one marked last. Identical snapshots are skipped, so a rerun finishes "
        "an interrupted restore.")
    _add_connect(parser)
    parser.add_argument("--from", dest="source_file", metavar="FILE",
                        help="read this consolidated file instead of the store's; '-' for stdin")
    parser.add_argument("--dry-run", action="store_true", help="compare with libvirt and report, change nothing")
    _add_restore_options(parser)


def _register_transfer(commands: common.Commands, options: argparse.ArgumentParser) -> None:
    parser = common.domain_command(
        commands, options, run_transfer, "transfer", "dump from one libvirt, restore into another",
        "dump, commit the dump durably, restore; with --delete-source-metadata the source's "
        "metadata is then removed, once the target holds every snapshot (host migration).")
    parser.add_argument("--from", dest="source_uri", required=True, metavar="URI", help="the source libvirt")
    parser.add_argument("--to", dest="target_uri", required=True, metavar="URI", help="the target libvirt")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="commit the dump to this file (atomically, mode 0600) instead of a new file "
                             "in the store's attic/")
    parser.add_argument("--delete-source-metadata", action="store_true",
                        help="after a complete restore, remove the snapshot metadata from the source "
                             "(children first; disk images untouched), so libvirt can migrate the domain")
    _add_restore_options(parser)


def _add_connect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connect", "-c", required=True, metavar="URI",
                        help="libvirt URI, e.g. qemu:///system, qemu+ssh://host/system, qemu:///embed?root=DIR")


def _add_restore_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rewrite-uuid", action="store_true",
                        help="rewrite the domain uuid inside each snapshot to the target domain's")
    parser.add_argument("--replace", action="store_true",
                        help="redefine snapshots the target holds with other content (refused otherwise)")


# --- dump --------------------------------------------------------------------------------------


def run_dump(args: argparse.Namespace, context: common.Context) -> int:
    if args.output == "-" and args.json:
        raise errors.UsageError(reason="-o - writes the dump on stdout; --json cannot share it")
    kind = context.kind(args)
    with bridge.connected(args.connect) as host:
        tree = bridge.dump(host, kind, args.domain, _progress(context, args.domain, "dump", kind))
    if args.output == "-":
        sys.stdout.buffer.write(consolidated.format_consolidated(tree))
        sys.stdout.flush()
        return 0
    summary = _commit(tree, Path(args.output) if args.output else None, args.allow_empty, context, args.connect)
    if args.json:
        context.emit_json({"format": 1, **summary})
    else:
        _say_dump(summary, kind, context)
    return 0


def _commit(tree: model.Tree, output: Path | None, allow_empty: bool, context: common.Context,
            uri: str) -> dict[str, Any]:
    """Make a dump durable: FILE, or the store's file (locked), each replaced atomically."""
    if output is not None:
        return _dump_summary(tree, uri, transfer.keep_dump(context.store(), tree, output), True)
    state = context.store()
    state.prepare()
    origin = store.Origin(f"{uri} reports",
                          f"put them back with 'snapstore restore {tree.domain} --connect URI'")
    changed = state.replace(tree, allow_empty=allow_empty, origin=origin, by=f"dump --connect {uri}")
    return _dump_summary(tree, uri, state.path(tree.kind, tree.domain), changed)


def _dump_summary(tree: model.Tree, uri: str, path: Path, changed: bool) -> dict[str, Any]:
    return {"domain": tree.domain, "kind": tree.kind.name, "uri": uri, "count": len(tree),
            "current": tree.current, "path": str(path), "changed": changed}


def _say_dump(summary: dict[str, Any], kind: kinds.Kind, context: common.Context) -> None:
    current = f", current {common.printable(summary['current'])}" if summary["current"] else ""
    verb = "written to" if summary["changed"] else "unchanged,"
    context.say(f"{common.printable(summary['domain'])}: {summary['count']} {kind.plural} from {summary['uri']}"
                f"{current}: {verb} {summary['path']}")


# --- restore -----------------------------------------------------------------------------------


def run_restore(args: argparse.Namespace, context: common.Context) -> int:
    kind = context.kind(args)
    tree = _source_tree(args, kind, context)
    with bridge.connected(args.connect) as host:
        result = bridge.restore(host, tree, replace=args.replace, rewrite_uuid=args.rewrite_uuid,
                                dry_run=args.dry_run, progress=_progress(context, args.domain, "restore", kind))
    if args.json:
        context.emit_json({"format": 1, **_restore_json(result, args.connect)})
    return _report_restore(result, args.connect, args.json, context)


def _source_tree(args: argparse.Namespace, kind: kinds.Kind, context: common.Context) -> model.Tree:
    if args.source_file is None:
        state = context.store()
        tree = state.read_tree(kind, args.domain)
        if tree is None:
            raise errors.UnknownDomain(domain=args.domain, reason=(
                f"no consolidated file {state.path(kind, args.domain)} (dump it first, or name one with --from)"))
        return tree
    source = "<stdin>" if args.source_file == "-" else args.source_file
    limit = context.config.max_store_bytes
    tree = consolidated.parse_consolidated(_read_input(args.source_file, limit), kind, source, limit)
    problems = tree.validate()
    if problems:
        raise errors.TreeError(domain=tree.domain, problems=problems)
    if tree.domain != args.domain:
        raise errors.Refused(domain=args.domain, reason=f"{source} holds the {kind.plural} of domain {tree.domain!r}")
    return tree


def _read_input(name: str, limit: int) -> bytes:
    """stdin (at most limit + 1 bytes: the parser refuses anything over the
    limit), or a file read as every input is: a regular file, no symlink
    followed, no FIFO waited on (a symlink or a FIFO is refused, exit 1, as
    consolidate refuses one in a libvirt folder)."""
    if name == "-":
        return sys.stdin.buffer.read(limit + 1)
    path = Path(name)
    try:
        with fsio.opened_dir(path.parent) as dir_fd:
            # "." for "/" or ".", whose name is empty: refused as a directory
            return fsio.read_regular(dir_fd, path.name or ".", limit, name)
    except errors.FormatError as e:
        if isinstance(e.__cause__, FileNotFoundError):  # a path that names nothing: a usage slip, exit 2
            raise errors.EnvironmentProblem(path=name, reason="no such file") from None
        raise


def _restore_json(result: bridge.RestoreResult, uri: str) -> dict[str, Any]:
    """Lists hold names in the order they were (or, in a dry run, would be) redefined."""
    plan, steps = result.plan, result.steps
    defined, replaced = (plan.define, plan.replace) if result.dry_run else \
        (result.done_of(plan.define), result.done_of(plan.replace))
    return {"domain": plan.tree.domain, "kind": plan.tree.kind.name, "uri": uri, "dry_run": result.dry_run,
            "complete": result.complete, "defined": defined, "replaced": replaced, "skipped": plan.skip,
            "failed": _failure_json(steps.failure), "not_tried": steps.not_tried, "current": plan.tree.current,
            "extra": plan.extra}


def _report_restore(result: bridge.RestoreResult, uri: str, json_output: bool, context: common.Context) -> int:
    """Human lines (stdout) and warnings; an incomplete run lists every moment's fate on stderr."""
    plan = result.plan
    tree = plan.tree
    if plan.extra:
        context.warn(f"{tree.domain}: {len(plan.extra)} {tree.kind.plural} on {uri} are not in the file, "
                     f"left alone: {bridge.listed(plan.extra)}")
    if not result.dry_run and not result.complete:
        for line in _incomplete_lines(result, uri):
            print(errors.one_line(f"snapstore: {tree.domain}: {line}"), file=sys.stderr)
        return 1
    if not json_output:
        context.say(_restore_line(result, uri))
    return 0


def _restore_line(result: bridge.RestoreResult, uri: str) -> str:
    plan, tree = result.plan, result.plan.tree
    current = f", current {common.printable(tree.current)}" if tree.current else ""
    if result.dry_run:
        moves = f", would mark {common.printable(tree.current)} current" if (
            tree.kind.stores_current and tree.current and plan.target_current != tree.current) else ""
        return (f"{common.printable(tree.domain)}: dry run against {uri}: {len(plan.define)} to define, "
                f"{len(plan.replace)} to replace, {len(plan.skip)} already present{moves}; nothing changed")
    return (f"{common.printable(tree.domain)}: {len(tree)} {tree.kind.plural} restored to {uri}: "
            f"{len(result.done_of(plan.define))} defined, {len(result.done_of(plan.replace))} replaced, "
            f"{len(plan.skip)} already present{current}")


def _incomplete_lines(result: bridge.RestoreResult, uri: str) -> list[str]:
    plan, steps, kind = result.plan, result.steps, result.plan.tree.kind
    defined, replaced = result.done_of(plan.define), result.done_of(plan.replace)
    lines = [f"restore into {uri} incomplete: {len(defined)} defined, {len(replaced)} replaced, "
             f"{len(plan.skip)} already present, 1 failed, {len(steps.not_tried)} not tried"]
    lines += [f"{label}: {bridge.listed(names)}" for label, names in
              (("defined", defined), ("replaced", replaced)) if names]
    lines += _failure_lines(steps, "not tried")
    if steps.failure is not None and steps.failure.action != "set current" and plan.tree.current is not None \
            and kind.stores_current:
        lines.append(f"current {kind.name} {plan.tree.current!r} not marked yet")
    lines.append(f"run the same command again to finish: {kind.plural} already defined identically are skipped")
    return lines


def _failure_lines(steps: bridge.Steps, not_tried_label: str) -> list[str]:
    failure = steps.failure
    lines = [f"failed: {failure.name!r} ({failure.action}): {failure.message}"] if failure is not None else []
    if steps.not_tried:
        lines.append(f"{not_tried_label}: {bridge.listed(steps.not_tried)}")
    return lines


def _progress(context: common.Context, domain: str, verb: str, kind: kinds.Kind) -> bridge.Progress | None:
    if context.verbosity < 0:
        return None

    def show(done: int, total: int) -> None:
        if total >= PROGRESS_EVERY and (done % PROGRESS_EVERY == 0 or done == total):
            print(errors.one_line(f"snapstore: {domain}: {verb} {done}/{total} {kind.plural}"),
                  file=sys.stderr, flush=True)

    return show


# --- transfer ----------------------------------------------------------------------------------


def run_transfer(args: argparse.Namespace, context: common.Context) -> int:
    _check_transfer_options(args)
    kind = context.kind(args)
    options = transfer.Options(args.replace, args.rewrite_uuid, args.delete_source_metadata,
                               Path(args.output) if args.output else None)

    def dumped(tree: model.Tree, path: Path) -> None:
        if not args.json:
            _say_dump(_dump_summary(tree, args.source_uri, path, True), kind, context)

    done = transfer.transfer(context.store(), args.source_uri, args.target_uri, kind, args.domain, options,
                             lambda step: _progress(context, args.domain, step, kind), dumped, context.warn)
    if args.json:
        context.emit_json({"format": 1, "domain": args.domain, "kind": kind.name,
                           "dump": _dump_summary(done.tree, args.source_uri, done.dump, True),
                           "restore": _restore_json(done.restored, args.target_uri),
                           "source_deleted": done.deleted and _steps_json(done.deleted)})
    code = _report_restore(done.restored, args.target_uri, args.json, context)
    if code and args.delete_source_metadata:
        context.warn(f"{args.domain}: the source's metadata was left on {args.source_uri}; "
                     f"the dump is kept in {done.dump}")
    return code or _report_deletion(done.deleted, done.tree, args, context, str(done.dump))


def _check_transfer_options(args: argparse.Namespace) -> None:
    if args.source_uri == args.target_uri:
        raise errors.UsageError(reason="--from and --to name the same libvirt")
    if bridge.embedded_root(args.source_uri) is not None and bridge.embedded_root(args.target_uri) is not None:
        raise errors.UsageError(reason="--from and --to are both embedded roots, and libvirt opens one per "
                                       "process: run 'snapstore dump -o FILE' and 'snapstore restore --from FILE'")
    if args.output == "-":
        raise errors.UsageError(reason="transfer commits its dump durably: -o needs a file, not '-'")


def _steps_json(steps: bridge.Steps) -> dict[str, Any]:
    return {"done": steps.done, "failed": _failure_json(steps.failure), "not_tried": steps.not_tried}


def _failure_json(failure: bridge.Failure | None) -> dict[str, Any] | None:
    if failure is None:
        return None
    return {"name": failure.name, "action": failure.action, "code": failure.code, "message": failure.message}


def _report_deletion(steps: bridge.Steps | None, tree: model.Tree, args: argparse.Namespace,
                     context: common.Context, dump_path: str) -> int:
    if steps is None:
        return 0
    if steps.failure is None:
        if not args.json:
            context.say(f"{common.printable(tree.domain)}: metadata of {len(steps.done)} {tree.kind.plural} "
                        f"deleted from {args.source_uri} (disk images untouched)")
        return 0
    lines = [f"deleting the metadata on {args.source_uri} stopped: {len(steps.done)} deleted, 1 failed, "
             f"{len(steps.not_tried)} left", *_failure_lines(steps, "left"),
             f"{args.target_uri} and {dump_path} hold every {tree.kind.name}: run the transfer again to "
             "delete the rest" + (" (with another -o FILE, to keep this dump)" if args.output else "")]
    for line in lines:
        print(errors.one_line(f"snapstore: {tree.domain}: {line}"), file=sys.stderr)
    return 1
