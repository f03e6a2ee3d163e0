"""The consolidated document: every moment of one domain and kind in one file.

    <snapshots current='s3' domain='vm1' format='1'> <domainsnapshot>…
    <checkpoints domain='vm1' format='1'> <domaincheckpoint>…

Children are in topological canonical order, so the same tree always gives
the same bytes and an unchanged state is never rewritten.
"""
from __future__ import annotations

from lxml import etree

from snapstore import codes, errors, kinds, limits, model
from snapstore.formats import mapping, xmlsafe

FORMAT_VERSION = "1"
DEFAULT_LIMIT = limits.STORE_FILE
_DECLARATION = b"<?xml version='1.0' encoding='UTF-8'?>\n"


def parse_consolidated(data: bytes, kind: kinds.Kind, source: str,
                       limit: int = DEFAULT_LIMIT) -> model.Tree:
    """The tree in ``data``, read one moment at a time (see xmlsafe.stream)."""
    elements = xmlsafe.stream(data, source, limit, kind.plural, kind.root_tag)
    root = next(elements)
    version = root.get("format")
    if version != FORMAT_VERSION:
        raise errors.FormatError(path=source, reason=f"format {version!r} is not supported "
                                                    f"(this snapstore reads {FORMAT_VERSION!r})")
    domain, current = root.get("domain"), root.get("current")
    if not domain:
        raise errors.FormatError(path=source, reason="root element has no domain attribute")
    moments = [_moment(child, kind, source) for child in elements]
    return model.Tree(kind, domain, moments, current)


def domain_attribute(data: bytes, kind: kinds.Kind, limit: int = DEFAULT_LIMIT) -> str | None:
    """The root's ``domain`` attribute, read without building the moments."""
    try:
        return next(xmlsafe.stream(data, "", limit, kind.plural, kind.root_tag)).get("domain")
    except errors.FormatError:
        return None


def format_consolidated(tree: model.Tree) -> bytes:
    """Serialize a validated tree; the caller has checked tree.validate()."""
    attributes = {"current": tree.current} if tree.current and tree.kind.stores_current else {}
    attributes.update(domain=tree.domain, format=FORMAT_VERSION)
    start = etree.tostring(etree.Element(tree.kind.plural, attributes), encoding="UTF-8")
    if not tree.moments:
        return _DECLARATION + start + b"\n"
    parts = [_DECLARATION, start[:-2], b">\n"]
    for moment in tree.topological():  # each child as libvirt writes it, not indented further
        parts += [moment.body, b"\n"]
    parts.append(f"</{tree.kind.plural}>\n".encode())
    return b"".join(parts)


def _moment(child: etree._Element, kind: kinds.Kind, source: str) -> model.Moment:
    if child.find("active") is not None and kind.stores_current:
        raise errors.FormatError(path=source, reason=f"{kind.name} {child.findtext('name')!r} holds an <active> "
                                                    "marker; the current one is named by the root's current attribute",
                                 code=codes.BAD_INTERNAL_ELEMENT)
    return mapping.moment(child, source)
