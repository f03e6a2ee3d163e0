"""Test harness: real libvirt (embedded qemu driver) in a private root directory.

Each Lab owns one root, ROOT/lib/qemu/snapshot holds libvirt's per-snapshot
files.  Every call runs tests/labworker.py in a fresh subprocess because a
process can open only one embedded root, once (DESIGN section 7).
"""

from __future__ import annotations

import atexit
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import labcheckpoints
from support import cli as support_cli
from support.cli import Result

WORKER = Path(__file__).with_name("labworker.py")
TIMEOUT_SECONDS = 120  # no pytest-timeout here: every subprocess is bounded instead


class LabError(Exception):
    """A labworker run failed; str() is libvirt's message when libvirt failed."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        op: int | None = None,
        results: list[Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code  # libvirt's VIR_ERR_* number
        self.op = op  # index of the failing op in the batch
        self.results = results or []  # results of the ops before it


@dataclass
class View:
    """What libvirt reports through the API for one domain."""

    names: list[str]  # topological: parents before children
    parents: dict[str, str | None]
    current: str | None
    xml: dict[str, str]  # SECURE XML per snapshot


@dataclass
class CheckpointView:
    """libvirt's checkpoints of one domain (the API has no "current" for them)."""

    names: list[str]  # topological: parents before children
    parents: dict[str, str | None]
    leaves: list[str]
    xml: dict[str, str]  # SECURE XML per checkpoint


@dataclass
class Bulk:
    names: list[str]
    mode: str  # "real" (internal snapshots) or "redefine" (metadata only after the first)
    seconds: float


def invoke(root: Path, ops: list[dict[str, Any]], uri: str | None = None) -> list[Any]:
    """Run one labworker subprocess on root (or on uri, root holding only disk
    images); return its results or raise LabError."""
    try:
        proc = subprocess.run(
            [sys.executable, str(WORKER), str(root), *([uri] if uri else [])],
            input=json.dumps(ops),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"labworker on {root} timed out after {TIMEOUT_SECONDS} s") from None
    if proc.returncode == 0:
        return json.loads(proc.stdout)
    if proc.returncode == 3:
        *done, last = json.loads(proc.stdout)
        error = last["error"]
        raise LabError(error["message"], code=error["code"], op=error["op"], results=done)
    raise LabError(f"labworker exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")


# The first x86_64 capability probe of a root takes ~4 s; a copy of a warm
# cache/qemu makes a fresh root start in ~0.15 s.  One template per process,
# i.e. per pytest session.
_template_cache: Path | None = None


def warm_cache() -> Path:
    global _template_cache
    if _template_cache is None:
        root = Path(tempfile.mkdtemp(prefix="snapstore-lab-template-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        invoke(root, [{"op": "probe"}])
        _template_cache = root / "cache" / "qemu"
    return _template_cache


class Lab:
    """One libvirt "host": an embedded root, or with system_uri a running
    libvirtd (e.g. qemu:///system; root then holds only disk images)."""

    def __init__(self, root: Path, *, warm: bool = True, system_uri: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.system_uri = system_uri
        self._needs_cache = warm and system_uri is None

    @property
    def uri(self) -> str:
        """What `snapstore --connect` takes to reach this host."""
        return self.system_uri or f"qemu:///embed?root={self.root}"

    @property
    def snapshot_dir(self) -> Path:
        return self.root / "lib" / "qemu" / "snapshot"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "lib" / "qemu" / "checkpoint"

    def run(self, ops: list[dict[str, Any]]) -> list[Any]:
        if self._needs_cache:
            self._seed_cache()
        return invoke(self.root, ops, self.system_uri)

    def _seed_cache(self) -> None:
        target = self.root / "cache" / "qemu"
        if not target.exists():
            shutil.copytree(warm_cache(), target)
        self._needs_cache = False

    def _one(self, op: str, **args: Any) -> Any:
        return self.run([{"op": op, **args}])[0]

    # --- thin wrappers, one subprocess each --------------------------------

    def define(self, domain: str, uuid: str | None = None, disk: bool = True) -> str:
        return self._one("define", domain=domain, uuid=uuid, disk=disk)

    def snapshot(self, domain: str, name: str, description: str | None = None) -> None:
        self._one("snapshot", domain=domain, name=name, description=description)

    def snapshots(self, domain: str, names: Iterable[str]) -> None:
        self.run([{"op": "snapshot", "domain": domain, "name": n} for n in names])

    def revert(self, domain: str, name: str) -> None:
        self._one("revert", domain=domain, name=name)

    def delete(
        self, domain: str, name: str, children: bool = False, metadata_only: bool = False
    ) -> None:
        self._one(
            "delete", domain=domain, name=name, children=children, metadata_only=metadata_only
        )

    def redefine(self, domain: str, xml: str, current: bool = False) -> None:
        self._one("redefine", domain=domain, xml=xml, current=current)

    def view(self, domain: str) -> View:
        return View(**self._one("view", domain=domain))

    def undefine(self, domain: str, metadata_only_snapshots: bool = True) -> None:
        self._one("undefine", domain=domain, metadata_only_snapshots=metadata_only_snapshots)

    def domain_xml(self, domain: str) -> str:
        return self._one("domain_xml", domain=domain)

    def define_xml(self, xml: str) -> str:
        return self._one("define_xml", xml=xml)

    def bulk_snapshots(
        self,
        domain: str,
        prefix: str,
        count: int,
        branch_every: int | None = None,
        mode: str = "real",
    ) -> Bulk:
        """Snapshots prefix0..prefix{count-1}: a chain where every branch_every-th
        one forks off the start of the previous segment.  mode "real" makes
        internal snapshots (300 in ~14 s); "redefine" makes the first for real
        and REDEFINEs the rest from its XML (300 in ~0.7 s, image holds only one)."""
        result = self._one(
            "bulk_snapshots",
            domain=domain,
            prefix=prefix,
            count=count,
            branch_every=branch_every,
            mode=mode,
        )
        return Bulk(**result)

    # --- checkpoints: of a running domain only (tests/labcheckpoints.py) ---------

    def start(self, domain: str) -> None:
        self._one("start", domain=domain)

    def destroy(self, domain: str) -> None:
        self._one("destroy", domain=domain)

    def checkpoint(self, domain: str, name: str, description: str | None = None) -> None:
        self._one("checkpoint", domain=domain, name=name, description=description)

    def checkpoint_delete(self, domain: str, name: str, metadata_only: bool = False) -> None:
        self._one("checkpoint_delete", domain=domain, name=name, metadata_only=metadata_only)

    def checkpoint_redefine(self, domain: str, xml: str) -> None:
        self._one("checkpoint_redefine", domain=domain, xml=xml)

    def checkpoint_view(self, domain: str) -> CheckpointView:
        return CheckpointView(**self._one("checkpoint_view", domain=domain))

    def stop_all(self) -> None:
        """Kill every qemu this root started: the embedded driver never does."""
        labcheckpoints.stop_all(self.root)


def snapstore(*args: str, stdin: str | None = None) -> Result:
    """The snapstore command line in a fresh process, as an operator runs it:
    libvirt lets a process open one embedded root, once, so tests that reach
    an embedded root through snapstore cannot call cli.main() in-process."""
    return support_cli.console(args, timeout=TIMEOUT_SECONDS, stdin=stdin)
