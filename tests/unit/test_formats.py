"""Legacy and consolidated formats: lossless, canonical, hardened."""
from __future__ import annotations

import pytest
import samples
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from snapstore import errors, kinds, model
from snapstore.formats import consolidated, legacy, mapping, xmlsafe

SNAP = kinds.SNAPSHOT


def parse(data: bytes) -> legacy.LegacyMoment:
    return legacy.parse_legacy(data, SNAP, "f.xml")


def test_legacy_round_trip_keeps_header_active_and_content() -> None:
    data = samples.snapshot_xml("s1", "s0", active=True, description="d")
    entry = parse(data)
    assert entry.active and entry.moment.name == "s1" and entry.moment.parent == "s0"
    assert mapping.element(entry.moment).find("active") is None
    out = legacy.format_legacy(entry.moment, SNAP, active=True)
    assert out.replace(b'"', b"'") == data  # only the attribute quote style may differ


def test_legacy_format_can_move_the_active_marker() -> None:
    entry = parse(samples.snapshot_xml("s1", active=True))
    out = legacy.format_legacy(entry.moment, SNAP, active=False)
    assert out.endswith(b"  <active>0</active>\n</domainsnapshot>\n")
    assert mapping.element(entry.moment).find("active") is None  # the model is left as it was


def test_unknown_elements_survive_both_formats() -> None:
    extra = "  <future attr='x'><snapshotDeleteInProgress/>text</future>\n"
    entry = parse(samples.snapshot_xml("s1", extra=extra))
    tree = model.Tree(SNAP, "vm1", [entry.moment], "s1")
    back = consolidated.parse_consolidated(consolidated.format_consolidated(tree), SNAP, "c")
    assert mapping.element(back.moments[0]).find("future/snapshotDeleteInProgress") is not None
    assert xmlsafe.canonical(mapping.element(back.moments[0])) == xmlsafe.canonical(mapping.element(parse(samples.snapshot_xml("s1", extra=extra)).moment))


@pytest.mark.parametrize("description", ["   ", "\n\n  \n", "a & b < c > d \"q\" 'q'", " lead", "tab\there", "é快"])
def test_description_text_comes_back_exactly(description: str) -> None:
    entry = parse(samples.snapshot_xml("s1", description=description))
    tree = model.Tree(SNAP, "vm1", [entry.moment], None)
    data = consolidated.format_consolidated(tree)
    back = consolidated.parse_consolidated(data, SNAP, "c").moments[0]
    assert mapping.element(back).findtext("description") == description
    again = parse(legacy.format_legacy(back, SNAP, active=False))
    assert mapping.element(again.moment).findtext("description") == description


def test_consolidated_is_canonical_and_byte_identical() -> None:
    moments = [parse(samples.snapshot_xml(n, p, created=c)).moment
               for n, p, c in [("b", "a", 3), ("a", None, 1), ("c", "a", 2)]]
    one = consolidated.format_consolidated(model.Tree(SNAP, "vm1", moments, "b"))
    two = consolidated.format_consolidated(model.Tree(SNAP, "vm1", list(reversed(moments)), "b"))
    assert one == two
    assert one.startswith(b"<?xml version='1.0' encoding='UTF-8'?>\n<snapshots current=\"b\" domain=\"vm1\" format=\"1\">")
    back = consolidated.parse_consolidated(one, SNAP, "c")
    assert [m.name for m in back.moments] == ["a", "c", "b"] and back.current == "b"
    assert consolidated.format_consolidated(back) == one


def test_empty_consolidated_has_no_current() -> None:
    data = consolidated.format_consolidated(model.Tree(SNAP, "vm1", [], None))
    assert data.endswith(b'<snapshots domain="vm1" format="1"/>\n')
    assert len(consolidated.parse_consolidated(data, SNAP, "c")) == 0


@pytest.mark.parametrize("data, reason", [
    (b"<domainsnapshot><name>x</name>", "not well-formed"),
    (b"<domain><name>x</name><active>0</active></domain>", "root element is <domain>"),
    (b"<domainsnapshot><name>x</name></domainsnapshot>", "0 <active> elements"),
    (b"<domainsnapshot><name>x</name><active>2</active></domainsnapshot>", "expected 0 or 1"),
    (b"<domainsnapshot><active>0</active></domainsnapshot>", "has no <name>"),
    (b"\xff\xfe<domainsnapshot/>", "not well-formed"),
    (b"<domainsnapshot><name>a\x00</name><active>0</active></domainsnapshot>", "not well-formed"),
])
def test_broken_legacy_files_give_one_line_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(errors.FormatError) as info:
        parse(data)
    assert reason in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("f.xml: ")


XXE = b"""<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/shadow">]>
<domainsnapshot><name>&x;</name><active>0</active></domainsnapshot>"""
LAUGHS = b"""<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">""" + b"".join(
    f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'.encode() for i in range(9)) + \
    b"""]><domainsnapshot><name>&j;</name><active>0</active></domainsnapshot>"""


@pytest.mark.parametrize("data", [XXE, LAUGHS], ids=["xxe", "billion-laughs"])
def test_entities_and_doctypes_are_refused(data: bytes) -> None:
    with pytest.raises(errors.FormatError) as info:
        parse(data)
    assert "DOCTYPE" in str(info.value) or "entity" in str(info.value)


def test_size_cap_is_checked_before_parsing() -> None:
    data = samples.snapshot_xml("s", description="x" * 2_000_000)
    with pytest.raises(errors.FormatError, match="1048576-byte limit"):
        parse(data)
    assert legacy.parse_legacy(data, SNAP, "f", limit=4 << 20).moment.name == "s"


def test_deep_nesting_is_refused() -> None:
    data = b"<domainsnapshot><name>x</name>" + b"<a>" * 10000 + b"</a>" * 10000 + b"<active>0</active></domainsnapshot>"
    with pytest.raises(errors.FormatError, match="not well-formed"):
        parse(data)


CONSOLIDATED_XXE = b"""<?xml version="1.0"?><!DOCTYPE s [<!ENTITY x SYSTEM "file:///etc/shadow">]>
<snapshots domain='v' format='1'><domainsnapshot><name>&x;</name></domainsnapshot></snapshots>"""
CONSOLIDATED_LAUGHS = LAUGHS.replace(b"<domainsnapshot><name>&j;</name><active>0</active></domainsnapshot>",
                                     b"<snapshots domain='v' format='1'><domainsnapshot><name>&j;</name>"
                                     b"</domainsnapshot></snapshots>")
STORE_OK = b"<snapshots domain='v' format='1'><domainsnapshot><name>a</name></domainsnapshot>"


@pytest.mark.parametrize("data, reason", [
    (CONSOLIDATED_XXE, "DOCTYPE"),
    (CONSOLIDATED_LAUGHS, "DOCTYPE|amplification"),
    (STORE_OK, "not well-formed"),  # truncated: the end tag never comes
    (STORE_OK + b"</snapshots><x/>", "not well-formed"),
    (b"", "not well-formed"),
    (b"<!-- only a comment -->", "not well-formed"),
    (STORE_OK + b"<domainsnapshot>" + b"<a>" * 10000 + b"</a>" * 10000 + b"</domainsnapshot></snapshots>",
     "not well-formed"),
    (STORE_OK + b"<domainsnapshot><name>" + b"x" * 300 + b"</name></domainsnapshot></snapshots>", "300-byte limit"),
], ids=["xxe", "billion-laughs", "truncated", "trailing-element", "empty", "no-root", "deep", "oversize"])
def test_consolidated_stream_refuses_what_the_whole_parse_refuses(data: bytes, reason: str) -> None:
    with pytest.raises(errors.FormatError, match=reason):
        consolidated.parse_consolidated(data, SNAP, "c", limit=300 if reason == "300-byte limit" else 1 << 20)


def test_consolidated_moments_are_bytes_and_reparse_to_the_same_tree() -> None:
    """Each moment keeps its serialized bytes, not a parsed tree (memory: ~15x the bytes)."""
    files = [samples.snapshot_xml(f"s{i}", f"s{i - 1}" if i else None, i == 2, 1700000000 + i) for i in range(3)]
    tree = model.Tree(SNAP, "vm1", [parse(f).moment for f in files], "s2")
    again = consolidated.parse_consolidated(consolidated.format_consolidated(tree), SNAP, "c")
    assert [m.body for m in again.topological()] == [m.body for m in tree.topological()]
    assert all(isinstance(m.body, bytes) and mapping.element(m).findtext("name") == m.name for m in again.moments)
    for m in again.topological():
        back = parse(legacy.format_legacy(m, SNAP, m.name == "s2"))
        assert (back.moment.body, back.active) == (m.body, m.name == "s2")


def test_consolidated_refuses_foreign_children_and_versions() -> None:
    for data, reason in [(b"<snapshots domain='v' format='2'/>", "format '2'"),
                         (b"<snapshots format='1'/>", "no domain"),
                         (b"<checkpoints domain='v' format='1'/>", "expected <snapshots>"),
                         (b"<snapshots domain='v' format='1'><domain/></snapshots>", "holds <domain>"),
                         (b"<snapshots domain='v' format='1'><domainsnapshot><name>a</name><active>1</active>"
                          b"</domainsnapshot></snapshots>", "<active> marker")]:
        with pytest.raises(errors.FormatError, match=reason):
            consolidated.parse_consolidated(data, SNAP, "c")


def test_canonical_ignores_indentation_but_not_leaf_text() -> None:
    a = etree.fromstring(b"<r>\n  <d>  </d>\n  <e a='1'/>\n</r>")
    b = etree.fromstring(b'<r><d>  </d><e a="1"></e></r>')
    c = etree.fromstring(b"<r><d> </d><e a='1'/></r>")
    assert xmlsafe.canonical(a) == xmlsafe.canonical(b) != xmlsafe.canonical(c)


TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40).filter(
    lambda s: all(c in "\t\n\r" or ord(c) >= 0x20 for c in s) and "\r" not in s and all(
        not (0xFFFE <= ord(c) <= 0xFFFF) for c in s))


@settings(max_examples=200, deadline=None)
@given(name=TEXT.filter(bool), description=TEXT)
def test_any_text_round_trips_through_both_formats(name: str, description: str) -> None:
    entry = parse(samples.snapshot_xml(name, description=description, active=True))
    tree = model.Tree(SNAP, "vm1", [entry.moment], name)
    back = consolidated.parse_consolidated(consolidated.format_consolidated(tree), SNAP, "c")
    assert back.current == name and back.moments[0].name == name
    again = parse(legacy.format_legacy(back.moments[0], SNAP, active=True))
    assert again.active and xmlsafe.canonical(mapping.element(again.moment)) == xmlsafe.canonical(mapping.element(entry.moment))
    assert mapping.element(again.moment).findtext("description") == description


def test_mixed_content_whitespace_is_kept_by_serialize_and_canonical() -> None:
    extra = "  <metadata><app:x xmlns:app='urn:a'>a<app:y/> <app:z/>b</app:x></metadata>\n"
    entry = parse(samples.snapshot_xml("s1", extra=extra))
    tree = model.Tree(SNAP, "vm1", [entry.moment], None)
    back = consolidated.parse_consolidated(consolidated.format_consolidated(tree), SNAP, "c").moments[0]
    mixed = mapping.element(back).find("metadata/{urn:a}x")
    assert [mixed.text, mixed[0].tail, mixed[1].tail] == ["a", " ", "b"]
    flat = etree.fromstring(b"<domainsnapshot><name>s</name><metadata><x xmlns='urn:a'>a<y/> <z/>b</x>"
                            b"</metadata></domainsnapshot>")
    out = xmlsafe.serialize(flat)  # not indented yet: element-only content is, mixed content is not
    assert out == (b"<domainsnapshot>\n  <name>s</name>\n  <metadata>\n    <x xmlns=\"urn:a\">a<y/> <z/>b</x>\n"
                   b"  </metadata>\n</domainsnapshot>")
    changed = etree.fromstring(b"<r><x>a<y/>\n  <z/>b</x></r>")
    assert xmlsafe.canonical(changed) != xmlsafe.canonical(etree.fromstring(b"<r><x>a<y/> <z/>b</x></r>"))
