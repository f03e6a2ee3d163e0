"""The main job on a throw-away libvirt: a demo domain with a branching tree,
consolidated, listed as a tree, and checked against libvirt's own view.

libvirt here is the real qemu driver, embedded (qemu:///embed?root=DIR),
driven through tests/lab.py so nothing touches the host's libvirt.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from lab import Lab  # noqa: E402
from lxml import etree  # noqa: E402

from snapstore import cli, kinds, store  # noqa: E402
from snapstore.formats import mapping, xmlsafe  # noqa: E402


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="snapstore-demo-"))
    lab, state = Lab(work / "libvirt"), work / "state"
    print(f"demo: throw-away libvirt root {lab.root}")
    build_tree(lab)
    options = ["--libvirt-dir", str(lab.snapshot_dir), "--state-dir", str(state)]
    for command in (["consolidate", "demo"], ["list", "demo", "--tree"], ["list", "demo"]):
        print(f"\n$ snapstore {' '.join(command)}")
        if cli.main(options + command):
            return 1
    print("\ncheck: consolidated file against libvirt's API view ...", end=" ")
    problems = compare(lab, store.Store(state))
    print("OK" if not problems else "FAILED")
    for problem in problems:
        print(f"  {problem}")
    return 1 if problems else 0


def build_tree(lab: Lab) -> None:
    """base -> installed -> {configured -> tuned (current), experiment}"""
    lab.define("demo")
    lab.run([
        {"op": "snapshot", "domain": "demo", "name": "base", "description": "fresh disk"},
        {"op": "snapshot", "domain": "demo", "name": "installed"},
        {"op": "snapshot", "domain": "demo", "name": "experiment", "description": "try & <see>"},
        {"op": "revert", "domain": "demo", "name": "installed"},
        {"op": "snapshot", "domain": "demo", "name": "configured"},
        {"op": "snapshot", "domain": "demo", "name": "tuned"},
    ])


def compare(lab: Lab, state: store.Store) -> list[str]:
    view, tree = lab.view("demo"), state.read_tree(kinds.SNAPSHOT, "demo")
    problems = []
    if tree.current != view.current:
        problems.append(f"current: store {tree.current!r}, libvirt {view.current!r}")
    for moment in tree.moments:
        api = etree.fromstring(view.xml.get(moment.name, "<missing/>").encode())
        if moment.parent != view.parents.get(moment.name, "?") or \
                xmlsafe.canonical(mapping.element(moment)) != xmlsafe.canonical(api):
            problems.append(f"snapshot {moment.name!r} differs from libvirt's")
    if sorted(tree.by_name) != sorted(view.names):
        problems.append("the names differ")
    return problems


if __name__ == "__main__":
    sys.exit(main())
