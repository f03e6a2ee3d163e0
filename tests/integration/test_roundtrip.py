"""Round trips between real libvirt and snapstore, driven through the CLI in-process.

libvirt (embedded qemu driver, shut-off domains, qcow2 internal snapshots)
makes the snapshot trees; `snapstore consolidate` turns its folder into one
file, which must hold exactly what libvirt's API reports; `snapstore expand`
turns the file back into a folder that libvirt itself loads to the same tree.

The libvirt roots of the scenarios are module-scoped and never modified by a
test (tests only read them, and expand into other roots); each test gets its
own state folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lab import Lab, View
from lxml import etree
from support import cli as support_cli
from support.cli import Result

from snapstore import kinds
from snapstore.formats import consolidated, mapping, xmlsafe
from snapstore.store import Store

BULK_COUNT = 300  # snapshots of the bulk scenario (real internal snapshots, ~14 s)
BULK_BRANCH_EVERY = 50  # a fork every 50 snapshots, so the big tree is not one chain
DOMAIN = "vm1"
OTHER_DOMAIN = "vm 2é"  # a second domain whose store file name must be escaped
AWKWARD_NAMES = ["with space", "é快", "123", "q'uo\"te", "&<amp"]
DESCRIPTIONS = {"é快": "  \n  ", "&<amp": " & < > \" ' \n end "}  # blank, and markup characters
SCENARIOS = ["chain", "branch", "deletions", "names", "roots", "bulk"]
# Namespaced domain XML with mixed content, as libvirt keeps it in every snapshot's <domain>.
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
METADATA = "<metadata><app:x xmlns:app='http://example.org/app'>hi &amp; <app:y/> tail</app:x></metadata>"
COMMANDLINE = "<qemu:commandline><qemu:arg value='-no-user-config'/></qemu:commandline>"


# --- libvirt side ------------------------------------------------------------------------------


@dataclasses.dataclass
class Scenario:
    lab: Lab
    view: View  # libvirt's view of DOMAIN once the scenario is built


def _snap(name: str, description: str | None = None) -> dict[str, Any]:
    return {"op": "snapshot", "domain": DOMAIN, "name": name, "description": description}


def _revert(name: str) -> dict[str, Any]:
    return {"op": "revert", "domain": DOMAIN, "name": name}


def _delete(name: str) -> dict[str, Any]:
    return {"op": "delete", "domain": DOMAIN, "name": name}


def _scenario_ops(name: str) -> list[dict[str, Any]]:
    define = {"op": "define", "domain": DOMAIN}
    if name == "chain":
        return [define, *(_snap(f"s{i}") for i in range(1, 6))]
    if name == "branch":
        # s1 - s2 - s3 - s4; from s2: b1 - {b2, d1} and c1; current moved back to s3.
        return [define, _snap("s1"), _snap("s2"), _snap("s3"), _snap("s4"),
                _revert("s2"), _snap("b1"), _snap("b2"),
                _revert("s2"), _snap("c1"),
                _revert("b1"), _snap("d1"),
                _revert("s3")]
    if name == "deletions":
        # a - b - c - d - f, e from b; delete b (children c, e go to a), then
        # delete d while it is current (child f goes to c).
        return [define, *(_snap(n) for n in "abcdf"), _revert("b"), _snap("e"), _delete("b"),
                _revert("d"), _delete("d")]
    if name == "names":
        return [define, *(_snap(n, DESCRIPTIONS.get(n)) for n in AWKWARD_NAMES), _revert("é快")]
    if name == "roots":
        # (defined by _build with namespaced XML) a - {b, c}; deleting a while
        # current leaves two roots and no current.
        return [_snap("a"), _snap("b"), _revert("a"), _snap("c"), _revert("a"), _delete("a")]
    raise AssertionError(name)


EXPECTED_PARENTS: dict[str, dict[str, str | None]] = {
    "chain": {"s1": None, "s2": "s1", "s3": "s2", "s4": "s3", "s5": "s4"},
    "branch": {"s1": None, "s2": "s1", "s3": "s2", "s4": "s3", "b1": "s2", "b2": "b1",
               "c1": "s2", "d1": "b1"},
    "deletions": {"a": None, "c": "a", "e": "a", "f": "c"},
    "names": {n: p for n, p in zip(AWKWARD_NAMES, [None, *AWKWARD_NAMES[:-1]])},
    "roots": {"b": None, "c": None},
}


def _namespaced_definition(lab: Lab) -> str:
    """DOMAIN's definition plus qemu:commandline and <metadata> of another namespace."""
    _, xml = lab.run([{"op": "define", "domain": DOMAIN}, {"op": "domain_xml", "domain": DOMAIN}])
    xml = xml.replace("<domain type='qemu'>", f"<domain type='qemu' xmlns:qemu='{QEMU_NS}'>", 1)
    return xml.replace("</devices>", f"</devices>{METADATA}{COMMANDLINE}", 1)


def _build(root: Path, name: str) -> Scenario:
    lab = Lab(root)
    if name == "bulk":
        lab.define(DOMAIN)
        bulk = lab.bulk_snapshots(DOMAIN, "s", BULK_COUNT, branch_every=BULK_BRANCH_EVERY, mode="real")
        assert len(bulk.names) == BULK_COUNT
        view = lab.view(DOMAIN)
    elif name == "roots":
        definition = {"op": "define_xml", "xml": _namespaced_definition(lab)}
        *_, answer = lab.run([definition, *_scenario_ops(name), {"op": "view", "domain": DOMAIN}])
        view = View(**answer)
        assert view.current is None
        assert "<qemu:commandline>" in view.xml["b"] and "app:y" in view.xml["c"]
    else:
        *_, answer = lab.run([*_scenario_ops(name), {"op": "view", "domain": DOMAIN}])
        view = View(**answer)
    if name in EXPECTED_PARENTS:  # the scenario is the tree we meant to build
        assert view.parents == EXPECTED_PARENTS[name]
    return Scenario(lab, view)


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Scenario]:
    """Build each scenario once per module, on first use."""
    built: dict[str, Scenario] = {}

    def get(name: str) -> Scenario:
        if name not in built:
            built[name] = _build(tmp_path_factory.mktemp(f"lab-{name}"), name)
        return built[name]

    return get


# --- snapstore side ----------------------------------------------------------------------------


@pytest.fixture
def snapstore(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """snapstore(libvirt_dir, state_dir, *command) -> Result, run in-process."""

    def run(libvirt_dir: Path, state: Path, *command: str) -> Result:
        return support_cli.in_process(capsys, ["--libvirt-dir", str(libvirt_dir), "--state-dir", str(state),
                                               *command])

    return run


def _consolidate(snapstore: Callable[..., Result], scenario: Scenario, state: Path) -> Result:
    result = snapstore(scenario.lab.snapshot_dir, state, "consolidate", DOMAIN)
    assert result.code == 0, f"consolidate failed: {result.err}"
    return result


def _element(text: str | bytes) -> etree._Element:
    return etree.fromstring(text.encode() if isinstance(text, str) else text)


def _creation_time(xml: str) -> int:
    return int(_element(xml).findtext("creationTime"))


def assert_topological(order: list[str], parents: dict[str, str | None]) -> None:
    position = {name: index for index, name in enumerate(order)}
    assert len(position) == len(order), f"names repeated in {order}"
    for name in order:
        parent = parents[name]
        if parent is not None:
            assert position[parent] < position[name], f"{name!r} comes before its parent {parent!r}"


def assert_matches_libvirt(state: Path, view: View, domain: str = DOMAIN) -> None:
    """The consolidated file holds exactly libvirt's view, in topological order."""
    path = Store(state).path(kinds.SNAPSHOT, domain)
    data = path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert data.startswith(b"<?xml version='1.0' encoding='UTF-8'?>\n")

    # Read back through snapstore (validates) and independently with lxml.
    tree = Store(state).read_tree(kinds.SNAPSHOT, domain)
    assert tree is not None
    same = consolidated.parse_consolidated(data, kinds.SNAPSHOT, str(path))
    assert [m.name for m in same.moments] == [m.name for m in tree.moments]
    root = _element(data)
    assert (root.tag, root.get("domain"), root.get("format")) == ("snapshots", domain, "1")
    assert root.get("current") == view.current
    assert tree.current == view.current

    order = [child.findtext("name") for child in root]
    assert sorted(order) == sorted(view.names)
    parents = {child.findtext("name"): child.findtext("parent/name") for child in root}
    assert parents == view.parents
    assert {m.name: m.parent for m in tree.moments} == view.parents
    assert_topological(order, parents)

    # DESIGN §2: siblings by creationTime, then name.
    created = {name: _creation_time(view.xml[name]) for name in view.names}
    for parent in {None, *view.names}:
        siblings = [name for name in order if parents[name] == parent]
        assert siblings == sorted(siblings, key=lambda n: (created[n], n)), f"siblings of {parent!r}"

    for child in root:
        name = child.findtext("name")
        assert child.find("active") is None, f"{name!r} carries <active> in the consolidated file"
        assert xmlsafe.canonical(child) == xmlsafe.canonical(_element(view.xml[name])), (
            f"{name!r} differs from libvirt's SECURE XML")


# --- consolidate: the file equals libvirt's view -----------------------------------------------


def test_linear_chain(scenarios: Callable[[str], Scenario], snapstore: Callable[..., Result],
                      tmp_path: Path) -> None:
    scenario = scenarios("chain")
    result = _consolidate(snapstore, scenario, tmp_path / "state")
    assert scenario.view.current == "s5"
    assert "5 snapshots, current s5: written to" in result.out
    assert_matches_libvirt(tmp_path / "state", scenario.view)
    # A chain has one topological order.
    root = _element((tmp_path / "state" / "snapshots" / "vm1.xml").read_bytes())
    assert [c.findtext("name") for c in root] == ["s1", "s2", "s3", "s4", "s5"]


def test_branching_tree_after_revert_to_middle(scenarios: Callable[[str], Scenario],
                                               snapstore: Callable[..., Result], tmp_path: Path) -> None:
    scenario = scenarios("branch")
    assert scenario.view.current == "s3"  # not a leaf: s4 hangs below it
    _consolidate(snapstore, scenario, tmp_path / "state")
    assert_matches_libvirt(tmp_path / "state", scenario.view)


def test_deleted_middle_snapshots_reparent_children(scenarios: Callable[[str], Scenario],
                                                    snapstore: Callable[..., Result], tmp_path: Path) -> None:
    scenario = scenarios("deletions")
    assert not (scenario.lab.snapshot_dir / DOMAIN / "b.xml").exists()
    assert not (scenario.lab.snapshot_dir / DOMAIN / "d.xml").exists()
    assert scenario.view.current == "c"  # libvirt moved current to the deleted one's parent
    _consolidate(snapstore, scenario, tmp_path / "state")
    assert_matches_libvirt(tmp_path / "state", scenario.view)


def test_awkward_names_and_descriptions(scenarios: Callable[[str], Scenario],
                                        snapstore: Callable[..., Result], tmp_path: Path) -> None:
    scenario = scenarios("names")
    assert scenario.view.current == "é快"
    _consolidate(snapstore, scenario, tmp_path / "state")
    assert_matches_libvirt(tmp_path / "state", scenario.view)
    tree = Store(tmp_path / "state").read_tree(kinds.SNAPSHOT, DOMAIN)
    for name, description in DESCRIPTIONS.items():
        assert mapping.element(tree.by_name[name]).findtext("description") == description


def test_300_snapshots(scenarios: Callable[[str], Scenario], snapstore: Callable[..., Result],
                       tmp_path: Path) -> None:
    scenario = scenarios("bulk")
    assert len(scenario.view.names) == BULK_COUNT
    assert scenario.view.parents["s50"] == "s0"  # forks exist
    result = _consolidate(snapstore, scenario, tmp_path / "state")
    assert f"{BULK_COUNT} snapshots, current s{BULK_COUNT - 1}" in result.out
    assert_matches_libvirt(tmp_path / "state", scenario.view)


# --- folder -> file -> folder ------------------------------------------------------------------


def _header_comments(root: etree._Element) -> list[str]:
    return [node.text for node in reversed(list(root.itersiblings(preceding=True)))
            if isinstance(node, etree._Comment)]


@pytest.mark.parametrize("name", SCENARIOS)
def test_round_trip_folder_file_folder(name: str, scenarios: Callable[[str], Scenario],
                                       snapstore: Callable[..., Result], tmp_path: Path) -> None:
    scenario = scenarios(name)
    state, other = tmp_path / "state", tmp_path / "other-root"
    _consolidate(snapstore, scenario, state)
    result = snapstore(scenario.lab.snapshot_dir, state, "expand", DOMAIN, "--into", str(other))
    assert result.code == 0, result.err
    assert "written to" in result.out

    original, copy = scenario.lab.snapshot_dir / DOMAIN, other / DOMAIN
    assert os.listdir(other) == [DOMAIN], "expand left something beside the domain folder"
    assert sorted(os.listdir(copy)) == sorted(os.listdir(original))
    assert sorted(os.listdir(copy)) == sorted(f"{n}.xml" for n in scenario.view.names)
    for file_name in os.listdir(original):
        before = _element((original / file_name).read_bytes())
        after = _element((copy / file_name).read_bytes())
        assert xmlsafe.canonical(after) == xmlsafe.canonical(before), f"{file_name} differs"
        assert after.findtext("active") == ("1" if before.findtext("name") == scenario.view.current else "0")
        assert _header_comments(after) == _header_comments(before), f"{file_name}: header comment differs"
        assert len(_header_comments(after)) == 1
        assert stat.S_IMODE((copy / file_name).stat().st_mode) == 0o600

    again = snapstore(scenario.lab.snapshot_dir, state, "expand", DOMAIN, "--into", str(other))
    assert again.code == 0, again.err
    assert "unchanged" in again.out


# --- idempotence -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["branch", "names"])
def test_consolidate_twice_leaves_file_untouched(name: str, scenarios: Callable[[str], Scenario],
                                                 snapstore: Callable[..., Result], tmp_path: Path) -> None:
    scenario = scenarios(name)
    state = tmp_path / "state"
    first = _consolidate(snapstore, scenario, state)
    assert "written to" in first.out
    path = Store(state).path(kinds.SNAPSHOT, DOMAIN)
    data, info = path.read_bytes(), path.stat()
    second = _consolidate(snapstore, scenario, state)
    assert "unchanged" in second.out
    after = path.stat()
    assert path.read_bytes() == data
    assert (after.st_ino, after.st_mtime_ns) == (info.st_ino, info.st_mtime_ns)
    assert [p.name for p in path.parent.iterdir()] == [path.name], "a temp was left in the store"


# --- libvirt accepts our output ----------------------------------------------------------------


@pytest.mark.parametrize("name", SCENARIOS)
def test_libvirt_loads_expanded_folder(name: str, scenarios: Callable[[str], Scenario],
                                       snapstore: Callable[..., Result], tmp_path: Path) -> None:
    source = scenarios(name)
    state = tmp_path / "state"
    _consolidate(snapstore, source, state)

    target = Lab(tmp_path / "lab-b")
    uuid = target.define_xml(source.lab.domain_xml(DOMAIN))
    assert uuid == _element(source.view.xml[source.view.names[0]]).findtext("domain/uuid")
    result = snapstore(source.lab.snapshot_dir, state, "expand", DOMAIN, "--into", str(target.snapshot_dir))
    assert result.code == 0, result.err

    loaded = target.view(DOMAIN)  # a new libvirt process: it reads the folder at start
    assert sorted(loaded.names) == sorted(source.view.names)
    assert loaded.parents == source.view.parents
    assert loaded.current == source.view.current
    assert_topological(loaded.names, loaded.parents)
    for snapshot in source.view.names:
        assert xmlsafe.canonical(_element(loaded.xml[snapshot])) == xmlsafe.canonical(
            _element(source.view.xml[snapshot])), f"libvirt reads {snapshot!r} differently"


# --- consolidate --all, --dry-run, --json ------------------------------------------------------


@pytest.fixture(scope="module")
def two_domains(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lab, dict[str, View]]:
    lab = Lab(tmp_path_factory.mktemp("lab-two"))
    answers = lab.run([
        {"op": "define", "domain": "vm1"},
        {"op": "define", "domain": OTHER_DOMAIN},
        *({"op": "snapshot", "domain": "vm1", "name": n} for n in ("a", "b", "c")),
        {"op": "revert", "domain": "vm1", "name": "a"},
        *({"op": "snapshot", "domain": OTHER_DOMAIN, "name": n} for n in ("x", "y")),
        {"op": "view", "domain": "vm1"},
        {"op": "view", "domain": OTHER_DOMAIN},
    ])
    return lab, {"vm1": View(**answers[-2]), OTHER_DOMAIN: View(**answers[-1])}


def test_consolidate_all_json(two_domains: tuple[Lab, dict[str, View]],
                              snapstore: Callable[..., Result], tmp_path: Path) -> None:
    lab, views = two_domains
    state = tmp_path / "state"
    result = snapstore(lab.snapshot_dir, state, "consolidate", "--all", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["format"] == 1 and report["dry_run"] is False
    by_domain = {entry["domain"]: entry for entry in report["results"]}
    assert list(by_domain) == [OTHER_DOMAIN, "vm1"]  # sorted: " " < "1"
    for domain, view in views.items():
        entry = by_domain[domain]
        assert entry["count"] == len(view.names)
        assert entry["current"] == view.current
        assert entry["changed"] is True
        assert entry["path"] == str(Store(state).path(kinds.SNAPSHOT, domain))
        assert_matches_libvirt(state, view, domain)
    assert Store(state).domains(kinds.SNAPSHOT) == [OTHER_DOMAIN, "vm1"]
    assert sorted(os.listdir(state / "snapshots")) == ["vm%202%C3%A9.xml", "vm1.xml"]

    again = snapstore(lab.snapshot_dir, state, "consolidate", "--all", "--json")
    assert again.code == 0, again.err
    assert [entry["changed"] for entry in json.loads(again.out)["results"]] == [False, False]


def test_consolidate_all_text(two_domains: tuple[Lab, dict[str, View]],
                              snapstore: Callable[..., Result], tmp_path: Path) -> None:
    lab, views = two_domains
    result = snapstore(lab.snapshot_dir, tmp_path / "state", "consolidate", "--all")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{OTHER_DOMAIN}: 2 snapshots, current y: written to ")
    assert lines[1].startswith("vm1: 3 snapshots, current a: written to ")


def _data_files(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file but lock files: path -> (inode, mtime_ns, content)."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() and p.parent.name != "locks"}


def test_dry_run_writes_nothing_over_an_older_file(scenarios: Callable[[str], Scenario],
                                                   snapstore: Callable[..., Result], tmp_path: Path) -> None:
    state = tmp_path / "state"
    _consolidate(snapstore, scenarios("chain"), state)  # an older tree of vm1
    before = _data_files(state)
    newer = scenarios("branch")
    result = snapstore(newer.lab.snapshot_dir, state, "consolidate", DOMAIN, "--dry-run")
    assert result.code == 0, result.err
    assert "would write" in result.out
    # A lock file is not data; everything else must be untouched.
    assert _data_files(state) == before

    report = snapstore(newer.lab.snapshot_dir, state, "consolidate", DOMAIN, "--dry-run", "--json")
    assert report.code == 0, report.err
    entry, = json.loads(report.out)["results"]
    assert (entry["count"], entry["current"], entry["changed"]) == (len(newer.view.names), "s3", True)
    assert json.loads(report.out)["dry_run"] is True
    assert _data_files(state) == before


def test_dry_run_on_fresh_state_dir(scenarios: Callable[[str], Scenario],
                                    snapstore: Callable[..., Result], tmp_path: Path) -> None:
    state = tmp_path / "state"  # does not exist yet, as on a new host
    result = snapstore(scenarios("chain").lab.snapshot_dir, state, "consolidate", DOMAIN, "--dry-run")
    assert result.code == 0, (
        "regression: consolidate --dry-run fails when the state folder (its locks/) does not exist yet: "
        f"Store.replace() opens locks/<kind>.<domain>.lock although run() skipped prepare(): {result.err!r}")
    assert "would write" in result.out
    assert not state.exists(), "--dry-run created the state folder"


# --- list --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["branch", "deletions", "names", "roots", "bulk"])
def test_list_json_equals_libvirt(name: str, scenarios: Callable[[str], Scenario],
                                  snapstore: Callable[..., Result], tmp_path: Path) -> None:
    scenario, out = _listed(scenarios(name), snapstore, tmp_path, "--json")
    listing = json.loads(out)
    view = scenario.view
    assert (listing["format"], listing["domain"], listing["kind"]) == (1, DOMAIN, "snapshot")
    assert listing["current"] == view.current
    entries = listing["snapshots"]
    order = [entry["name"] for entry in entries]
    assert sorted(order) == sorted(view.names)
    assert {e["name"]: e["parent"] for e in entries} == view.parents
    assert_topological(order, view.parents)
    for entry in entries:
        xml = _element(view.xml[entry["name"]])
        assert entry["current"] is (entry["name"] == view.current)
        assert entry["creation_time"] == int(xml.findtext("creationTime"))
        assert entry["state"] == xml.findtext("state")


def _listed(scenario: Scenario, snapstore: Callable[..., Result], tmp_path: Path,
            option: str) -> tuple[Scenario, str]:
    """Consolidate the scenario into a fresh state, then `list` it with ``option``."""
    state = tmp_path / "state"
    _consolidate(snapstore, scenario, state)
    result = snapstore(scenario.lab.snapshot_dir, state, "list", DOMAIN, option)
    assert result.code == 0, result.err
    return scenario, result.out


_TREE_PREFIX = re.compile(r"^((?:│   |    )*)(├── |└── )?")
_CURRENT_MARK = "  (current)"


def _parse_tree_output(lines: list[str]) -> Iterator[tuple[int, str, bool]]:
    """(depth, name, is_current) for each line of `list --tree`."""
    for line in lines:
        match = _TREE_PREFIX.match(line)
        lead, branch = match.group(1), match.group(2)
        depth = len(lead) // 4 + (1 if branch else 0)
        rest = line[match.end():]
        current = rest.endswith(_CURRENT_MARK)
        yield depth, rest[: -len(_CURRENT_MARK)] if current else rest, current


@pytest.mark.parametrize("name", ["branch", "deletions", "names", "roots", "bulk"])
def test_list_tree_shows_every_name_once(name: str, scenarios: Callable[[str], Scenario],
                                         snapstore: Callable[..., Result], tmp_path: Path) -> None:
    scenario, out = _listed(scenarios(name), snapstore, tmp_path, "--tree")
    rows = list(_parse_tree_output(out.splitlines()))
    names = Counter(row[1] for row in rows)
    assert names == Counter(scenario.view.names), "every name exactly once"
    assert [row[1] for row in rows if row[2]] == ([scenario.view.current] if scenario.view.current else [])
    # The drawing is the tree: a row's parent is the nearest row above it one level up.
    ancestors: list[str] = []
    for depth, snapshot, _ in rows:
        del ancestors[depth:]
        assert len(ancestors) == depth, f"{snapshot!r} drawn too deep"
        assert scenario.view.parents[snapshot] == (ancestors[-1] if ancestors else None), snapshot
        ancestors.append(snapshot)


# --- whitespace that is text, not indentation --------------------------------------------------

MIXED_METADATA = "<metadata><app:x xmlns:app='http://example.org/app'>a<app:y/> <app:z/>b</app:x></metadata>"


def _strict(element: etree._Element) -> bytes:
    """Plain C14N: every character of text counts, indentation included."""
    return etree.tostring(element, method="c14n")


def test_mixed_content_whitespace_survives(lab: Lab, snapstore: Callable[..., Result], tmp_path: Path) -> None:
    """A space between two inline elements of mixed content (app metadata in the
    domain XML that every snapshot embeds) is text: libvirt keeps it as is."""
    _, xml = lab.run([{"op": "define", "domain": DOMAIN}, {"op": "domain_xml", "domain": DOMAIN}])
    xml = xml.replace("</devices>", f"</devices>{MIXED_METADATA}", 1)
    *_, answer = lab.run([{"op": "define_xml", "xml": xml}, _snap("s1"), {"op": "view", "domain": DOMAIN}])
    libvirt_x = _element(View(**answer).xml["s1"]).find("domain/metadata")[0]
    assert libvirt_x.text == "a" and libvirt_x[0].tail == " "  # libvirt kept it

    state, other = tmp_path / "state", tmp_path / "other-root"
    assert snapstore(lab.snapshot_dir, state, "consolidate", DOMAIN).code == 0
    stored = _element((state / "snapshots" / "vm1.xml").read_bytes()).find("domainsnapshot/domain/metadata")[0]
    assert snapstore(lab.snapshot_dir, state, "expand", DOMAIN, "--into", str(other)).code == 0
    expanded = _element((other / DOMAIN / "s1.xml").read_bytes()).find("domain/metadata")[0]
    assert (_strict(stored), _strict(expanded)) == (_strict(libvirt_x), _strict(libvirt_x)), (
        "regression: the space between <app:y/> and <app:z/> (mixed content, i.e. text) is rewritten as "
        "indentation: xmlsafe.serialize() runs etree.indent(), which replaces whitespace-only text and "
        "tails even inside elements with text content, and xmlsafe.canonical() ignores exactly that "
        "whitespace, so the C14N checks cannot see the change")


# --- a libvirt fact the round trip depends on --------------------------------------------------


def test_libvirt_define_discards_a_folder_expanded_before_it(
        scenarios: Callable[[str], Scenario], snapstore: Callable[..., Result], tmp_path: Path) -> None:
    """Expand into a new host's root only after the domain is defined there:
    defineXML of a new domain drops a snapshot folder already present under its name."""
    source, state = scenarios("chain"), tmp_path / "state"
    _consolidate(snapstore, source, state)
    target = Lab(tmp_path / "lab-b")
    result = snapstore(source.lab.snapshot_dir, state, "expand", DOMAIN, "--into", str(target.snapshot_dir))
    assert result.code == 0, result.err
    assert len(os.listdir(target.snapshot_dir / DOMAIN)) == len(source.view.names)
    target.define_xml(source.lab.domain_xml(DOMAIN))
    assert target.view(DOMAIN).names == []
    assert not any((target.snapshot_dir / DOMAIN).glob("*.xml"))
