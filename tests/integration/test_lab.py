"""The harness drives real libvirt: these check libvirt's behaviour the other tests rely on."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from lab import Lab, LabError
from lxml import etree

AWKWARD_NAMES = ["with space", "é快", "123", "q'uo\"te", "&<amp"]


def active_marker(path: Path) -> str | None:
    """The text of <active>, which libvirt writes as the root's last child."""
    last = etree.parse(str(path)).getroot()[-1]
    return last.text if last.tag == "active" else None


def test_linear_chain_parents_in_order_current_last(lab: Lab) -> None:
    lab.define("vm1")
    lab.snapshots("vm1", ["s1", "s2", "s3"])
    view = lab.view("vm1")
    assert view.names == ["s1", "s2", "s3"]
    assert view.parents == {"s1": None, "s2": "s1", "s3": "s2"}
    assert view.current == "s3"


def test_revert_to_middle_moves_current(lab: Lab) -> None:
    lab.define("vm1")
    lab.snapshots("vm1", ["s1", "s2", "s3"])
    lab.revert("vm1", "s2")
    assert lab.view("vm1").current == "s2"


def test_delete_middle_reparents_children(lab: Lab) -> None:
    lab.define("vm1")
    lab.snapshots("vm1", ["a", "b", "c"])
    lab.revert("vm1", "b")
    lab.snapshot("vm1", "d")  # b now has two children: c and d
    lab.delete("vm1", "b")
    view = lab.view("vm1")
    assert view.parents == {"a": None, "c": "a", "d": "a"}
    assert not (lab.snapshot_dir / "vm1" / "b.xml").exists()


def test_delete_children_metadata_only_on_forked_tree(lab: Lab) -> None:
    # The case that crashes libvirt 9.0 with DELETE_CHILDREN|METADATA_ONLY.
    lab.define("vm1")
    bulk = lab.bulk_snapshots("vm1", "s", 9, branch_every=3)  # forks at s0, s3
    lab.delete("vm1", "s0", children=True, metadata_only=True)
    assert lab.view("vm1").names == []
    assert not list((lab.snapshot_dir / "vm1").glob("*.xml"))
    assert len(bulk.names) == 9


def test_awkward_names_and_description_round_trip(lab: Lab) -> None:
    lab.define("vm1")
    description = "  & < > \" ' \n  "
    lab.snapshots("vm1", AWKWARD_NAMES[:-1])
    lab.snapshot("vm1", AWKWARD_NAMES[-1], description=description)
    view = lab.view("vm1")
    assert sorted(view.names) == sorted(AWKWARD_NAMES)
    for name in AWKWARD_NAMES:
        assert etree.fromstring(view.xml[name].encode()).findtext("name") == name
        assert (lab.snapshot_dir / "vm1" / f"{name}.xml").is_file()
    last = etree.fromstring(view.xml[AWKWARD_NAMES[-1]].encode())
    assert last.findtext("description") == description


def test_files_are_private_and_only_current_is_active(lab: Lab) -> None:
    lab.define("vm1")
    lab.snapshots("vm1", ["s1", "s2", "s3"])
    lab.revert("vm1", "s2")
    folder = lab.snapshot_dir / "vm1"
    assert sorted(p.name for p in folder.iterdir()) == ["s1.xml", "s2.xml", "s3.xml"]
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert active_marker(path) == ("1" if path.name == "s2.xml" else "0")
    text = (folder / "s2.xml").read_text()
    assert text.startswith("<!--\nWARNING: THIS IS AN AUTO-GENERATED FILE.")
    assert text.rstrip().endswith("<active>1</active>\n</domainsnapshot>")


def test_libvirt_error_carries_message_and_partial_results(lab: Lab) -> None:
    with pytest.raises(LabError, match="already exists") as caught:
        lab.run(
            [
                {"op": "define", "domain": "vm1"},
                {"op": "snapshot", "domain": "vm1", "name": "s1"},
                {"op": "snapshot", "domain": "vm1", "name": "s1"},
            ]
        )
    assert caught.value.op == 2
    assert len(caught.value.results) == 2
    with pytest.raises(LabError, match="can't contain '/'"):
        lab.snapshot("vm1", "a/b")


def test_redefine_on_second_root_with_same_uuid(lab_factory: Callable[[str], Lab]) -> None:
    source, target = lab_factory("source"), lab_factory("target")
    uuid = source.define("vm1")
    source.snapshots("vm1", ["s1", "s2"])
    source.revert("vm1", "s1")
    before = source.view("vm1")
    assert target.define_xml(source.domain_xml("vm1")) == uuid
    for name in before.names:  # topological: parents first
        target.redefine("vm1", before.xml[name], current=name == before.current)
    after = target.view("vm1")
    assert (after.parents, after.current, after.xml) == (before.parents, "s1", before.xml)


def test_redefine_needs_parent_first(lab_factory: Callable[[str], Lab]) -> None:
    source, target = lab_factory("source"), lab_factory("target")
    source.define("vm1")
    source.snapshots("vm1", ["s1", "s2"])
    target.define_xml(source.domain_xml("vm1"))
    with pytest.raises(LabError, match="parent s1 for moment s2 not found"):
        target.redefine("vm1", source.view("vm1").xml["s2"])


def test_undefine_removes_snapshot_folder(lab: Lab) -> None:
    lab.define("vm1")
    lab.snapshot("vm1", "s1")
    with pytest.raises(LabError, match="cannot delete inactive domain with 1 snapshots"):
        lab.undefine("vm1", metadata_only_snapshots=False)
    lab.undefine("vm1")
    assert not (lab.snapshot_dir / "vm1").exists()


@pytest.mark.parametrize("mode", ["real", "redefine"])
def test_bulk_snapshots_fork_every_nth(lab: Lab, mode: str) -> None:
    lab.define("vm1")
    bulk = lab.bulk_snapshots("vm1", "s", 12, branch_every=5, mode=mode)
    view = lab.view("vm1")
    assert bulk.names == [f"s{i}" for i in range(12)]
    assert set(view.names) == set(bulk.names)
    assert view.parents["s4"] == "s3" and view.parents["s5"] == "s0"
    assert view.parents["s10"] == "s5" and view.current == "s11"
    assert len(list((lab.snapshot_dir / "vm1").glob("*.xml"))) == 12
