"""The floor of `snapstore consolidate` (issue 7): the least work that turns
libvirt's per-snapshot files into one file, with the libraries snapstore uses.

Usage: python floor.py OUT_DIR FOLDER...

For each domain FOLDER (libvirt's <root>/<domain>): read every *.xml, parse it
with lxml (the same hardening options as snapstore's parser), drop libvirt's
internal <active> marker (noting the current one), append the root to one
<snapshots> element, serialize, and write OUT_DIR/<domain>.xml once: temp
file, fsync, rename. No ordering, no validation, no comparison with an older
file. It prints {"seconds": in-process time, "snapshots": count} as JSON.

It deliberately imports nothing from snapstore, so the floor does not move
when snapstore's code does.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from lxml import etree

PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                         dtd_validation=False, huge_tree=False)


def consolidate(folder: Path, out: Path) -> int:
    root = etree.Element("snapshots", domain=folder.name, format="1")
    current = None
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".xml"):
            continue
        with open(folder / name, "rb") as file:
            snapshot = etree.fromstring(file.read(), PARSER)
        marker = snapshot.find("active")
        if marker is not None:
            if (marker.text or "").strip() == "1":
                current = snapshot.findtext("name")
            snapshot.remove(marker)
        root.append(snapshot)
    if current is not None:
        root.set("current", current)
    data = etree.tostring(root, encoding="UTF-8", xml_declaration=True)
    temp = out.with_name(out.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, out)
    return len(root)


def main(argv: list[str]) -> int:
    started = time.perf_counter()
    out_dir = Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    count = sum(consolidate(Path(folder), out_dir / (Path(folder).name + ".xml")) for folder in argv[2:])
    json.dump({"seconds": time.perf_counter() - started, "snapshots": count}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
