"""The parsers' fuzz target (issue 8 §4), for atheris and for hypothesis.

    fuzz_parsers.py [libFuzzer options] CORPUS_DIR [SEED_DIR]   (atheris)

``check_input(data)``: the first byte picks the parser (bit 0: checkpoint
instead of snapshot; bit 1: a consolidated document instead of one legacy
file), the rest is the document. A refusal is a snapstore error; anything
else escaping is a crash. What parses must round-trip exactly: format it
and parse it again gives C14N-equal moments, the same parents, current and
<active>, and formatting is a fixpoint (the same bytes again).
"""
from __future__ import annotations

import sys

LIMIT = 1 << 20
SNAPSHOT_SEED = (b"<!--\nWARNING: THIS IS AN AUTO-GENERATED FILE.\n-->\n\n<domainsnapshot>\n  <name>s1</name>\n"
                 b"  <description>a &amp; b &lt;c&gt; 'q' \"d\"</description>\n  <state>shutoff</state>\n"
                 b"  <parent>\n    <name>s0</name>\n  </parent>\n  <creationTime>1700000000</creationTime>\n"
                 b"  <memory snapshot='no'/>\n  <disks>\n    <disk name='vda' snapshot='internal'/>\n  </disks>\n"
                 b"  <domain type='qemu'>\n    <name>vm1</name>\n    <uuid>4f293fa2-6c6a-40c1-835c-76727585c2dc</uuid>\n"
                 b"  </domain>\n  <unknownFuture a='1'>x<y/> z</unknownFuture>\n  <active>1</active>\n</domainsnapshot>\n")
CHECKPOINT_SEED = (b"<domaincheckpoint>\n  <name>c1</name>\n  <parent>\n    <name>c0</name>\n  </parent>\n"
                   b"  <creationTime>1700000000</creationTime>\n  <disks>\n    <disk name='vda' checkpoint='bitmap'/>\n"
                   b"  </disks>\n</domaincheckpoint>\n")
CONSOLIDATED_SEED = (b"<?xml version='1.0' encoding='UTF-8'?>\n<snapshots current='s1' domain='vm1' format='1'>\n"
                     b"  <domainsnapshot><name>s0</name><description>  </description></domainsnapshot>\n"
                     b"  <domainsnapshot><name>s1</name><parent><name>s0</name></parent></domainsnapshot>\n"
                     b"</snapshots>\n")
CHECKPOINTS_SEED = (b"<checkpoints domain='vm1' format='1'>\n  <domaincheckpoint><name>c0</name></domaincheckpoint>\n"
                    b"  <domaincheckpoint><name>c1</name><parent><name>c0</name></parent></domaincheckpoint>\n"
                    b"</checkpoints>\n")
SEEDS = {"snapshot": b"\x00" + SNAPSHOT_SEED, "checkpoint": b"\x01" + CHECKPOINT_SEED,
         "snapshots": b"\x02" + CONSOLIDATED_SEED, "checkpoints": b"\x03" + CHECKPOINTS_SEED}


def check_input(data: bytes) -> str:
    """'refused', 'invalid' (parsed, breaks a tree rule) or 'parsed' (and round-tripped)."""
    from snapstore import errors, kinds

    if not data:
        return "refused"
    kind = kinds.CHECKPOINT if data[0] & 1 else kinds.SNAPSHOT
    try:
        return (_consolidated if data[0] & 2 else _legacy)(data[1:], kind)
    except errors.SnapstoreError:
        return "refused"


def _legacy(body: bytes, kind) -> str:
    from snapstore.formats import legacy, mapping, xmlsafe

    entry = legacy.parse_legacy(body, kind, "fuzz", LIMIT)
    if root_holds_text(body):
        return "parsed"  # a known loss, pinned by test_hostile_input.test_text_in_the_root_survives_active
    before = xmlsafe.canonical(mapping.element(entry.moment))
    again = legacy.parse_legacy(legacy.format_legacy(entry.moment, kind, entry.active), kind, "again", LIMIT)
    assert again.active == entry.active, "round trip changed <active>"
    assert xmlsafe.canonical(mapping.element(again.moment)) == before, (
        f"round trip changed the moment:\n{before!r}\n{xmlsafe.canonical(mapping.element(again.moment))!r}")
    return "parsed"


def root_holds_text(body: bytes) -> bool:
    """Text other than indentation directly in the root (libvirt never writes any):
    removing and re-adding <active> there loses or adds text, a known bug."""
    from snapstore.formats import xmlsafe

    root = xmlsafe.parse_bytes(body, "fuzz", LIMIT)
    return any((text or "").strip() for text in [root.text, *(child.tail for child in root)])


def _consolidated(body: bytes, kind) -> str:
    from snapstore.formats import consolidated

    tree = consolidated.parse_consolidated(body, kind, "fuzz", LIMIT)
    if tree.validate():
        return "invalid"
    before = summary(tree)
    first = consolidated.format_consolidated(tree)
    again = consolidated.parse_consolidated(first, kind, "again", LIMIT)
    assert summary(again) == before, f"round trip changed the tree:\n{before}\n{summary(again)}"
    assert consolidated.format_consolidated(again) == first, "formatting is not a fixpoint"
    return "parsed"


def summary(tree) -> tuple:
    """Everything a round trip must keep: names, parents, current, each moment's C14N."""
    from snapstore.formats import mapping, xmlsafe

    moments = sorted((m.name, m.parent, xmlsafe.canonical(mapping.element(m))) for m in tree.moments)
    return tree.domain, tree.current, tuple(moments)


def main() -> None:
    import atheris

    with atheris.instrument_imports(include=["snapstore"]):
        import snapstore.formats.consolidated  # noqa: F401
        import snapstore.formats.legacy  # noqa: F401
        import snapstore.model  # noqa: F401
    atheris.Setup(sys.argv, check_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
