"""`list --tree`: deep chains print output linear in their depth; ordinary
trees print exactly as before (snapstore.cli.listing.format_tree)."""
from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import samples

from snapstore import cli, index
from snapstore.cli import listing

CURRENT_MARK = "  (current)"
DRAWN_LEVELS = 64  # README, ### list: drawn in full up to 64 levels down,
KEPT_LEVELS = 8  # then "[depth N] " and the guides of the last 8 levels
LINE = re.compile(r"^(?:\[depth (\d+)\] )?((?:│   |    )*)(├── |└── )?(.*)$")


def chain(count: int) -> list[index.Row]:
    return [(f"s{i}", f"s{i - 1}" if i else None, 1700000000 + i, "shutoff") for i in range(count)]


def grown(rows: list[index.Row], seed: int, count: int, max_depth: int) -> list[index.Row]:
    """``rows`` (parents first) and ``count`` more moments hung off random ones
    no deeper than ``max_depth``, a few new roots among them."""
    rng = random.Random(seed)
    rows = list(rows)
    depth: dict[str | None, int] = {None: -1}
    for name, parent, _, _ in rows:
        depth[name] = depth[parent] + 1
    for i in range(count):
        fits = [row[0] for row in rows if depth[row[0]] < max_depth]
        parent = rng.choice(fits) if fits and rng.random() > 0.05 else None
        depth[f"m{i}"] = depth[parent] + 1
        rows.append((f"m{i}", parent, 1800000000 + i, "shutoff"))
    return rows


def drawn_in_full(current: str | None, rows: list[index.Row]) -> list[str]:
    """format_tree as it was before deep lines were elided: the reference for ordinary trees."""
    names = {row[0] for row in rows}
    children: dict[str | None, list[str]] = {}
    for name, parent, _, _ in rows:
        children.setdefault(parent if parent in names else None, []).append(name)
    lines: list[str] = []
    stack = [(name, "", "") for name in reversed(children.get(None, []))]
    while stack:
        name, lead, branch = stack.pop()
        lines.append(f"{lead}{branch}{name}{'  (current)' if name == current else ''}")
        inner = lead + ("" if not branch else "│   " if branch == "├── " else "    ")
        stack.extend((child, inner, "└── " if i == 0 else "├── ")
                     for i, child in enumerate(reversed(children.get(name, []))))
    return lines


def parsed(lines: list[str]) -> Iterator[tuple[int, int, str, bool]]:
    """(depth, guides drawn, name, is current) of each line; a ``[depth N] `` marker gives the depth."""
    for line in lines:
        marker, lead, branch, rest = LINE.match(line).groups()  # type: ignore[union-attr]
        drawn = len(lead) // 4 + (1 if branch else 0)
        current = rest.endswith(CURRENT_MARK)
        yield int(marker) if marker else drawn, drawn, rest[:-len(CURRENT_MARK)] if current else rest, current


def assert_is_the_tree(lines: list[str], rows: list[index.Row], current: str | None) -> None:
    """Every name once, the current one marked, each line's parent the nearest line above one level up."""
    found = list(parsed(lines))
    assert sorted(name for _, _, name, _ in found) == sorted(row[0] for row in rows)
    assert [name for _, _, name, marked in found if marked] == ([current] if current else [])
    parents = {name: parent for name, parent, _, _ in rows}
    ancestors: list[str] = []
    for depth, drawn, name, _ in found:
        del ancestors[depth:]
        assert len(ancestors) == depth, f"{name!r} drawn too deep"
        assert parents[name] == (ancestors[-1] if ancestors else None), name
        assert drawn == (depth if depth <= DRAWN_LEVELS else KEPT_LEVELS), name
        ancestors.append(name)


def size(lines: list[str]) -> int:
    return len(("\n".join(lines) + "\n").encode())


def test_deep_chain_prints_output_linear_in_its_depth() -> None:
    """3,000 deep: 18 MB when every line carried every level's indentation."""
    rows = chain(3000)
    lines = listing.format_tree("s2999", rows)
    widest = 4 * DRAWN_LEVELS + len("s2999") + 20
    assert size(lines) < 3000 * widest, f"{size(lines)} bytes"
    assert max(map(len, lines)) < widest
    assert_is_the_tree(lines, rows, "s2999")
    assert lines[-1] == f"[depth 2999] {' ' * 4 * (KEPT_LEVELS - 1)}└── s2999  (current)"
    # linear, not quadratic: twice as deep, about twice the bytes
    assert size(listing.format_tree("s5999", chain(6000))) < 2.1 * size(lines)


def test_the_cap_is_the_documented_one() -> None:
    assert (listing.DRAWN_LEVELS, listing.KEPT_LEVELS) == (DRAWN_LEVELS, KEPT_LEVELS)


def test_elision_starts_past_the_cap() -> None:
    """The line DRAWN_LEVELS down is drawn in full; the next one is the first with a marker."""
    cap = DRAWN_LEVELS
    rows = chain(cap + 2)
    lines = listing.format_tree(None, rows)
    assert lines[:cap + 1] == drawn_in_full(None, rows)[:cap + 1]
    assert lines[cap + 1] == f"[depth {cap + 1}] {' ' * 4 * (KEPT_LEVELS - 1)}└── s{cap + 1}"


@pytest.mark.parametrize("seed", range(20))
def test_deep_branching_tree_is_drawn_as_the_tree(seed: int) -> None:
    """Forks above and below the cap: the marker and the kept guides still say where each line goes."""
    rows = grown(chain(150), seed, 300, max_depth=10**6)
    current = rows[seed * 17 % len(rows)][0]
    lines = listing.format_tree(current, rows)
    assert_is_the_tree(lines, rows, current)
    assert any(line.startswith("[depth ") and "├── " in line for line in lines)


def test_shallow_branching_tree_prints_as_before() -> None:
    rows: list[index.Row] = [("r", None, 1, "shutoff"), ("a", "r", 2, "shutoff"), ("b", "a", 3, "running"),
                             ("c", "a", 4, "shutoff"), ("x", "r", 5, "shutoff"), ("y", "x", 6, "shutoff"),
                             ("other", None, 7, "shutoff"), ("nl\n", "other", 8, "shutoff")]
    assert listing.format_tree("c", rows) == [
        "r",
        "├── a",
        "│   ├── b",
        "│   └── c  (current)",
        "└── x",
        "    └── y",
        "other",
        "└── 'nl\\n'",
    ]


@pytest.mark.parametrize("seed", range(30))
def test_trees_within_the_cap_print_byte_identical(seed: int) -> None:
    """Up to DRAWN_LEVELS deep, every line is what it always was (a chain gives the depth)."""
    rows = grown(chain(seed * 2 + 5), seed, 300, DRAWN_LEVELS)
    current = rows[seed * 17 % len(rows)][0]
    assert listing.format_tree(current, rows) == drawn_in_full(current, rows)
    assert max(depth for depth, _, _, _ in parsed(drawn_in_full(current, rows))) <= DRAWN_LEVELS


def test_list_tree_command_draws_a_deep_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    depth = DRAWN_LEVELS + 30
    specs = [(f"s{i}", f"s{i - 1}" if i else None) for i in range(depth)]
    samples.write_folder(tmp_path / "libvirt" / "vm1", specs, current=f"s{depth - 1}")
    (tmp_path / "empty.toml").write_text("")
    argv = ["--config", str(tmp_path / "empty.toml"), "--libvirt-dir", str(tmp_path / "libvirt"),
            "--state-dir", str(tmp_path / "state")]
    assert cli.main([*argv, "-q", "consolidate", "vm1"]) == 0
    capsys.readouterr()
    assert cli.main([*argv, "list", "vm1", "--tree"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert_is_the_tree(out.splitlines(), chain(depth), f"s{depth - 1}")
