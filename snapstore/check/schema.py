"""Validation against libvirt's installed RelaxNG schemas, when present."""
from __future__ import annotations

import functools
from pathlib import Path

from lxml import etree

from snapstore import kinds

SCHEMA_DIR = Path("/usr/share/libvirt/schemas")  # cli/check.py names it too, to stay light
_FILES = {kinds.SNAPSHOT.name: "domainsnapshot.rng", kinds.CHECKPOINT.name: "domaincheckpoint.rng"}


@functools.lru_cache(maxsize=None)
def validator(kind_name: str, schema_dir: Path = SCHEMA_DIR) -> etree.RelaxNG | None:
    """The compiled schema, or None when libvirt's schemas are not installed."""
    path = schema_dir / _FILES[kind_name]
    if not path.is_file():
        return None
    return etree.RelaxNG(etree.parse(str(path)))


def problem(element: etree._Element, schema: etree.RelaxNG) -> str | None:
    """Why ``element`` does not validate (first error, one line), or None."""
    if schema.validate(element):
        return None
    error = schema.error_log.last_error
    return f"line {error.line}: {error.message}" if error else "does not validate"
