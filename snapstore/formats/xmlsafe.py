"""The only XML parser factory, and the canonical form used to compare elements.

Metadata files are untrusted input: no entity expansion, no DTD loading, no
network, a size cap before parsing, and libxml2's default depth cap (256;
huge_tree stays off). libvirt never writes a DOCTYPE, so any is refused.
"""
from __future__ import annotations

import copy
import itertools
import threading
import typing
from collections.abc import Iterator

from lxml import etree

from snapstore import codes, errors

_local = threading.local()
_CHUNK = 1 << 16


def _parser() -> etree.XMLParser:
    # lxml parsers are not thread-safe; one per thread, reused for speed.
    parser: etree.XMLParser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(dtd_validation=False, remove_blank_text=False, resolve_entities=False,
                                 no_network=True, load_dtd=False, huge_tree=False)
        _local.parser = parser
    return parser


def tag(element: etree._Element) -> str:
    """An element's tag as text (lxml types it wider: bytes, QName)."""
    return str(element.tag)


def parse_bytes(data: bytes, source: str, limit: int) -> etree._Element:
    """Parse one document and return its root element, or raise FormatError."""
    _refuse_oversize(data, source, limit)
    try:
        document = etree.fromstring(data, _parser()).getroottree()
    except etree.XMLSyntaxError as e:
        raise errors.FormatError(path=source, reason=f"not well-formed XML: {_first_line(e)}") from e
    _refuse_doctype(document, source)
    root = document.getroot()
    _refuse_entities(root, source)
    return root


# libxml2 refuses a document nested over 256 elements deep (huge_tree stays
# off); in a consolidated file a moment sits under the root, so a moment may
# hold 254 levels below itself, one fewer than a legacy file may.
NEST_LIMIT = 254
_TOO_DEEP = etree.XPath("boolean(" + "/".join(["*"] * (NEST_LIMIT + 1)) + ")")


def refuse_unnestable(element: etree._Element, source: str) -> None:
    """Refuse a moment a consolidated file could hold but never read back."""
    if _TOO_DEEP(element):
        raise errors.FormatError(path=source,
                                 reason=f"nests elements more than {NEST_LIMIT} levels below <{tag(element)}>; "
                                         "a consolidated file could not be read back (libxml2's depth limit)")


def string(element: etree._Element, path: str) -> str | None:
    """libvirt's virXPathString("string(./PATH)"): every text below the first
    match, comments left out (``<name>s<!-- -->1</name>`` is "s1"); None
    when there is no match or no text."""
    found = element.find(path)
    if found is None:
        return None
    text = found.text if not len(found) else "".join(str(part) for part in found.itertext())
    return text or None


def libvirt_root_tag(data: bytes) -> str | None:
    """The root tag libvirt would see, or None when libvirt could not parse
    the document. libvirt's libxml2 call has no XML_PARSE_NOENT, so a
    DOCTYPE and entity references are fine to it (this parser refuses
    them); nothing is expanded, loaded or fetched here either."""
    parser = etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False)
    try:
        return tag(etree.fromstring(data, parser))
    except etree.XMLSyntaxError:
        return None


def reparse(data: bytes) -> etree._Element:
    """Parse bytes this program serialized itself from a checked document."""
    return etree.fromstring(data, _parser())


def stream(data: bytes, source: str, limit: int, root_tag: str, child_tag: str) -> Iterator[etree._Element]:
    """The ``<root_tag>`` root (attributes only), then each ``<child_tag>``
    child, whole; anything else as the root or an element child is refused.

    For documents too large to hold as one tree: a child is emptied and
    dropped once the caller has moved on, so memory holds one child at a
    time.  libxml2 reports only those two tags, so Python handles two
    events a child, not two an element.  The same checks as parse_bytes,
    raised as the parse gets there.
    """
    _refuse_oversize(data, source, limit)
    etree.clear_error_log()  # so the first entry of an error's log is this document's
    parser = etree.XMLPullParser(events=("start", "end"), tag=(root_tag, child_tag), resolve_entities=False,
                                 no_network=True, load_dtd=False, huge_tree=False)
    root = closed = None
    chunks = (data[offset:offset + _CHUNK] for offset in range(0, len(data), _CHUNK))
    for chunk in itertools.chain(chunks, [None]):  # None: the end, whose events count the same
        events, closed = _parse_step(parser, source, chunk)
        for event, element in events:
            if root is None:
                if event == "start" and element.getparent() is None:
                    root = element
                    _refuse_doctype(root.getroottree(), source)
                    yield root
            elif event == "end" and element.getparent() is root and element.tag == child_tag:
                _refuse_entities(element, source)
                _refuse_other_children(root, element, child_tag, source)
                yield element
                element.clear(keep_tail=True)
                while element.getprevious() is not None:
                    del root[0]
    if root is None:  # no <root_tag> root: say what the root is
        if closed is None:  # close() returns the root or raises
            raise errors.FormatError(path=source, reason="holds no element")
        _refuse_doctype(closed.getroottree(), source)
        raise errors.FormatError(path=source, reason=f"root element is <{tag(closed)}>, expected <{root_tag}>",
                                 code=codes.WRONG_ROOT)
    _refuse_other_children(root, None, child_tag, source)


def _refuse_other_children(root: etree._Element, upto: etree._Element | None, child_tag: str, source: str) -> None:
    """Element children other than ``<child_tag>`` (before ``upto``, or all)."""
    for node in root:
        if node is upto:
            return
        if isinstance(node.tag, str) and node.tag != child_tag:
            raise errors.FormatError(path=source, reason=f"holds <{tag(node)}>, expected only <{child_tag}> children",
                                     code=codes.WRONG_ROOT)


def _refuse_oversize(data: bytes, source: str, limit: int) -> None:
    if len(data) > limit:
        raise errors.FormatError(path=source, reason=f"larger than the {limit}-byte limit ({len(data)} bytes)",
                                 code=codes.OVER_LIBVIRT_LIMIT)


def _parse_step(parser: etree.XMLPullParser, source: str,
                chunk: bytes | None) -> tuple[list[tuple[str, etree._Element]], etree._Element | None]:
    """Feed ``chunk`` (None: close) and return the events it completed, and
    the document's root once closed."""
    try:
        root = None
        if chunk is None:
            root = parser.close()
        else:
            parser.feed(chunk)
        # Only "start" and "end" were asked for: each is (event, element).
        return typing.cast(list[tuple[str, etree._Element]], list(parser.read_events())), root
    except etree.XMLSyntaxError as e:
        # The first logged error is the cause; the exception may only say
        # what followed it ("no element found").
        first = next(iter(e.error_log), None)  # stream() cleared the log first
        reason = f"{first.message}, line {first.line}, column {first.column}" if first else _first_line(e)
        raise errors.FormatError(path=source, reason=f"not well-formed XML: {reason}") from e


def _refuse_doctype(document: etree._ElementTree, source: str) -> None:
    if document.docinfo.doctype or document.docinfo.internalDTD is not None:
        raise errors.FormatError(path=source, reason="has a DOCTYPE (entities and DTDs are refused)")


def _refuse_entities(element: etree._Element, source: str) -> None:
    if next(element.iter(etree.Entity), None) is not None:  # lxml filters by node type in C
        raise errors.FormatError(path=source, reason="holds an entity reference (refused)")


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
