"""Hostile and broken input (issue 8 §4): property tests and a fuzz run.

Hypothesis draws trees (names in any script, with control characters,
'/', '..', very long; descriptions that are only blanks or hold markup
characters; unknown elements, mixed content) and mutations of valid
documents. Parsing and validation never raise anything but a snapstore
error; what parses round-trips exactly (C14N, parents, current, <active>);
a folder round trip through the real commands writes nothing outside its
folder. The parsers' atheris target (fuzz_parsers.py) runs for a bounded
time; without atheris installed, hypothesis drives the same target.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import campaign
import fuzz_parsers
import pytest
from campaign import Sandbox
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from snapstore import cli, errors, kinds, legacydir, model, naming, store
from snapstore.formats import consolidated, legacy, mapping, xmlsafe

EXAMPLES = campaign.budget(60, 2000)
FUZZ_SECONDS = campaign.budget(15, 600)
PROPERTIES = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


def xml_char(c: str) -> bool:
    """What XML 1.0 (and lxml) lets a document hold."""
    point = ord(c)
    return c in "\t\n\r" or 0x20 <= point <= 0xD7FF or 0xE000 <= point <= 0xFFFD or point >= 0x10000


HOSTILE = ["..", ".", "/", "a/b", "../../etc/passwd", ".hidden", " ", "\t\n", "x" * 300, "é" * 130,
           "&amp;", "<x/>", "]]>", "'\"", "\u202e", "\U0001f600", "con", "a\\b"]
any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
xml_text = st.text(st.characters(exclude_categories=("Cs",)).filter(xml_char), max_size=40)
names = st.one_of(st.sampled_from(HOSTILE), xml_text.filter(bool))
descriptions = st.one_of(st.none(), xml_text, st.sampled_from(["   ", "\n\n", " \t ", "a & b < c > d \" e ' f"]))
unknown = st.builds(lambda tag, text, attr: (tag, text, attr), st.sampled_from(["future", "x-y", "ns.z", "_q"]),
                    xml_text, xml_text)


@st.composite
def trees(draw, kind: kinds.Kind = kinds.SNAPSHOT, domain_names=st.just("vm1")) -> model.Tree:  # noqa: B008
    chosen = draw(st.lists(names, min_size=1, max_size=10, unique=True))
    moments = []
    for i, name in enumerate(chosen):
        parent = draw(st.one_of(st.none(), st.sampled_from(chosen[:i]))) if i else None
        moments.append(mapping.moment(_element(kind, name, parent, draw(descriptions),
                                                          draw(st.lists(unknown, max_size=2)), draw)))
    current = draw(st.one_of(st.none(), st.sampled_from(chosen)))
    return model.Tree(kind, draw(domain_names), moments, current)


def _element(kind: kinds.Kind, name: str, parent: str | None, description: str | None, extras: list, draw):
    root = etree.Element(kind.root_tag)
    parts = [("name", name), ("description", description), ("parent", parent),
             ("creationTime", str(draw(st.integers(0, 2 ** 40))))]
    for tag, text in parts:
        if text is None:
            continue
        text = text or None  # a parsed document never holds an empty string
        child = etree.SubElement(root, tag)
        if tag == "parent":
            etree.SubElement(child, "name").text = text
        else:
            child.text = text
    for tag, text, attr in extras:
        child = etree.SubElement(root, tag, a=attr)
        child.text = text or None
        if draw(st.booleans()):  # mixed content: text, an element, more text
            etree.SubElement(child, "b").tail = " tail "
    domain = etree.SubElement(root, "domain", type="qemu")
    etree.SubElement(domain, "uuid").text = campaign.samples.UUID
    return root


def summary(tree: model.Tree) -> tuple:
    return fuzz_parsers.summary(tree)


# --------------------------------------------------------------------------- formats


@PROPERTIES
@given(trees())
def test_consolidated_round_trip_is_exact(tree: model.Tree) -> None:
    campaign.count("inputs tried (hypothesis: trees)")
    if tree.validate():
        with pytest.raises(errors.TreeError):
            store.Store(Path("/nonexistent")).replace(tree, dry_run=True)
        return
    before = summary(tree)
    data = consolidated.format_consolidated(tree)
    again = consolidated.parse_consolidated(data, tree.kind, "again")
    assert summary(again) == before
    assert consolidated.format_consolidated(again) == data, "formatting is not a fixpoint"


@PROPERTIES
@given(trees(), st.booleans())
def test_legacy_round_trip_is_exact(tree: model.Tree, active: bool) -> None:
    campaign.count("inputs tried (hypothesis: trees)")
    for moment in tree.moments:
        before = xmlsafe.canonical(mapping.element(moment))
        entry = legacy.parse_legacy(legacy.format_legacy(moment, tree.kind, active), tree.kind, "again")
        assert entry.active == active and xmlsafe.canonical(mapping.element(entry.moment)) == before


@PROPERTIES
@given(st.lists(st.tuples(xml_text.filter(bool), st.one_of(st.none(), xml_text)), max_size=12), st.one_of(st.none(),
                                                                                                          xml_text))
def test_validation_never_crashes_on_any_parent_graph(edges, current) -> None:
    """Cycles, self-parents, duplicates, missing parents: problems, never an exception; a valid
    tree's order survives a round trip."""
    campaign.count("inputs tried (hypothesis: parent graphs)")
    moments = [mapping.moment(_element(kinds.SNAPSHOT, name, parent, None, [], lambda s: 0))
               for name, parent in edges]
    tree = model.Tree(kinds.SNAPSHOT, "vm1", moments, current)
    problems = tree.validate()
    if len(tree.by_name) == len(moments):  # with duplicates the walk never ends: see the test below
        assert len(tree.topological()) <= len(moments)
    if not problems:
        order = [m.name for m in tree.topological()]
        again = consolidated.parse_consolidated(consolidated.format_consolidated(tree), kinds.SNAPSHOT, "x")
        assert [m.name for m in again.topological()] == order


def test_order_of_a_tree_with_a_duplicated_parent_ends() -> None:
    """model.Tree.topological() says moments in a cycle are never reached; with a name defined
    twice, one copy the other's parent, it never returns (memory grows until the kernel stops
    it). Every caller in snapstore validates first, and validate() skips the walk when names
    repeat: a trap for the next caller, not a failure today."""
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (1 << 29, 1 << 29))\n"
            "from lxml import etree\nfrom snapstore import kinds, model\nfrom snapstore.formats import mapping\n"
            "def m(name, parent):\n"
            "    e = etree.fromstring(f'<domainsnapshot><name>{name}</name>' + (f'<parent><name>{parent}</name></parent>' if parent else '') + '</domainsnapshot>')\n"
            "    return mapping.moment(e)\n"
            "print(len(model.Tree(kinds.SNAPSHOT, 'vm1', [m('a', None), m('a', 'a')]).topological()))\n")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3)
    except subprocess.TimeoutExpired:
        done = None
    assert done is not None and done.returncode == 0, (
        "BUG: (latent) model.Tree.topological() never returns for moments [a, a (parent a)]: _walk has no "
        "visited set, so the duplicated name is its own child forever (validate() avoids the walk when "
        f"names repeat, so no command reaches it today): {done.stderr[-300:] if done else 'timed out'}")


MUTATIONS = st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "dup", "token"]),
                               st.integers(0, 1 << 16), st.binary(max_size=8),
                               st.sampled_from([b"<!DOCTYPE x [<!ENTITY e 'v'>]>", b"&e;", b"&#0;", b"&#1;", b"\x00",
                                                b"\xff\xfe", b"<![CDATA[<a>]]>", b"<?pi x?>", b"<!--c-->", b"<active>1</active>",
                                                b"<parent><name>s1</name></parent>", b"current='zz'", b"xmlns='u'",
                                                b"<a>" * 300, b"</name>", b"\xc3\x28", b"&#x10FFFF;"])),
                     max_size=6)


def mutate(data: bytes, steps) -> bytes:
    buffer = bytearray(data)
    for action, position, payload, token in steps:
        at = position % (len(buffer) + 1)
        if action == "flip" and buffer:
            buffer[at % len(buffer)] ^= 1 << (position % 8)
        elif action == "insert":
            buffer[at:at] = payload
        elif action == "delete":
            del buffer[at:at + len(payload) + 1]
        elif action == "dup":
            buffer[at:at] = buffer[at:at + 64]
        else:
            buffer[at:at] = token
    return bytes(buffer)


@PROPERTIES
@given(st.sampled_from(sorted(fuzz_parsers.SEEDS)), MUTATIONS)
def test_mutated_documents_are_refused_or_round_trip(seed: str, steps) -> None:
    campaign.count("inputs tried (hypothesis: XML mutations)")
    fuzz_parsers.check_input(mutate(fuzz_parsers.SEEDS[seed], steps))


def test_text_in_the_root_survives_active() -> None:
    """libvirt's <active> marker is internal: removing it must keep the text around it, adding it
    must add none (DESIGN §2: each moment is C14N-equal to its file's root minus <active>; text
    never changes). libvirt writes no text in the root, a hand-edited or hostile file may."""
    data = b"<domainsnapshot><name>a</name>x<active>1</active>y</domainsnapshot>"
    entry = legacy.parse_legacy(data, kinds.SNAPSHOT, "file")
    parsed = "".join(mapping.element(entry.moment).itertext())
    again = legacy.parse_legacy(legacy.format_legacy(entry.moment, kinds.SNAPSHOT, True), kinds.SNAPSHOT, "again")
    round_trip = "".join(mapping.element(again.moment).itertext())
    assert (parsed, round_trip) == ("axy", "axy"), (
        "BUG: text directly in a legacy file's root does not survive <active>: "
        "formats/legacy._remove_keeping_tail replaces the text before <active> with the text after it "
        f"instead of joining them (root text 'x'+'y' parsed as {parsed[1:]!r}), and format_legacy sets the "
        f"last child's tail to indentation, so a round trip gives {round_trip[1:]!r}; found by the fuzz target")


# --------------------------------------------------------------------------- names and folders


def storable(name: str) -> bool:
    return naming.file_name_problem(name) is None and all(map(xml_char, name))


domain_names = xml_text.filter(lambda d: storable(d) and len(naming.escape_domain(d)) <= 200)


@PROPERTIES
@given(trees(domain_names=domain_names))
def test_folder_round_trip_through_the_commands(tmp_path_factory, tree: model.Tree) -> None:
    """libvirt folder -> consolidate -> expand --into: the same files (C14N, markers included),
    or a refusal listing the names that cannot be files; nothing written outside the folders."""
    campaign.count("inputs tried (hypothesis: folder round trips)")
    sandbox = Sandbox(tmp_path_factory.mktemp("box"))
    if tree.validate():
        return
    files = legacydir.format_files(tree) if not legacydir.unstorable_names(tree) else None
    if files is None:
        _assert_expand_refuses(sandbox, tree)
        return
    campaign.write_legacy(sandbox.libvirt / tree.domain, files)
    assert cli.main(["-q", *sandbox.argv("consolidate", "--", tree.domain)]) == 0  # "--": a name may start with "-"
    out = sandbox.base / "out"
    assert cli.main(["-q", *sandbox.argv("expand", "--into", str(out), "--", tree.domain)]) == 0
    written = {name: xmlsafe.canonical(xmlsafe.parse_bytes(data, name, 1 << 20))
               for name, data in campaign.tree_listing(out / tree.domain).items()}
    assert written == {name: xmlsafe.canonical(xmlsafe.parse_bytes(data, name, 1 << 20)) for name,
                       data in files.items()}
    assert sorted(os.listdir(out)) == [tree.domain], "expand wrote beside the domain folder"
    assert sorted(os.listdir(sandbox.libvirt)) == [tree.domain]


def _assert_expand_refuses(sandbox: Sandbox, tree: model.Tree) -> None:
    state = store.Store(sandbox.state)
    state.prepare()
    state.replace(tree)
    before = campaign.tree_listing(sandbox.base)
    assert cli.main(["-q", *sandbox.argv("expand", "--into", str(sandbox.base / "out"), "--", tree.domain)]) == 1
    assert campaign.tree_listing(sandbox.base) == before, "a refused expand wrote something"


@PROPERTIES
@given(st.one_of(st.sampled_from(HOSTILE), any_text.filter(bool), st.text(min_size=200, max_size=400)))
def test_no_path_derived_from_a_name_escapes_its_folder(name: str) -> None:
    campaign.count("inputs tried (hypothesis: names -> paths)")
    root = Path("/state")
    state = store.Store(root)
    for kind in kinds.ALL:
        for path, folder in ((state.path(kind, name), root / kind.plural),
                             (state.index_path(kind, name), root / "index"),
                             (root / "attic" / naming.attic_name(kind.plural, name, ".xml"), root / "attic")):
            assert path.parent == folder and path.name not in ("", ".", "..") and "/" not in path.name, path
    try:
        folder = legacydir.domain_folder(Path("/libvirt"), name)
    except errors.UnknownDomain:
        return
    assert folder.parent == Path("/libvirt") and folder.name == name and name not in (".", "..")


# --------------------------------------------------------------------------- the fuzz run


def test_fuzz_the_parsers(tmp_path: Path) -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        _fuzz_with_hypothesis()
        return
    seeds, corpus = tmp_path / "seeds", tmp_path / "corpus"
    seeds.mkdir()
    corpus.mkdir()
    for name, data in fuzz_parsers.SEEDS.items():
        (seeds / name).write_bytes(data)
    dictionary = tmp_path / "xml.dict"
    dictionary.write_text("".join(f'"{token}"\n' for token in (
        "<!DOCTYPE", "<!ENTITY", "&amp;", "<![CDATA[", "]]>", "<?xml", "?>", "<!--", "-->", "<active>1</active>",
        "<parent>", "</parent>", "<name>", "</name>", "current=", "format=", "domain=", "\\x00", "\\xff")))
    done = subprocess.run([sys.executable, str(Path(fuzz_parsers.__file__)), f"-max_total_time={FUZZ_SECONDS}",
                           "-rss_limit_mb=2048", "-timeout=10", f"-dict={dictionary}",
                           f"-artifact_prefix={tmp_path}/", str(corpus), str(seeds)],
                          capture_output=True, text=True, timeout=FUZZ_SECONDS + 120, cwd=tmp_path)
    runs = re.search(r"Done (\d+) runs", done.stderr)
    crash = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("#"))[-3000:]
    assert done.returncode == 0 and runs, f"BUG: the fuzz target found a crash (artifacts in {tmp_path}):\n{crash}"
    campaign.count("inputs tried (atheris fuzz of the parsers)", int(runs[1]))
    campaign.NOTES["fuzz engine"] = f"atheris, {FUZZ_SECONDS} s"


@settings(max_examples=campaign.budget(3000, 50000), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=2048), st.sampled_from(sorted(fuzz_parsers.SEEDS)), MUTATIONS)
def _fuzz_with_hypothesis(raw: bytes, seed: str, steps) -> None:
    campaign.NOTES["fuzz engine"] = "hypothesis (atheris is not installed)"
    campaign.count("inputs tried (hypothesis fuzz of the parsers)", 2)
    fuzz_parsers.check_input(raw)
    fuzz_parsers.check_input(mutate(fuzz_parsers.SEEDS[seed], steps))
