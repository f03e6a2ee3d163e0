"""Elements <-> model.Moment: the few fields the tree needs, read from a
``<domainsnapshot>``/``<domaincheckpoint>`` element as libvirt reads them,
and the element again from a moment's bytes (the model knows no XML, as
virt-manager's virtinst keeps its XPath mapping in the XML layer)."""
from __future__ import annotations

from lxml import etree

from snapstore import model
from snapstore.formats import xmlsafe

_UUIDS = ("domain/uuid", "inactiveDomain/uuid")


def moment(element: etree._Element, source: str = "") -> model.Moment:
    """The moment an element holds; each field is libvirt's string() of its
    first match (every text below it, comments left out)."""
    found = (xmlsafe.string(element, path) for path in _UUIDS)
    return model.Moment(
        name=xmlsafe.string(element, "name") or "",
        parent=xmlsafe.string(element, "parent/name"),
        creation_time=_int_or_none(xmlsafe.string(element, "creationTime")),
        body=xmlsafe.serialize(element),
        state=xmlsafe.string(element, "state"),
        uuids=tuple(uuid.strip().lower() for uuid in found if uuid is not None),
        source=source,
    )


def element(of: model.Moment) -> etree._Element:
    """A fresh parse of a moment's bytes: changing it changes nothing there."""
    return xmlsafe.reparse(of.body)


def same_content(first: model.Moment, second: model.Moment) -> bool:
    """C14N equality, with the byte comparison first (both are serialized
    the same way, so equal content almost always gives equal bytes)."""
    if first.body == second.body:
        return True
    return xmlsafe.canonical(element(first)) == xmlsafe.canonical(element(second))


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
