"""The commands whose commit the fault and crash tests interrupt.

Generation 1 is on disk, generation 2 is being written: ``consolidate``
(legacy folder -> store file) and ``expand --prune`` (store -> a folder,
the replaced one copied to the attic first). ``observe`` reads what a
crash or a fault may have changed; it must equal ``old()`` or ``new()``.
"""
from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import campaign
from campaign import Sandbox

from snapstore import cli, store


@dataclasses.dataclass
class Scenario:
    """One command whose commit is faulted: generation 1 is on disk, 2 is being written."""

    name: str
    setup: Callable[[Sandbox], None]
    args: tuple[str, ...]
    observe: Callable[[Sandbox], Any]  # bytes of a file, or the files of a folder
    old: Callable[[], Any]
    new: Callable[[], Any]

    def argv(self, sandbox: Sandbox, config: Path | None = None) -> list[str]:
        """The command on ``sandbox``, with the settings in ``config`` (default: none)."""
        return sandbox.argv(*(str(sandbox.base / arg) if arg == "out" else arg for arg in self.args), config=config)


def _in_process(sandbox: Sandbox, *args: str) -> None:
    assert cli.main(["-q", *sandbox.argv(*args)]) == 0


def _consolidate_setup(sandbox: Sandbox) -> None:
    campaign.write_legacy(sandbox.libvirt / "vm1", campaign.generation_files(1))
    _in_process(sandbox, "consolidate", "vm1")
    campaign.write_legacy(sandbox.libvirt / "vm1", campaign.generation_files(2))


def _expand_setup(sandbox: Sandbox) -> None:
    state = store.Store(sandbox.state)
    state.prepare()
    state.replace(campaign.generation_tree(1))
    _in_process(sandbox, "expand", "vm1", "--into", str(sandbox.base / "out"))
    state.replace(campaign.generation_tree(2))


def store_bytes(sandbox: Sandbox) -> bytes | None:
    path = sandbox.store_file()
    return path.read_bytes() if path.exists() else None


def out_files(sandbox: Sandbox) -> dict[str, bytes]:
    folder = sandbox.base / "out" / "vm1"
    return {path.name: path.read_bytes() for path in folder.iterdir()} if folder.exists() else {}


SCENARIOS = {
    "consolidate": Scenario("consolidate", _consolidate_setup, ("consolidate", "vm1"), store_bytes,
                            lambda: campaign.generation_bytes(1), lambda: campaign.generation_bytes(2)),
    "expand": Scenario("expand", _expand_setup, ("expand", "vm1", "--into", "out", "--prune"), out_files,
                       lambda: campaign.expanded_files(1), lambda: campaign.expanded_files(2)),
}


def fresh(template: Path, target: Path) -> Sandbox:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(template, target, symlinks=True)
    return Sandbox(target)
