"""Synthetic legacy files of libvirt's real shape, for tests without libvirt.

The shape (header comment, element order, nested <domain>, trailing
<active>) follows files written by libvirt 9.0's qemu driver.
"""
from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

UUID = "4f293fa2-6c6a-40c1-835c-76727585c2dc"
HEADER = ("<!--\nWARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE\n"
          "OVERWRITTEN AND LOST. Changes to this xml configuration should be made using:\n"
          "  virsh snapshot-edit\nor other application using the libvirt API.\n-->\n\n")


def snapshot_xml(name: str, parent: str | None = None, active: bool = False, created: int = 1700000000,
                 description: str | None = None, uuid: str = UUID, extra: str = "") -> bytes:
    parts = [HEADER, "<domainsnapshot>\n", f"  <name>{escape(name)}</name>\n"]
    if description is not None:
        parts.append(f"  <description>{escape(description)}</description>\n")
    parts.append("  <state>shutoff</state>\n")
    if parent is not None:
        parts.append(f"  <parent>\n    <name>{escape(parent)}</name>\n  </parent>\n")
    parts += [f"  <creationTime>{created}</creationTime>\n", "  <memory snapshot='no'/>\n",
              "  <disks>\n    <disk name='vda' snapshot='internal'/>\n  </disks>\n", extra,
              "  <domain type='qemu'>\n    <name>vm1</name>\n",
              f"    <uuid>{uuid}</uuid>\n    <memory unit='KiB'>65536</memory>\n  </domain>\n",
              f"  <active>{int(active)}</active>\n</domainsnapshot>\n"]
    return "".join(parts).encode()


def write_folder(folder: Path, specs: list[tuple[str, str | None]], current: str | None = None) -> Path:
    """A legacy folder from (name, parent) pairs, created one second apart."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, parent) in enumerate(specs):
        path = folder / f"{name}.xml"
        path.write_bytes(snapshot_xml(name, parent, name == current, 1700000000 + index))
        path.chmod(0o600)
    return folder
