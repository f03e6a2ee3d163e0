"""libvirt's RNG validation, each distinct embedded definition validated once."""
from __future__ import annotations

import samples
from lxml import etree

from snapstore import kinds
from snapstore.check import schema
from snapstore.formats import legacy, mapping


def element(name: str, extra: str = "", state: str = "shutoff") -> etree._Element:
    data = samples.snapshot_xml(name, extra=extra).replace(b"<state>shutoff</state>",
                                                           f"<state>{state}</state>".encode())
    return mapping.element(legacy.parse_legacy(data, kinds.SNAPSHOT, name).moment)


def test_shared_definition_is_validated_once_and_other_parts_every_time() -> None:
    validator = schema.validator("snapshot")
    assert validator.problem(element("a")) is None
    assert len(validator.valid_definitions) == 1
    assert validator.problem(element("b")) is None  # validated with the stub in place
    bad = element("c", state="bogus")
    assert validator.problem(bad) is not None
    assert bad.find("domain/uuid") is not None, "the real definition is put back"


def test_an_invalid_definition_is_reported_and_never_remembered() -> None:
    validator = schema.validator("snapshot")
    broken = element("a")
    etree.SubElement(broken.find("domain"), "bogus")
    assert validator.problem(broken) is not None
    assert validator.valid_definitions == set()
