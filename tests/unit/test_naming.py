"""Names on disk: escaping of domains, which names can be libvirt files or folders."""
from __future__ import annotations

from snapstore import fsio, naming


def test_domain_problems_follow_what_a_folder_and_xml_can_hold() -> None:
    for good in ("vm1", ".dot", "a b", "é", "x" * 255, f"{fsio.TEMP_PREFIX}1-x"):
        assert naming.domain_problem(good) is None, good
    for bad in ("", ".", "..", "a/b", "a\0b", "x" * 256, "bell\x07", "mark" + fsio.FOREIGN_MARK):
        assert naming.domain_problem(bad) is not None, repr(bad)


def test_moment_file_names_refuse_what_qemu_refuses() -> None:
    assert naming.file_name_problem("s1") is None
    assert naming.file_name_problem("") == "name is empty"
    assert naming.file_name_problem(".hidden") == "name starts with '.'"
    assert naming.file_name_problem("a/b") == "name contains '/'"
    assert naming.file_name_problem("x" * 252) is not None and naming.file_name_problem("x" * 251) is None


def test_escaped_forms_are_recognised_and_only_those() -> None:
    for domain in ("vm1", ".dot", "vm 2é"):
        assert naming.is_escaped_form(naming.escape_domain(domain))
    assert not naming.is_escaped_form("%2e")  # lower-case hex is never produced
    assert not naming.is_escaped_form(".dot")  # a leading '.' is always escaped


def test_attic_names_are_unique_and_bounded() -> None:
    names = {naming.attic_name("snapshots", "vm1", ".xml") for _ in range(50)}
    assert len(names) == 50
    long = naming.attic_name("checkpoints", "é" * 120, "." + "s" * 300)
    assert len(long.encode()) <= naming.NAME_MAX
