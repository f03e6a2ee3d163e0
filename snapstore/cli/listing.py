"""``snapstore list``: a domain's moments from its consolidated file."""
from __future__ import annotations

import argparse
import time
from typing import Any

from snapstore import errors, model
from snapstore.cli import common


def register(commands: argparse._SubParsersAction, options: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("list", parents=[options], help="list a domain's moments",
                                 description="List a domain's snapshots (or checkpoints) from the store: "
                                             "name, parent, creation time, state, current.")
    parser.add_argument("domain", metavar="DOMAIN")
    parser.add_argument("--tree", action="store_true", help="draw the parent tree")
    common.add_kind_option(parser)
    common.add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, context: common.Context) -> int:
    if args.tree and args.json:
        raise errors.UsageError(reason="--tree and --json do not go together (the JSON has every parent)")
    kind = context.kind(args)
    store = context.store()
    tree = store.read_tree(kind, args.domain)
    if tree is None:
        raise errors.UnknownDomain(domain=args.domain, reason=f"no consolidated file {store.path(kind, args.domain)}")
    if args.json:
        context.emit_json(as_json(tree))
    else:
        print("\n".join(format_tree(tree) if args.tree else format_table(tree)))
    return 0


def as_json(tree: model.Tree) -> dict[str, Any]:
    """Schema version 1: moments in topological order, parents first."""
    return {"format": 1, "domain": tree.domain, "kind": tree.kind.name, "current": tree.current,
            tree.kind.plural: [_entry(m, tree) for m in tree.topological()]}


def _entry(moment: model.Moment, tree: model.Tree) -> dict[str, Any]:
    return {"name": moment.name, "parent": moment.parent, "creation_time": moment.creation_time,
            "state": moment.state, "current": moment.name == tree.current}


def format_table(tree: model.Tree) -> list[str]:
    header = ("Name", "Creation Time", "State", "Parent", "Current")
    rows = [(common.printable(m.name), _when(m.creation_time), m.state or "",
             common.printable(m.parent or ""), "yes" if m.name == tree.current else "")
            for m in tree.topological()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [" " + "   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [header, *rows]]
    lines.insert(1, "-" * (sum(widths) + 3 * len(widths)))
    return lines


def format_tree(tree: model.Tree) -> list[str]:
    """The parent tree, siblings in canonical order, the current one marked."""
    children = tree.children()
    lines: list[str] = []
    stack = [(m, "", "") for m in reversed(children.get(None, []))]
    while stack:
        moment, lead, branch = stack.pop()
        mark = "  (current)" if moment.name == tree.current else ""
        lines.append(f"{lead}{branch}{common.printable(moment.name)}{mark}")
        below = children.get(moment.name, [])
        inner = lead + ("" if not branch else "│   " if branch == "├── " else "    ")
        stack.extend((child, inner, "└── " if i == 0 else "├── ") for i, child in enumerate(reversed(below)))
    return lines


def _when(seconds: int | None) -> str:
    if seconds is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(seconds))
