"""The only XML parser factory, and the canonical form used to compare elements.

Metadata files are untrusted input: no entity expansion, no DTD loading, no
network, a size cap before parsing, and libxml2's default depth cap (256;
huge_tree stays off). libvirt never writes a DOCTYPE, so any is refused.
"""
from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Iterator

from lxml import etree

from snapstore import codes, errors

_local = threading.local()
_OPTIONS = dict(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
_CHUNK = 1 << 16


def _parser() -> etree.XMLParser:
    # lxml parsers are not thread-safe; one per thread, reused for speed.
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(dtd_validation=False, remove_blank_text=False, **_OPTIONS)
        _local.parser = parser
    return parser


def parse_bytes(data: bytes, source: str, limit: int) -> etree._Element:
    """Parse one document and return its root element, or raise FormatError."""
    _refuse_oversize(data, source, limit)
    try:
        document = etree.fromstring(data, _parser()).getroottree()
    except etree.XMLSyntaxError as e:
        raise errors.FormatError(source, f"not well-formed XML: {_first_line(e)}") from e
    _refuse_doctype(document, source)
    root = document.getroot()
    _refuse_entities(root, source)
    return root


def reparse(data: bytes) -> etree._Element:
    """Parse bytes this program serialized itself from a checked document."""
    return etree.fromstring(data, _parser())


def stream(data: bytes, source: str, limit: int) -> Iterator[etree._Element]:
    """The root element (attributes only), then each element child, whole.

    For documents too large to hold as one tree: a child is emptied and
    dropped once the caller has moved on, so memory holds one child at a
    time.  The same checks as parse_bytes, raised as the parse gets there.
    """
    _refuse_oversize(data, source, limit)
    etree.clear_error_log()  # so the first entry of an error's log is this document's
    parser = etree.XMLPullParser(events=("start", "end"), **_OPTIONS)
    depth, root = 0, None
    chunks = itertools.chain((data[offset:offset + _CHUNK] for offset in range(0, len(data), _CHUNK)), [None])
    for chunk in chunks:  # None: the end, whose events are handled the same way
        for event, element in _events(parser, chunk, source):
            if event == "start":
                depth += 1
                if root is None:
                    root = element
                    _refuse_doctype(element.getroottree(), source)
                    yield root
                continue
            depth -= 1
            if depth == 1:
                _refuse_entities(element, source)
                yield element
                element.clear(keep_tail=True)
                while element.getprevious() is not None:
                    del root[0]
    if root is None:
        raise errors.FormatError(source, "not well-formed XML: no root element")


def _refuse_oversize(data: bytes, source: str, limit: int) -> None:
    if len(data) > limit:
        raise errors.FormatError(source, f"larger than the {limit}-byte limit ({len(data)} bytes)",
                                 codes.OVER_LIBVIRT_LIMIT)


def _events(parser: etree.XMLPullParser, chunk: bytes | None,
            source: str) -> Iterator[tuple[str, etree._Element]]:
    try:
        if chunk is None:
            parser.close()
        else:
            parser.feed(chunk)
        events = list(parser.read_events())
    except etree.XMLSyntaxError as e:
        # The parser's first logged error is the cause; the exception may
        # only say what followed it ("no element found").
        first = e.error_log[0] if len(e.error_log) else None  # stream() cleared the log first
        reason = f"{first.message}, line {first.line}, column {first.column}" if first else _first_line(e)
        raise errors.FormatError(source, f"not well-formed XML: {reason}") from e
    yield from events


def _refuse_doctype(document: etree._ElementTree, source: str) -> None:
    if document.docinfo.doctype or document.docinfo.internalDTD is not None:
        raise errors.FormatError(source, "has a DOCTYPE (entities and DTDs are refused)")


def _refuse_entities(element: etree._Element, source: str) -> None:
    if next(element.iter(etree.Entity), None) is not None:  # lxml filters by node type in C
        raise errors.FormatError(source, "holds an entity reference (refused)")


def canonical(element: etree._Element) -> bytes:
    """C14N of an element, ignoring only the indentation between elements.

    Whitespace is indentation only inside element-only content; the text of
    leaf elements (a blank description) and every gap inside mixed content
    (``<x>a<y/> <z/>b</x>``) is content and is kept.
    """
    clone = copy.deepcopy(element)
    clone.tail = None
    for node in clone.iter():
        if len(node) and not _is_mixed(node):
            node.text = None
            for child in node:
                child.tail = None
    return etree.tostring(clone, method="c14n")


def serialize(element: etree._Element, level: int = 0) -> bytes:
    """The element indented by two spaces a level, starting at ``level``.

    An element already indented the way libvirt writes it (the text before
    its first child and the tail of its last one say so) is written as it
    is: re-indenting every element cost more than parsing it. Otherwise it is
    indented; lxml's indent() also rewrites whitespace inside mixed content,
    so a document holding any is indented by our own walk.
    """
    if not _looks_indented(element, level):
        if _HAS_MIXED(element):
            _indent_element_only(element, level)
        else:
            etree.indent(element, space="  ", level=level)
    return etree.tostring(element, encoding="UTF-8", xml_declaration=False, with_tail=False)


def _looks_indented(element: etree._Element, level: int) -> bool:
    if not len(element):
        return True
    return element.text == "\n" + "  " * (level + 1) and element[-1].tail == "\n" + "  " * level


_HAS_MIXED = etree.XPath("boolean(descendant-or-self::*[* and text()[normalize-space()]])")


def _is_mixed(node: etree._Element) -> bool:
    return bool(node.text and node.text.strip()) or any(child.tail and child.tail.strip() for child in node)


def _indent_element_only(element: etree._Element, level: int) -> None:
    stack = [(element, level)]
    while stack:
        node, depth = stack.pop()
        children = list(node)
        if not children:
            continue
        if not _is_mixed(node):
            node.text = "\n" + "  " * (depth + 1)
            for child in children:
                child.tail = node.text
            children[-1].tail = "\n" + "  " * depth
        stack.extend((child, depth + 1) for child in children if isinstance(child.tag, str))


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
