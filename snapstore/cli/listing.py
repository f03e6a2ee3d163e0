"""``snapstore list``: a domain's moments from the store's listing index.

The index (snapstore.index) is checked against the consolidated file's
identity and rebuilt from the file when stale, so a listing of thousands
never parses XML on the common path; this module imports nothing heavy.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

from snapstore import errors, index
from snapstore.cli import common


def register(commands: common.Commands, options: argparse.ArgumentParser) -> None:
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
    found = store.listing(kind, args.domain)
    if found is None:
        raise errors.UnknownDomain(domain=args.domain, reason=f"no consolidated file {store.path(kind, args.domain)}")
    current, rows = found
    if args.json:
        context.emit_json(as_json(args.domain, kind.name, kind.plural, current, rows))
    else:
        print("\n".join(format_tree(current, rows) if args.tree else format_table(current, rows)))
    return 0


def as_json(domain: str, kind: str, plural: str, current: str | None, rows: list[index.Row]) -> dict[str, Any]:
    """Schema version 1: moments in topological order, parents first."""
    return {"format": 1, "domain": domain, "kind": kind, "current": current,
            plural: [{"name": name, "parent": parent, "creation_time": created, "state": state,
                      "current": name == current} for name, parent, created, state in rows]}


def format_table(current: str | None, rows: list[index.Row]) -> list[str]:
    header = ("Name", "Creation Time", "State", "Parent", "Current")
    cells = [(common.printable(name), _when(created), state or "", common.printable(parent or ""),
              "yes" if name == current else "") for name, parent, created, state in rows]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    lines = [" " + "   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [header, *cells]]
    lines.insert(1, "-" * (sum(widths) + 3 * len(widths)))
    return lines


DRAWN_LEVELS = 64  # lines up to this depth are drawn in full, as always: deeper than trees usually get
KEPT_LEVELS = 8  # deeper lines: only the guides of their last levels, after "[depth N] "
_BELOW = {"├── ": "│   ", "└── ": "    "}  # what a branch leaves for the lines below it
_Lead = tuple[str, "_Lead"] | None  # guides left of a branch, innermost first, shared with the parent's


def format_tree(current: str | None, rows: list[index.Row]) -> list[str]:
    """The parent tree, siblings in the file's canonical order, the current one marked.

    A line DRAWN_LEVELS or fewer levels below its root is drawn in full. A
    deeper one starts with ``[depth N] `` (N levels below its root) and draws
    only its last KEPT_LEVELS levels' guides: drawn in full, a chain N deep
    would print N²/2 indentation (18 MB for 3,000), this keeps the output
    linear in N, and the marker says what the elided guides would.
    """
    names = {row[0] for row in rows}
    children: dict[str | None, list[str]] = {}
    for name, parent, _, _ in rows:
        children.setdefault(parent if parent in names else None, []).append(name)
    lines: list[str] = []
    stack: list[tuple[str, int, _Lead, str]] = [(name, 0, None, "") for name in reversed(children.get(None, []))]
    while stack:
        name, depth, lead, branch = stack.pop()
        mark = "  (current)" if name == current else ""
        lines.append(f"{_guides(depth, lead, branch)}{common.printable(name)}{mark}")
        inner = (_BELOW[branch], lead) if branch else lead  # linked, not copied: O(1) per child
        stack.extend((child, depth + 1, inner, "└── " if i == 0 else "├── ")
                     for i, child in enumerate(reversed(children.get(name, []))))
    return lines


def _guides(depth: int, lead: _Lead, branch: str) -> str:
    """What is drawn left of a name ``depth`` levels down: at most DRAWN_LEVELS guides."""
    deep = depth > DRAWN_LEVELS
    wanted = KEPT_LEVELS if deep else depth
    segments = [branch]
    while lead is not None and len(segments) < wanted:
        segment, lead = lead
        segments.append(segment)
    return (f"[depth {depth}] " if deep else "") + "".join(reversed(segments))


def _when(seconds: int | None) -> str:
    if seconds is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(seconds))
