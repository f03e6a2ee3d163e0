"""One libvirt per-moment file: ``<domainsnapshot>`` or ``<domaincheckpoint>``.

libvirt writes them with virXMLSaveFile(): its "AUTO-GENERATED FILE" header
comment, the root element, and for snapshots an internal ``<active>`` child
(1 for the current snapshot) that is not part of the public format.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from lxml import etree

from snapstore import codes, errors, kinds, limits, model
from snapstore.formats import mapping, xmlsafe

LIBVIRT_FILE_LIMIT = limits.LIBVIRT_FILE

_HEADER = (
    "<!--\n"
    "WARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE\n"
    "OVERWRITTEN AND LOST. Changes to this xml configuration should be made using:\n"
    "  virsh {command}\n"
    "or other application using the libvirt API.\n"
    "-->\n\n"
)


@dataclasses.dataclass
class LegacyMoment:
    moment: model.Moment
    active: bool  # the <active> marker; always False for checkpoints


Inspect = Callable[[etree._Element], None]


def parse_legacy(data: bytes, kind: kinds.Kind, source: str, limit: int = LIBVIRT_FILE_LIMIT,
                 inspect: Inspect | None = None) -> LegacyMoment:
    """The moment a file holds; ``inspect`` sees the parsed element (without
    <active>) before it is mapped, and must leave it as it found it: check's
    schema pass validates it there instead of parsing the moment again."""
    root = xmlsafe.parse_bytes(data, source, limit)
    if root.tag != kind.root_tag:
        raise errors.FormatError(path=source,
                                 reason=f"root element is <{xmlsafe.tag(root)}>, expected <{kind.root_tag}>",
                                 code=codes.WRONG_ROOT)
    xmlsafe.refuse_unnestable(root, source)
    active = pop_active(root, source) if kind.stores_current else False
    if inspect is not None:
        inspect(root)
    moment = mapping.moment(root, source)
    if not moment.name:
        raise errors.FormatError(path=source, reason=f"<{kind.root_tag}> has no <name>",
                                 code=codes.BAD_INTERNAL_ELEMENT)
    return LegacyMoment(moment, active)


def format_legacy(moment: model.Moment, kind: kinds.Kind, active: bool) -> bytes:
    """The file libvirt would write for this moment, byte for byte in structure."""
    return _HEADER.format(command=kind.edit_command).encode() + _with_active(moment, kind, active) + b"\n"


def _with_active(moment: model.Moment, kind: kinds.Kind, active: bool) -> bytes:
    if not kind.stores_current:
        return moment.body
    value = "1" if active else "0"
    marker = f"<active>{value}</active>".encode()
    closing = b">\n</" + kind.root_tag.encode() + b">"
    if moment.body.endswith(closing):  # libvirt's layout: the last child then the closing tag
        cut = len(moment.body) - len(closing) + 2
        return moment.body[:cut] + b"  " + marker + b"\n" + moment.body[cut:]
    element = mapping.element(moment)  # anything else: placed by the tree, so text around it is kept
    last = element[-1] if len(element) else None
    saved = last.tail if last is not None else element.text
    node = etree.SubElement(element, "active")
    node.text, node.tail = value, "\n"
    if last is not None and not (saved or "").strip():
        last.tail = "\n  "
    elif last is None and not (saved or "").strip():
        element.text = "\n  "
    return xmlsafe.serialize(element)


def pop_active(root: etree._Element, source: str) -> bool:
    """Remove the internal <active> marker (exactly one, 0 or 1); True for 1."""
    # libvirt's internal parse requires exactly this element
    # (virDomainSnapshotDefParseNode with VIR_DOMAIN_SNAPSHOT_PARSE_INTERNAL).
    markers = root.findall("active")
    if len(markers) != 1:
        raise errors.FormatError(path=source, reason=f"has {len(markers)} <active> elements, libvirt needs exactly one",
                                 code=codes.BAD_INTERNAL_ELEMENT)
    marker = markers[0]
    text = (marker.text or "").strip()
    if text not in ("0", "1"):
        raise errors.FormatError(path=source, reason=f"<active> holds {text!r}, expected 0 or 1",
                                 code=codes.BAD_INTERNAL_ELEMENT)
    _remove_keeping_tail(marker)
    return text == "1"


def _remove_keeping_tail(node: etree._Element) -> None:
    """Remove ``node``; text on both sides of it is joined, indentation dropped."""
    parent = node.getparent()
    if parent is None:  # the root: nothing around it to join
        return
    previous = node.getprevious()
    before = (previous.tail if previous is not None else parent.text) or ""
    after = node.tail or ""
    if not before.strip():
        joined = after  # indentation before the marker: the closing indentation after it wins
    elif not after.strip():
        joined = before  # text before, only indentation after
    else:
        joined = before + after
    if previous is not None:
        previous.tail = joined
    else:
        parent.text = joined
    parent.remove(node)
