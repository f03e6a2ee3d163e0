"""``snapstore history``, ``diff`` and ``undo``: the generations a domain's
consolidated file went through, what changed between two, and going back."""
from __future__ import annotations

import argparse
import difflib
import shlex
import time
from typing import Any

from snapstore import errors, history, kinds, model, store
from snapstore.cli import common
from snapstore.formats import consolidated, mapping

LIVE = "live"


def register(commands: common.Commands, options: argparse.ArgumentParser) -> None:
    parser = common.domain_command(
        commands, options, run_history, "history", "the generations of a domain's file",
        "One line per generation the domain's consolidated file went through: number, when it "
        "was replaced, by what, its moments and current, and what the replacing commit changed.")
    parser = common.domain_command(
        commands, options, run_diff, "diff", "what changed between two generations",
        "Moments added, removed and changed (C14N) and the change of current between two "
        "generations (default: the newest generation and the live file).")
    parser.add_argument("generations", nargs="*", metavar="GEN", help=f"a generation number, or '{LIVE}'")
    parser.add_argument("--xml", action="store_true", help="show each changed moment as a unified diff (as -v does)")
    parser = common.domain_command(
        commands, options, run_undo, "undo", "make a generation the live file again",
        "Commit a generation (default: the one the last commit replaced) as the live file, "
        "itself recorded as a generation so that undo can be undone. libvirt is left as it "
        "is: the command says how to bring it in line.")
    parser.add_argument("--to", type=int, metavar="GEN", help="the generation to go back to")
    parser.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")


# --- history ----------------------------------------------------------------------------------------


def run_history(args: argparse.Namespace, context: common.Context) -> int:
    kind, state = context.kind(args), context.store()
    generations = state.history.generations(kind, args.domain)
    live = state.summary(kind, args.domain)
    if not generations and live is None:
        raise errors.UnknownDomain(domain=args.domain,
                                   reason=f"no consolidated file and no history of its {kind.plural}")
    if args.json:
        context.emit_json({"format": 1, "domain": args.domain, "kind": kind.name,
                           "generations": [_generation_json(g) for g in generations],
                           LIVE: None if live is None else {"moments": len(live.rows), "current": live.current}})
        return 0
    for generation in generations:
        context.say(_generation_line(generation, kind))
    if live is not None:
        context.say(f"{LIVE:>5}  {len(live.rows)} {kind.plural}, current {common.printable(live.current or '-')}")
    return 0


def _generation_line(generation: history.Generation, kind: kinds.Kind) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(generation.replaced_at))
    current = common.printable(generation.current or "-")
    return (f"{generation.number:>5}  {when}  {generation.moments} {kind.plural}, current {current}; "
            f"replaced by {common.printable(generation.replaced_by)}: {generation.change.summary()}")


def _generation_json(generation: history.Generation) -> dict[str, Any]:
    return {"generation": generation.number, "replaced_at": generation.replaced_at,
            "replaced_by": generation.replaced_by, "sha256": generation.sha256, "size": generation.size,
            "moments": generation.moments, "current": generation.current,
            "change": {**generation.change._asdict(), "current": list(generation.change.current),
                       "summary": generation.change.summary()}}


# --- diff -------------------------------------------------------------------------------------------


def run_diff(args: argparse.Namespace, context: common.Context) -> int:
    kind, state = context.kind(args), context.store()
    first, second = _pair(args.generations, state, kind, args.domain)
    show_xml = args.xml or context.verbosity > 0
    change = None if show_xml else _by_digest(state, kind, args.domain, first, second)
    if change is None:
        old, new = _tree(state, kind, args.domain, first), _tree(state, kind, args.domain, second)
        change = compare(old, new)
    if args.json:
        context.emit_json({"format": 1, "domain": args.domain, "kind": kind.name, "from": first, "to": second,
                           **change._asdict(), "current": list(change.current), "summary": change.summary()})
        return 0
    context.say(f"{common.printable(args.domain)} {kind.plural}: generation {first} -> {second}: {change.summary()}")
    for sign, names in (("+", change.added), ("-", change.removed), ("~", change.changed)):
        for name in names:
            context.say(f"{sign} {common.printable(name)}")
            if sign == "~" and show_xml:
                context.say(_unified(old.by_name[name], new.by_name[name], first, second))
    return 0


def compare(old: model.Tree, new: model.Tree) -> history.Change:
    """Moments added, removed and changed (C14N, not bytes), and current's change."""
    both = set(old.by_name) & set(new.by_name)
    changed = sorted(name for name in both if not mapping.same_content(old.by_name[name], new.by_name[name]))
    return history.Change(sorted(set(new.by_name) - set(old.by_name)), sorted(set(old.by_name) - set(new.by_name)),
                          changed, (old.current, new.current))


def _by_digest(state: store.Store, kind: kinds.Kind, domain: str, first: str,
               second: str) -> history.Change | None:
    """The change from the moment digests the history and the index keep, no
    XML parsed; None when either side has none. Every moment is serialized
    the same way, so different bytes mean different content; -v compares
    each in C14N and shows it."""
    old, new = _digests(state, kind, domain, first), _digests(state, kind, domain, second)
    return history.change(old, new) if old is not None and new is not None else None


def _digests(state: store.Store, kind: kinds.Kind, domain: str, which: str) -> history.Snapshot | None:
    if which != LIVE:
        return state.history.moments(kind, domain, int(which))
    live = state.summary(kind, domain)
    if live is None:
        raise errors.UnknownDomain(domain=domain, reason=f"no consolidated file {state.path(kind, domain)}")
    return history.Snapshot(live.digests, live.current, None) if live.digests is not None else None


def _pair(asked: list[str], state: store.Store, kind: kinds.Kind, domain: str) -> tuple[str, str]:
    if len(asked) > 2:
        raise errors.UsageError(reason="diff compares two generations: name at most two")
    for word in asked:
        if word != LIVE and not word.isdigit():
            raise errors.UsageError(reason=f"{word!r} is not a generation number or '{LIVE}'")
    if len(asked) == 2:
        return asked[0], asked[1]
    if len(asked) == 1:
        return asked[0], LIVE
    generations = state.history.generations(kind, domain)
    if not generations:
        raise errors.UnknownDomain(domain=domain, reason=f"no history of its {kind.plural} to compare with")
    return str(generations[-1].number), LIVE


def _tree(state: store.Store, kind: kinds.Kind, domain: str, which: str) -> model.Tree:
    if which == LIVE:
        tree = state.read_tree(kind, domain)
        if tree is None:
            raise errors.UnknownDomain(domain=domain, reason=f"no consolidated file {state.path(kind, domain)}")
        return tree
    path = state.history.folder(kind, domain) / f"{which}.xml"
    data = _generation_bytes(state, kind, domain, int(which))
    return consolidated.parse_consolidated(data, kind, str(path), state.read_limit)


def _generation_bytes(state: store.Store, kind: kinds.Kind, domain: str, number: int) -> bytes:
    try:
        return state.history.read(kind, domain, number, state.read_limit)
    except (errors.FormatError, errors.EnvironmentProblem) as e:
        raise errors.UnknownDomain(domain=domain, reason=f"no generation {number} of its {kind.plural} "
                                                         f"(snapstore history {domain} lists them)") from e


def _unified(old: model.Moment, new: model.Moment, first: str, second: str) -> str:
    before = old.body.decode("utf-8", "replace").splitlines()
    after = new.body.decode("utf-8", "replace").splitlines()
    lines = difflib.unified_diff(before, after, f"{old.name} ({first})", f"{new.name} ({second})", lineterm="")
    return "\n".join(lines)


# --- undo -------------------------------------------------------------------------------------------


def run_undo(args: argparse.Namespace, context: common.Context) -> int:
    kind, state = context.kind(args), context.store()
    number = args.to if args.to is not None else _last(state, kind, args.domain)
    _generation_bytes(state, kind, args.domain, number)  # a clear error for a generation that is not there
    live = state.read_tree(kind, args.domain)
    if not args.dry_run:
        state.prepare()
    tree = state.undo(kind, args.domain, number, dry_run=args.dry_run)
    verb = "would make" if args.dry_run else "made"
    say_brought_back(context, args, live, tree, f"{verb} generation {number} the live file", {"generation": number})
    return 0


def say_brought_back(context: common.Context, args: argparse.Namespace, live: model.Tree | None, tree: model.Tree,
                     done: str, fields: dict[str, Any]) -> None:
    """What an undo or a fleet pull changed in the store, and the steps that
    bring libvirt in line (none under --dry-run)."""
    change = compare(live, tree) if live is not None else history.Change(sorted(tree.by_name), [], [],
                                                                          (None, tree.current))
    steps = [] if args.dry_run else _next_steps(tree.domain, tree.kind)
    if args.json:
        context.emit_json({"format": 1, "domain": tree.domain, "kind": tree.kind.name, **fields,
                           "dry_run": args.dry_run, **change._asdict(), "current": list(change.current),
                           "summary": change.summary(), "next": steps})
        return
    context.say(f"{common.printable(tree.domain)}: {done} ({change.summary()})")
    for line in steps:
        context.say(line)


def _last(state: store.Store, kind: kinds.Kind, domain: str) -> int:
    generations = state.history.generations(kind, domain)
    if not generations:
        raise errors.UnknownDomain(domain=domain, reason=f"no history of its {kind.plural} to undo")
    return generations[-1].number


def _next_steps(domain: str, kind: kinds.Kind) -> list[str]:
    flag = " --checkpoints" if kind is kinds.CHECKPOINT else ""
    name = shlex.quote(domain)
    return [f"libvirt still holds the {kind.plural} as they were; bring it in line with:",
            f"  snapstore restore {name}{flag} --connect qemu:///system   (redefines what libvirt lacks, "
            "parents first, current last)",
            f"  or, with libvirtd stopped: snapstore expand {name}{flag} --prune",
            f"until then the daemon keeps this file (STATUS: undone); 'snapstore undo {name}{flag}' takes it back"]
