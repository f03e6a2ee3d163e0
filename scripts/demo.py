"""The main job on a throw-away libvirt: a demo domain with a branching tree,
consolidated, listed as a tree, and checked against libvirt's own view.

libvirt here is the real qemu driver, embedded (qemu:///embed?root=DIR),
driven through tests/lab.py so nothing touches the host's libvirt.

    demo.py                      the commands in this process (the venv's snapstore)
    demo.py --program PATH       the commands run by PATH, e.g. the Debian package's
                                 /usr/bin/snapstore (scripts/demo --installed runs
                                 this with Debian's python3 and its snapstore)
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

try:
    import pytest  # noqa: F401  tests/support/cli.py (through lab) names it in type hints only
except ModuleNotFoundError:  # Debian's python3 for the installed package has no pytest
    sys.modules["pytest"] = types.ModuleType("pytest")

from lab import Lab  # noqa: E402
from lxml import etree  # noqa: E402

from snapstore import cli, kinds, store  # noqa: E402
from snapstore.formats import mapping, xmlsafe  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description="snapstore's main job on a throw-away embedded libvirt.")
    parser.add_argument("--program", metavar="PATH",
                        help="run the snapstore commands with this program (an installed snapstore)")
    program = parser.parse_args().program
    work = Path(tempfile.mkdtemp(prefix="snapstore-demo-"))
    lab, state = Lab(work / "libvirt"), work / "state"
    print(f"demo: throw-away libvirt root {lab.root}")
    if program:
        print(f"demo: snapstore commands run by {program}; this script reads the result with "
              f"{Path(cli.__file__).parent.parent} (python {sys.executable})")
    build_tree(lab)
    options = ["--libvirt-dir", str(lab.snapshot_dir), "--state-dir", str(state)]
    for command in (["consolidate", "demo"], ["list", "demo", "--tree"], ["list", "demo"]):
        print(f"\n$ snapstore {' '.join(command)}", flush=True)
        if program:
            code = subprocess.run([program, *options, *command], check=False).returncode
        else:
            code = cli.main(options + command)
        if code:
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
