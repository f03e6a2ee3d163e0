"""Checkpoints against the persistent dirty bitmaps of their qcow2 images.

A checkpoint's data is in its disks: each disk it covers holds a persistent
dirty bitmap, and an incremental backup reads it. The checkpoint's
``<disks><disk name='vda' checkpoint='bitmap' bitmap='NAME'/>`` says which
disks and which bitmap; as libvirt 9.0 aligns them
(virDomainCheckpointAlignDisks, tests/integration/test_bitmaps.py pins it), a
listed disk takes ``checkpoint=`` (default ``bitmap``) and ``bitmap=``
(default the checkpoint's name); a disk not listed is covered only when none
is listed (``<disks>`` absent), and then not when it is empty or read-only.
The image is the one the checkpoint's own ``<domain>`` names; only a local
qcow2 disk can be inspected. An image is asked through disks.Images: the same
safe opening, and one ``qemu-img info`` per image for both the snapshot and
the bitmap checks (``format-specific.data.bitmaps``: name, granularity, flags
``auto`` and ``in-use``).

What an image shows, as qemu 7.2 keeps its bitmaps:

- a bitmap a running qemu makes reaches the image only when qemu closes it
  (a shutdown); a qemu that dies (SIGKILL) loses it. So on a running domain
  only the bitmaps of checkpoints older than its qemu are on disk yet;
- opening an image read-write flags its bitmaps ``in-use`` in the image, and
  closing it clears the flag: a running domain's bitmaps are in use. One still
  in use while no qemu has the image open was not saved: qemu loads it as
  inconsistent, refuses to use it (and any incremental backup from it), and
  never saves it again, so it stays ``in-use`` through later clean shutdowns
  until it is removed. The image format has no other "inconsistent" mark:
  qemu-img names only ``in-use`` and ``auto``; whether a running qemu loaded a
  bitmap as inconsistent only that qemu knows (QMP), and check does not ask.

Whether a domain runs, libvirt's status file tells: ``<run dir>/<domain>.xml``
(the system driver's run dir is /run/libvirt/qemu; an embedded root's is
ROOT/run/qemu), written at start and removed when libvirt sees the domain
stop. Its ``<domstatus pid=…>`` must be a live qemu started for this domain
(``-name guest=DOMAIN`` on its command line; a reused pid is not). A status
file whose qemu is gone means qemu died while libvirt was not watching: the
embedded driver (no daemon) or a stopped libvirtd. No status file: shut off.
A status file that cannot be read leaves the domain's state unknown, and with
it the checks that depend on it (a note says so).
"""
from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from lxml import etree

from snapstore import codes, errors, fsio, kinds, model, naming
from snapstore.check import disks, findings
from snapstore.formats import mapping, xmlsafe

RUN_DIR = Path("/run/libvirt/qemu")  # the system driver's status files
_XML_LIMIT = 16 * 1024 * 1024
# creationTime and /proc's boot time are whole seconds: a checkpoint this close
# to its qemu's start may have been made by that qemu, so it is not expected on disk.
_START_MARGIN = 2
_IN_USE = "in-use"


@dataclasses.dataclass(frozen=True)
class Need:
    """A bitmap one checkpoint needs in an image."""

    checkpoint: str
    disk: str
    created: int | None


@dataclasses.dataclass(frozen=True)
class State:
    """Whether a domain runs, from libvirt's status file and /proc."""

    running: bool | None  # None: cannot tell
    status: Path | None = None  # libvirt's status file, when there is one
    pid: int | None = None
    started: float | None = None  # when its qemu started, when known (running only)
    live: etree._Element | None = None  # the running <domain>
    why: str = ""  # why it cannot tell


def check_bitmaps(report: findings.Report, domain: str, tree: model.Tree, stored: model.Tree | None,
                  images: disks.Images, run_dir: Path | None, definitions: Path | None) -> None:
    """``tree``: the checkpoints checked (libvirt's folder, or the store without one); ``stored``:
    the store's too, whose bitmaps are not strays (a checkpoint only in the store is SS304)."""
    needed = _needed(tree)
    named = {bitmap for by_bitmap in needed.values() for bitmap in by_bitmap}
    if stored is not None and stored is not tree:
        named.update(bitmap for by_bitmap in _needed(stored, tree).values() for bitmap in by_bitmap)
    state = domain_state(run_dir, domain)
    if state.running is None:
        report.note(f"cannot tell whether domain {domain} runs ({state.why}): its bitmaps in use and those "
                    "of its checkpoints were not checked")
    in_use: list[tuple[str, str]] = []
    for image in sorted(set(needed) | _current_images(state, definitions, domain)):
        info = images.info(image)
        if isinstance(info, str):
            if image in needed:  # a disk only the definition names is looked at if it can be
                disks.report_unreadable(report, domain, kinds.CHECKPOINT, image, info)
            continue
        held = _bitmaps(info)
        _lacking(report, domain, image, needed.get(image, {}), held, state)
        for bitmap in sorted(set(held) - named):
            report.add(codes.IMAGE_ORPHAN_BITMAP, f"{image} holds bitmap {bitmap!r} that no checkpoint names",
                       domain, kinds.CHECKPOINT, bitmap, image,
                       "if its checkpoint's metadata was lost, define it again (snapstore restore --checkpoints, "
                       f"or snapstore history/undo {domain} --checkpoints); else, with the domain shut off, "
                       f"remove it: 'qemu-img bitmap --remove {image} {bitmap}'")
        in_use += [(image, bitmap) for bitmap in sorted(held) if _IN_USE in held[bitmap]]
    if in_use and state.running is False:
        _in_use(report, domain, in_use, needed, run_dir)


def _lacking(report: findings.Report, domain: str, image: str, needs: dict[str, list[Need]],
             held: dict[str, list[str]], state: State) -> None:
    for bitmap in sorted(set(needs) - set(held)):
        for need in needs[bitmap]:
            if _on_disk_by_now(need, state):
                report.add(codes.IMAGE_LACKS_BITMAP, f"checkpoint {need.checkpoint!r} covers disk {need.disk}, "
                           f"but {image} has no bitmap {bitmap!r}", domain, kinds.CHECKPOINT, need.checkpoint,
                           image, f"the backup chain is broken for {need.disk}: delete the checkpoint's metadata "
                           f"('virsh checkpoint-delete {domain} {need.checkpoint} --metadata') and take a new "
                           "full backup")


def _on_disk_by_now(need: Need, state: State) -> bool:
    """A shut-off domain's qemu saved every bitmap; a running one's only those it loaded at its start."""
    if state.running is False:
        return True
    if state.running is None or state.started is None or need.created is None:
        return False
    return need.created < state.started - _START_MARGIN


def _in_use(report: findings.Report, domain: str, in_use: list[tuple[str, str]],
            needed: dict[str, dict[str, list[Need]]], run_dir: Path | None) -> None:
    """In use while no qemu runs: asked again, in case the domain started (or libvirt saw it stop) meanwhile."""
    state = domain_state(run_dir, domain)
    if state.running is not False:
        return
    if run_dir is not None and not run_dir.is_dir():
        report.note(f"libvirt's run folder {run_dir} does not exist: domains are taken as shut off "
                    "(check --run-dir names another)")
    for image, bitmap in in_use:
        owners = sorted({need.checkpoint for need in needed.get(image, {}).get(bitmap, [])})
        forget = "".join(f", then 'virsh checkpoint-delete {domain} {owner} --metadata'" for owner in owners)
        remove = f"with the domain shut off, 'qemu-img bitmap --remove {image} {bitmap}'{forget}"
        moment = owners[0] if owners else bitmap
        if state.status is not None:
            report.add(codes.BITMAP_QEMU_DIED, f"bitmap {bitmap!r} of {image} is in use, but the qemu of libvirt's "
                       f"status file {state.status} (pid {state.pid}) is gone: qemu died without closing the "
                       "image, the bitmap is not trustworthy", domain, kinds.CHECKPOINT, moment, image,
                       f"let libvirt see the domain stopped ('virsh domstate {domain}'), take a new full backup "
                       f"and remove the bitmap: {remove}")
        else:
            report.add(codes.BITMAP_INCONSISTENT, f"bitmap {bitmap!r} of {image} is inconsistent: in use while "
                       "the domain is shut off (its qemu did not save it), so qemu refuses it",
                       domain, kinds.CHECKPOINT, moment, image, f"take a new full backup; the bitmap must be "
                       f"removed: {remove}")


# --------------------------------------------------------------------------- which bitmaps, where

def _needed(tree: model.Tree, known: model.Tree | None = None) -> dict[str, dict[str, list[Need]]]:
    """Image -> bitmap -> the checkpoints that need it; a checkpoint ``known`` holds alike is skipped."""
    needed: dict[str, dict[str, list[Need]]] = defaultdict(lambda: defaultdict(list))
    for moment in tree.moments:
        same = known.by_name.get(moment.name) if known is not None else None
        # Only a qcow2 disk holds one (lxml writes attributes in double quotes): most need no parse.
        if (same is not None and same.body == moment.body) or b'type="qcow2"' not in moment.body:
            continue
        for disk, image, bitmap in covered(mapping.element(moment), moment.name):
            needed[image][bitmap].append(Need(moment.name, disk, moment.creation_time))
    return needed


def covered(checkpoint: etree._Element, name: str) -> list[tuple[str, str, str]]:
    """(disk, image, bitmap) for each local qcow2 disk that holds a bitmap of ``checkpoint``."""
    domain_disks = checkpoint.findall("domain/devices/disk")
    entries = disks.entries_by_disk(checkpoint, domain_disks)
    listing = checkpoint.find("disks/disk") is not None  # then a disk not listed is not covered
    found = []
    for index, disk in enumerate(domain_disks):
        entry = entries.get(index)
        if entry is None and (listing or disks.is_read_only(disk)):
            continue
        if entry is not None and entry.get("checkpoint", "bitmap") != "bitmap":
            continue
        image = disks.qcow2_path(disk)  # none: not local qcow2, or empty (libvirt covers no empty drive)
        if image is not None:
            bitmap = (entry.get("bitmap") if entry is not None else None) or name
            found.append((disks.target(disk) or image, image, bitmap))
    return found


def _current_images(state: State, definitions: Path | None, domain: str) -> set[str]:
    """The images the domain uses now (running: libvirt's live definition), for stray bitmaps."""
    definition = state.live if state.live is not None else read_domain_xml(definitions, domain)
    if definition is None:
        return set()
    return {image for disk in definition.iterfind("devices/disk") if (image := disks.qcow2_path(disk)) is not None}


def _bitmaps(info: dict[str, Any]) -> dict[str, list[str]]:
    """Bitmap name -> its flags, from qemu-img's description of a qcow2 image."""
    specific = info.get("format-specific")
    data = specific.get("data") if isinstance(specific, dict) else None
    listed = data.get("bitmaps") if isinstance(data, dict) else None
    return {entry["name"]: [flag for flag in entry.get("flags", []) if isinstance(flag, str)]
            for entry in (listed if isinstance(listed, list) else [])
            if isinstance(entry, dict) and isinstance(entry.get("name"), str)}


# --------------------------------------------------------------------------- is it running?

def domain_state(run_dir: Path | None, domain: str) -> State:
    if run_dir is None or naming.domain_problem(domain):
        return State(False)
    status = run_dir / f"{domain}.xml"
    try:
        root = read_domain_xml(run_dir, domain, missing_ok=False)
    except errors.SnapstoreError as e:
        return State(None, status, why=str(e))
    if root is None:
        return State(False)
    pid = (root.get("pid") or "").strip()
    if not pid.isdigit():
        return State(None, status, why=f"{status} names no pid")
    alive = _qemu_of(int(pid), domain)
    if alive is None:
        return State(None, status, int(pid), why=f"pid {pid} of {status} cannot be inspected")
    if not alive:
        return State(False, status, int(pid))
    return State(True, status, int(pid), _started(int(pid)), root.find("domain"))


def read_domain_xml(folder: Path | None, domain: str, missing_ok: bool = True) -> etree._Element | None:
    """``folder``/<domain>.xml parsed; None when it or the folder is missing (or, with
    ``missing_ok``, cannot be read); otherwise SnapstoreError."""
    if folder is None:
        return None
    path = folder / f"{domain}.xml"
    try:
        with fsio.opened_dir_if_present(folder) as dir_fd:
            if dir_fd is None:
                return None
            data = fsio.read_regular(dir_fd, path.name, _XML_LIMIT, path)
        return xmlsafe.parse_bytes(data, str(path), _XML_LIMIT)
    except errors.SnapstoreError as e:
        if missing_ok or isinstance(e.__cause__, FileNotFoundError):
            return None
        raise


def _qemu_of(pid: int, domain: str) -> bool | None:
    """Whether ``pid`` is a live qemu of ``domain`` (libvirt names it -name guest=NAME, commas doubled);
    None when its command line cannot be read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            arguments = file.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return None
    guest = b"guest=" + domain.replace(",", ",,").encode()
    return any(argument == guest or argument.startswith(guest + b",") for argument in arguments)


def _started(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch (/proc: clock ticks after boot)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as file:
            boot = next(int(line.split()[1]) for line in file if line.startswith(b"btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None
