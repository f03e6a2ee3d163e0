"""Drive one embedded libvirt root (qemu:///embed?root=ROOT) from a JSON op list.

Usage: python labworker.py ROOT [URI]  < ops.json  > results.json

With URI (e.g. qemu:///system) the ops drive that libvirt instead of the
embedded root; ROOT then only holds the disk images of defined domains.

A process can open only one embedded root in its lifetime and a root can be
open in only one process at a time (DESIGN section 7), so tests run this script
as a subprocess per batch of operations.  stdout carries exactly one JSON list:
one result per op, and on a libvirtError a final {"error": {...}} entry
(exit code 3).  Any other failure is a traceback on stderr (exit code 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import labcheckpoints  # the script's own folder is on sys.path
import libvirt
from lxml import etree
from lxml.builder import E

QEMU_CONF = 'user = "root"\ngroup = "root"\nstdio_handler = "file"\n'
EXIT_LIBVIRT_ERROR = 3

Op = dict[str, Any]


def prepare_root(root: Path) -> None:
    """Write qemu.conf: root/root avoids a slow probe, "file" avoids virtlogd."""
    conf = root / "etc" / "qemu.conf"
    if not conf.exists():
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(QEMU_CONF)


def start_event_loop() -> None:
    """The embedded driver needs a running event loop before open()."""
    # Errors are reported in the JSON answer; the default handler would also
    # print each one to stderr.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    libvirt.virEventRegisterDefaultImpl()

    def loop() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=loop, name="libvirt-events", daemon=True).start()


def xml_text(node: etree._Element) -> str:
    return etree.tostring(node, encoding="unicode")


# --- domains -------------------------------------------------------------------


def domain_definition(name: str, uuid: str | None, image: Path | None) -> str:
    devices = E.devices()
    if image is not None:
        devices.append(
            E.disk(
                E.driver(name="qemu", type="qcow2"),
                E.source(file=str(image)),
                E.target(dev="vda", bus="virtio"),
                type="file",
                device="disk",
            )
        )
    dom = E.domain(
        E.name(name),
        E.memory("64", unit="MiB"),
        E.os(E.type("hvm", arch="x86_64")),
        devices,
        type="qemu",
    )
    if uuid is not None:
        dom.insert(1, E.uuid(uuid))
    return xml_text(dom)


def create_image(root: Path, domain: str) -> Path:
    image = root / "images" / f"{domain}.qcow2"
    image.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return image


def op_define(conn: libvirt.virConnect, root: Path, op: Op) -> str:
    image = create_image(root, op["domain"]) if op.get("disk", True) else None
    dom = conn.defineXML(domain_definition(op["domain"], op.get("uuid"), image))
    return dom.UUIDString()


def op_define_xml(conn: libvirt.virConnect, root: Path, op: Op) -> str:
    return conn.defineXML(op["xml"]).UUIDString()


def op_domain_xml(conn: libvirt.virConnect, root: Path, op: Op) -> str:
    dom = conn.lookupByName(op["domain"])
    return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)


def op_undefine(conn: libvirt.virConnect, root: Path, op: Op) -> None:
    flags = 0
    if op.get("metadata_only_snapshots", True):
        flags = (
            libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
        )
    conn.lookupByName(op["domain"]).undefineFlags(flags)


def op_probe(conn: libvirt.virConnect, root: Path, op: Op) -> None:
    """Fill ROOT/cache/qemu for qemu-system-x86_64 only (~4 s), the one binary
    the lab's domains use; getCapabilities() would probe every binary (~8 s)."""
    conn.getDomainCapabilities(None, "x86_64", None, "qemu")


# --- snapshots -----------------------------------------------------------------


def snapshot_definition(name: str, description: str | None) -> str:
    snap = E.domainsnapshot(E.name(name))
    if description is not None:
        snap.append(E.description(description))
    return xml_text(snap)


def op_snapshot(conn: libvirt.virConnect, root: Path, op: Op) -> None:
    dom = conn.lookupByName(op["domain"])
    # flags 0 on a shut-off domain: an internal snapshot made by qemu-img.
    dom.snapshotCreateXML(snapshot_definition(op["name"], op.get("description")), 0)


def op_revert(conn: libvirt.virConnect, root: Path, op: Op) -> None:
    dom = conn.lookupByName(op["domain"])
    dom.revertToSnapshot(dom.snapshotLookupByName(op["name"]), 0)


def op_delete(conn: libvirt.virConnect, root: Path, op: Op) -> None:
    dom = conn.lookupByName(op["domain"])
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY if op.get("metadata_only") else 0
    target = dom.snapshotLookupByName(op["name"])
    if op.get("children"):
        # Not DELETE_CHILDREN: with METADATA_ONLY it crashes libvirt 9.0 on
        # forked subtrees (DESIGN section 1).  Delete leaves first instead.
        for snap in descendants_leaves_first(dom, target):
            snap.delete(flags)
    target.delete(flags)


def descendants_leaves_first(
    dom: libvirt.virDomain, snap: libvirt.virDomainSnapshot
) -> list[libvirt.virDomainSnapshot]:
    descendants = snap.listAllChildren(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_DESCENDANTS)
    below = {s.getName() for s in descendants}
    ordered = dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)
    return [s for s in reversed(ordered) if s.getName() in below]


def op_redefine(conn: libvirt.virConnect, root: Path, op: Op) -> None:
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
    if op.get("current"):
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
    conn.lookupByName(op["domain"]).snapshotCreateXML(op["xml"], flags)


def parent_name(snapshot_xml: str) -> str | None:
    # Read the parent from the XML already fetched: getParent() costs a call
    # and raises for roots.
    return etree.fromstring(snapshot_xml.encode()).findtext("parent/name")


def op_view(conn: libvirt.virConnect, root: Path, op: Op) -> dict[str, Any]:
    dom = conn.lookupByName(op["domain"])
    snaps = dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)
    xml = {s.getName(): s.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE) for s in snaps}
    current = dom.snapshotCurrent().getName() if dom.hasCurrentSnapshot() else None
    return {
        "names": [s.getName() for s in snaps],
        "parents": {name: parent_name(text) for name, text in xml.items()},
        "current": current,
        "xml": xml,
    }


# --- bulk ----------------------------------------------------------------------


def bulk_parent(i: int, branch_every: int | None) -> int | None:
    """Chain i-1 -> i, except every branch_every-th snapshot forks off the
    start of the previous segment, so the tree has many forks but stays shallow."""
    if i == 0:
        return None
    if branch_every and i % branch_every == 0:
        return i - branch_every
    return i - 1


def bulk_real(dom: libvirt.virDomain, names: list[str], branch_every: int | None) -> None:
    current: int | None = None
    for i, name in enumerate(names):
        parent = bulk_parent(i, branch_every)
        if parent is not None and parent != current:
            # A new snapshot's parent is the current one: move current first.
            dom.revertToSnapshot(dom.snapshotLookupByName(names[parent]), 0)
        dom.snapshotCreateXML(snapshot_definition(name, None), 0)
        current = i


def bulk_redefine(dom: libvirt.virDomain, names: list[str], branch_every: int | None) -> None:
    """First snapshot for real, the rest redefined from libvirt's own XML of it
    (only metadata: the qcow2 image holds just the first one)."""
    dom.snapshotCreateXML(snapshot_definition(names[0], None), 0)
    first = dom.snapshotLookupByName(names[0])
    template = etree.fromstring(first.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE).encode())
    created = int(template.findtext("creationTime"))
    for i in range(1, len(names)):
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
        if i == len(names) - 1:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT  # as in real mode
        parent = names[bulk_parent(i, branch_every)]  # type: ignore[index]
        dom.snapshotCreateXML(renamed(template, names[i], parent, created + i), flags)


def renamed(template: etree._Element, name: str, parent: str, created: int) -> str:
    snap = etree.fromstring(etree.tostring(template))  # deep copy
    snap.find("name").text = name
    parent_el = snap.find("parent")
    if parent_el is None:
        parent_el = etree.Element("parent")
        snap.find("name").addnext(parent_el)
        etree.SubElement(parent_el, "name")
    parent_el.find("name").text = parent
    snap.find("creationTime").text = str(created)
    return xml_text(snap)


def op_bulk_snapshots(conn: libvirt.virConnect, root: Path, op: Op) -> dict[str, Any]:
    dom = conn.lookupByName(op["domain"])
    names = [f"{op['prefix']}{i}" for i in range(op["count"])]
    mode = op.get("mode", "real")
    started = time.monotonic()
    if names:
        {"real": bulk_real, "redefine": bulk_redefine}[mode](dom, names, op.get("branch_every"))
    return {"names": names, "mode": mode, "seconds": round(time.monotonic() - started, 3)}


def op_wait_path(conn: libvirt.virConnect, root: Path, op: Op) -> None:
    """A gate: the batch goes on once the test creates op["path"], so a test
    can act at a known point of a batch instead of racing it."""
    deadline = time.monotonic() + op.get("timeout", 60.0)
    while not os.path.exists(op["path"]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {op['path']} never opened")
        time.sleep(0.01)


OPS: dict[str, Callable[[libvirt.virConnect, Path, Op], Any]] = {
    "wait_path": op_wait_path,
    "define": op_define,
    "define_xml": op_define_xml,
    "domain_xml": op_domain_xml,
    "undefine": op_undefine,
    "probe": op_probe,
    "snapshot": op_snapshot,
    "revert": op_revert,
    "delete": op_delete,
    "redefine": op_redefine,
    "view": op_view,
    "bulk_snapshots": op_bulk_snapshots,
}
OPS.update(labcheckpoints.OPS)


def execute(conn: libvirt.virConnect, root: Path, ops: list[Op]) -> tuple[list[Any], int]:
    results: list[Any] = []
    for index, op in enumerate(ops):
        try:
            results.append(OPS[op["op"]](conn, root, op))
        except libvirt.libvirtError as e:
            error = {"op": index, "code": e.get_error_code(), "message": str(e)}
            results.append({"error": error})
            return results, EXIT_LIBVIRT_ERROR
    return results, 0


def main(argv: list[str]) -> int:
    root = Path(argv[1]).resolve()
    uri = argv[2] if len(argv) > 2 else f"qemu:///embed?root={root}"
    ops = json.load(sys.stdin)
    # Keep stdout for the JSON answer alone: anything else that writes to
    # fd 1 (libvirt, qemu-img) goes to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    prepare_root(root)
    start_event_loop()
    conn = libvirt.open(uri)
    try:
        results, status = execute(conn, root, ops)
    finally:
        conn.close()
    json.dump(results, out)
    out.close()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
