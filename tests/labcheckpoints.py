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
from pathlib import Path
from typing import Any, Callable

try:  # the worker side imports libvirt; the pytest side needs only the wrappers
    import libvirt
except ImportError:  # pragma: no cover
    libvirt = None

from lxml import etree
from lxml.builder import E

Op = dict[str, Any]


def op_start(conn: "libvirt.virConnect", root: Path, op: Op) -> None:
    dom = conn.lookupByName(op["domain"])
    if not dom.isActive():
        dom.create()


def op_destroy(conn: "libvirt.virConnect", root: Path, op: Op) -> None:
    dom = conn.lookupByName(op["domain"])
    if dom.isActive():
        dom.destroy()


def op_checkpoint(conn: "libvirt.virConnect", root: Path, op: Op) -> None:
    definition = E.domaincheckpoint(E.name(op["name"]))
    if op.get("description") is not None:
        definition.append(E.description(op["description"]))
    conn.lookupByName(op["domain"]).checkpointCreateXML(etree.tostring(definition, encoding="unicode"), 0)


def op_checkpoint_delete(conn: "libvirt.virConnect", root: Path, op: Op) -> None:
    flags = libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY if op.get("metadata_only") else 0
    conn.lookupByName(op["domain"]).checkpointLookupByName(op["name"]).delete(flags)


def op_checkpoint_redefine(conn: "libvirt.virConnect", root: Path, op: Op) -> None:
    conn.lookupByName(op["domain"]).checkpointCreateXML(op["xml"], libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE)


def op_checkpoint_view(conn: "libvirt.virConnect", root: Path, op: Op) -> dict[str, Any]:
    dom = conn.lookupByName(op["domain"])
    found = dom.listAllCheckpoints(libvirt.VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL)
    xml = {c.getName(): c.getXMLDesc(libvirt.VIR_DOMAIN_CHECKPOINT_XML_SECURE) for c in found}
    leaves = [c.getName() for c in dom.listAllCheckpoints(libvirt.VIR_DOMAIN_CHECKPOINT_LIST_LEAVES)]
    return {"names": [c.getName() for c in found],
            "parents": {name: etree.fromstring(text.encode()).findtext("parent/name") for name, text in xml.items()},
            "leaves": leaves, "xml": xml}


def op_sleep(conn: "libvirt.virConnect", root: Path, op: Op) -> None:
    time.sleep(op["seconds"])


OPS: dict[str, Callable[[Any, Path, Op], Any]] = {
    "sleep": op_sleep,
    "start": op_start,
    "destroy": op_destroy,
    "checkpoint": op_checkpoint,
    "checkpoint_delete": op_checkpoint_delete,
    "checkpoint_redefine": op_checkpoint_redefine,
    "checkpoint_view": op_checkpoint_view,
}


def stop_all(root: Path) -> None:
    """Kill every qemu the embedded driver started in ``root`` (it never does)."""
    for pidfile in (root / "run" / "qemu").glob("*.pid"):
        try:
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError, OSError):
            pass
