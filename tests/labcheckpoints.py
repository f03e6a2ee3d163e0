"""Checkpoint operations for tests/labworker.py, and their Lab wrappers.

libvirt makes checkpoints only of a running domain, so these ops start the
lab's domain under QEMU's software emulation (64 MiB, no OS: it only has to
run). The embedded driver never stops a domain by itself: `stop_all` kills
what a test left running, by the pid files under ROOT/run/qemu.
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:  # the worker side imports libvirt; the pytest side needs only the wrappers
    import libvirt
except ImportError:  # pragma: no cover
    libvirt = None

from lxml import etree
from lxml.builder import E

Op = dict[str, Any]


def op_start(conn: libvirt.virConnect, root: Path, op: Op) -> None:
    dom = conn.lookupByName(op["domain"])
    if not dom.isActive():
        dom.create()


def op_destroy(conn: libvirt.virConnect, root: Path, op: Op) -> None:
    dom = conn.lookupByName(op["domain"])
    if dom.isActive():
        dom.destroy()


def op_wait_inactive(conn: libvirt.virConnect, root: Path, op: Op) -> None:
    """Until libvirt takes the domain as shut off: reconnecting to a qemu that died runs in a thread
    of the driver's open, and a start before it ends is skipped (the domain still looks active)."""
    dom = conn.lookupByName(op["domain"])
    deadline = time.monotonic() + op.get("timeout", 30.0)
    while dom.isActive():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{op['domain']} still active")
        time.sleep(0.01)


def op_checkpoint(conn: libvirt.virConnect, root: Path, op: Op) -> None:
    definition = E.domaincheckpoint(E.name(op["name"]))
    if op.get("description") is not None:
        definition.append(E.description(op["description"]))
    conn.lookupByName(op["domain"]).checkpointCreateXML(etree.tostring(definition, encoding="unicode"), 0)


def op_checkpoint_xml(conn: libvirt.virConnect, root: Path, op: Op) -> None:
    """A checkpoint from the test's own <domaincheckpoint> (e.g. a <disks> list)."""
    conn.lookupByName(op["domain"]).checkpointCreateXML(op["xml"], 0)


def op_checkpoint_delete(conn: libvirt.virConnect, root: Path, op: Op) -> None:
    flags = libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY if op.get("metadata_only") else 0
    conn.lookupByName(op["domain"]).checkpointLookupByName(op["name"]).delete(flags)


def op_checkpoint_redefine(conn: libvirt.virConnect, root: Path, op: Op) -> None:
    conn.lookupByName(op["domain"]).checkpointCreateXML(op["xml"], libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE)


def op_checkpoint_view(conn: libvirt.virConnect, root: Path, op: Op) -> dict[str, Any]:
    dom = conn.lookupByName(op["domain"])
    found = dom.listAllCheckpoints(libvirt.VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL)
    xml = {c.getName(): c.getXMLDesc(libvirt.VIR_DOMAIN_CHECKPOINT_XML_SECURE) for c in found}
    leaves = [c.getName() for c in dom.listAllCheckpoints(libvirt.VIR_DOMAIN_CHECKPOINT_LIST_LEAVES)]
    return {"names": [c.getName() for c in found],
            "parents": {name: etree.fromstring(text.encode()).findtext("parent/name") for name, text in xml.items()},
            "leaves": leaves, "xml": xml}


def op_sleep(conn: libvirt.virConnect, root: Path, op: Op) -> None:
    time.sleep(op["seconds"])


def op_checkpoint_variant(conn: libvirt.virConnect, root: Path, op: Op) -> None:
    """REDEFINE a variant of checkpoint ``source`` (libvirt's own SECURE XML of it):
    another "name", "parent" (None: a root), domain "uuid", or "no_domain" (drop
    <domain>); "delete_first" removes the target's metadata first (metadata only)."""
    dom = conn.lookupByName(op["domain"])
    element = etree.fromstring(dom.checkpointLookupByName(op["source"]).getXMLDesc(
        libvirt.VIR_DOMAIN_CHECKPOINT_XML_SECURE).encode())
    name = op.get("name", op["source"])
    element.find("name").text = name
    if "parent" in op:
        _set_parent(element, op["parent"])
    if op.get("uuid"):
        element.find("domain/uuid").text = op["uuid"]
    if op.get("no_domain"):
        element.remove(element.find("domain"))
    if op.get("delete_first"):
        dom.checkpointLookupByName(name).delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
    dom.checkpointCreateXML(etree.tostring(element, encoding="unicode"),
                            libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE)


def _set_parent(element: etree._Element, parent: str | None) -> None:
    old = element.find("parent")
    if old is not None:
        element.remove(old)
    if parent is not None:
        element.find("name").addnext(E.parent(E.name(parent)))


def op_attempt(conn: libvirt.virConnect, root: Path, op: Op) -> dict[str, Any]:
    """Run op["try"] (a checkpoint op) and answer libvirt's error instead of ending the batch."""
    inner = op["try"]
    try:
        return {"result": OPS[inner["op"]](conn, root, inner), "error": None}
    except libvirt.libvirtError as e:
        return {"result": None, "error": {"code": e.get_error_code(), "message": str(e)}}


OPS: dict[str, Callable[[Any, Path, Op], Any]] = {
    "sleep": op_sleep,
    "attempt": op_attempt,
    "checkpoint_variant": op_checkpoint_variant,
    "start": op_start,
    "wait_inactive": op_wait_inactive,
    "destroy": op_destroy,
    "checkpoint": op_checkpoint,
    "checkpoint_xml": op_checkpoint_xml,
    "checkpoint_delete": op_checkpoint_delete,
    "checkpoint_redefine": op_checkpoint_redefine,
    "checkpoint_view": op_checkpoint_view,
}


def saved(domain: str, names: list[str]) -> list[Op]:
    """Ops: start ``domain``, make checkpoints ``names``, shut it down (qemu writes their bitmaps
    into the image only when it closes it)."""
    return [{"op": "start", "domain": domain}, *({"op": "checkpoint", "domain": domain, "name": name} for name in names),
            {"op": "destroy", "domain": domain}]


def kill(root: Path, domain: str, timeout: float = 10.0) -> int:
    """SIGKILL ``domain``'s qemu, as a crash would (its pid file under ROOT/run/qemu; libvirt's status
    file stays, the embedded driver has no daemon to notice); its pid, once it is gone."""
    pid = int((root / "run" / "qemu" / f"{domain}.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"qemu {pid} of {domain} outlived SIGKILL")
        time.sleep(0.01)
    return pid


def _alive(pid: int) -> bool:
    """Not gone and not a zombie (nothing of qemu is left in one)."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def stop_all(root: Path) -> None:
    """Kill every qemu the embedded driver started in ``root`` (it never does)."""
    for pidfile in (root / "run" / "qemu").glob("*.pid"):
        try:
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError, OSError):
            pass
