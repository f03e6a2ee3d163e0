"""The bare API loop of issue 7: move a domain's snapshot metadata from one
libvirt to another in one Python process, with nothing around it.

Usage: python apiloop.py SOURCE_URI TARGET_URI DOMAIN

listAllSnapshots(TOPOLOGICAL) on the source, then per snapshot getXMLDesc
(SECURE) and snapshotCreateXML(REDEFINE, plus CURRENT for the current one)
on the target. No comparison, no durable dump, no validation. Prints JSON:
{"snapshots", "seconds" (in-process), "redefine_seconds" (the target's
REDEFINE calls alone)}.
"""
from __future__ import annotations

import json
import sys
import threading
import time

import libvirt


def run_events() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def open_both(source: str, target: str) -> tuple[libvirt.virConnect, libvirt.virConnect]:
    # An embedded root needs a running event loop, and libvirt 9.0 opens no
    # other local URI in a process after an embedded root: open it last.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    libvirt.virEventRegisterDefaultImpl()
    threading.Thread(target=run_events, daemon=True).start()
    conns = {uri: libvirt.open(uri) for uri in sorted((source, target), key=lambda uri: "/embed" in uri)}
    return conns[source], conns[target]


def main(argv: list[str]) -> int:
    started = time.perf_counter()
    source, target = open_both(argv[1], argv[2])
    src = source.lookupByName(argv[3])
    dst = target.lookupByName(argv[3])
    current = src.snapshotCurrent().getName() if src.hasCurrentSnapshot() else None
    redefine = 0.0
    snapshots = src.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)
    for snapshot in snapshots:
        xml = snapshot.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
        if snapshot.getName() == current:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
        before = time.perf_counter()
        dst.snapshotCreateXML(xml, flags)
        redefine += time.perf_counter() - before
    json.dump({"snapshots": len(snapshots), "seconds": time.perf_counter() - started,
               "redefine_seconds": redefine}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
