"""The only XML parser factory, and the canonical form used to compare elements.

Metadata files are untrusted input: no entity expansion, no DTD loading, no
network, a size cap before parsing, and libxml2's default depth cap (256;
huge_tree stays off). libvirt never writes a DOCTYPE, so any is refused.
"""
from __future__ import annotations

import copy
import threading

from lxml import etree

from snapstore import errors

_local = threading.local()


def _parser() -> etree.XMLParser:
    # lxml parsers are not thread-safe; one per thread, reused for speed.
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False,
            dtd_validation=False, huge_tree=False, remove_blank_text=False,
        )
        _local.parser = parser
    return parser


def parse_bytes(data: bytes, source: str, limit: int) -> etree._Element:
    """Parse one document and return its root element, or raise FormatError."""
    if len(data) > limit:
        raise errors.FormatError(path=source, reason=f"larger than the {limit}-byte limit ({len(data)} bytes)")
    try:
        document = etree.fromstring(data, _parser()).getroottree()
    except etree.XMLSyntaxError as e:
        raise errors.FormatError(path=source, reason=f"not well-formed XML: {_first_line(e)}") from e
    if document.docinfo.doctype or document.docinfo.internalDTD is not None:
        raise errors.FormatError(path=source, reason="has a DOCTYPE (entities and DTDs are refused)")
    root = document.getroot()
    if any(isinstance(node, etree._Entity) for node in root.iter()):
        raise errors.FormatError(path=source, reason="holds an entity reference (refused)")
    return root


def canonical(element: etree._Element) -> bytes:
    """C14N of an element, ignoring only the indentation between elements.

    Whitespace-only text is indentation when its element has child elements;
    text of leaf elements (a blank description) is content and is kept.
    """
    clone = copy.deepcopy(element)
    clone.tail = None
    for node in clone.iter():
        if len(node) and node.text is not None and not node.text.strip():
            node.text = None
        for child in node:
            if child.tail is not None and not child.tail.strip():
                child.tail = None
    return etree.tostring(clone, method="c14n")


def serialize(element: etree._Element, level: int) -> bytes:
    """The element indented by two spaces a level, starting at ``level``."""
    etree.indent(element, space="  ", level=level)
    return etree.tostring(element, encoding="UTF-8", xml_declaration=False, with_tail=False)


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
