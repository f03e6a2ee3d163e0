"""Internal snapshots against the qcow2 images that must hold them.

Which disks hold a snapshot internally follows libvirt 9.0's rules for a
redefined snapshot (virDomainSnapshotRedefinePrep and
virDomainSnapshotAlignDisks, src/conf/snapshot_conf.c), so a file without
``<disks>`` (the shape of libvirt's own full_domain.xml) is checked too:

- the default location is external for a disk-only snapshot (state
  ``disk-snapshot``), external memory, or any external ``<disks>`` entry;
  otherwise internal;
- a disk listed in ``<disks>`` (by target, or by an unambiguous absolute
  source path) takes the entry's ``snapshot=``; an entry without one that
  names a source or driver is external; otherwise the domain disk's own
  ``snapshot=`` applies, though under an internal default only its ``no``
  does (libvirt asks internal snapshots to be uniform);
- a disk not listed takes its own ``snapshot=``, else the default;
- a domain disk's own ``snapshot=`` defaults to ``no`` when it is read-only,
  and every cdrom is (virDomainDiskDefPostParse); a floppy is not;
- only a qcow2 disk (``<driver type='qcow2'>``) on a local file or block
  device (``<disk type='file'|'block'>``) can be inspected.

The image paths come from metadata files and are not trusted. A path must be
absolute (so no URL such as ``nbd://`` and no option such as ``--object``);
it is opened with O_PATH, which opens nothing (a FIFO cannot block, a device
driver is not called) and follows symlinks: operators do link their images,
and libvirt and qemu follow the link too, so what counts is the object the
path ends at. It must be a regular file or a block device (qcow2 may sit on
one), else it is a finding and never opened. qemu-img then gets that very
object as ``/dev/fd/N`` inside a ``json:`` spec naming the qcow2 driver and
the local protocol driver: no format probing, no protocol parsed from the
name, and no race between the type test and the open.

Each image is asked once (``qemu-img info --output=json -U``: qemu 7.2's
``snapshot -l`` has no JSON output), whatever the number of snapshots; ``-U``
reads an image a running domain holds. ``Images`` keeps the answers of one
check run, so the bitmap check of checkpoints (bitmaps.py) reads the same
answer instead of running qemu-img again.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
from collections import defaultdict
from typing import Any, cast

from lxml import etree

from snapstore import codes, kinds, model
from snapstore.check import findings
from snapstore.formats import mapping

_TIMEOUT = 60
_SOURCE_ATTRIBUTE = {"file": "file", "block": "dev"}  # local disk type -> the <source> attribute naming it
_PROTOCOL_DRIVER = {stat.S_IFREG: "file", stat.S_IFBLK: "host_device"}  # qemu refuses 'file' on a device
_TYPE_NAMES = {"d": "a directory", "p": "a FIFO", "s": "a socket", "c": "a character device"}
_UNREADABLE_HINT = "check that the image exists, is readable, and is what the domain's <source> names"


class _Refused(Exception):
    """An image refused or not readable; the message, put after the path, says why."""


def check_images(report: findings.Report, domain: str, tree: model.Tree, images: Images | None = None) -> None:
    images = images if images is not None else Images()
    for image, names in sorted(_expected_by_image(tree).items()):
        info = images.info(image)
        if isinstance(info, str):
            report_unreadable(report, domain, kinds.SNAPSHOT, image, info)
            continue
        held = {snapshot["name"] for snapshot in info.get("snapshots", [])}
        for name in sorted(names - held):
            report.add(codes.IMAGE_LACKS_SNAPSHOT, f"snapshot {name!r} is internal but {image} does not hold it",
                       domain, kinds.SNAPSHOT, name, image,
                       "the disk state is gone: remove the metadata with "
                       f"'virsh snapshot-delete {domain} {name} --metadata'")
        for name in sorted(held - set(tree.by_name)):
            report.add(codes.IMAGE_ORPHAN_SNAPSHOT, f"{image} holds snapshot {name!r} that has no metadata",
                       domain, kinds.SNAPSHOT, name, image,
                       f"inspect with 'qemu-img snapshot -l {image}'; restore its metadata or delete it")


def _expected_by_image(tree: model.Tree) -> dict[str, set[str]]:
    """Image path -> names of the snapshots it must hold internally."""
    expected: dict[str, set[str]] = defaultdict(set)
    for moment in tree.moments:
        # Only a qcow2 disk can hold one, and lxml serializes attributes in double quotes:
        # a moment without this text needs no parse.
        if b'type="qcow2"' not in moment.body:
            continue
        for image in internal_images(mapping.element(moment)):
            expected[image].add(moment.name)
    return expected


# --------------------------------------------------------------------------- which disks (libvirt's rules)

def internal_images(snapshot: etree._Element) -> list[str]:
    """Source paths of the local qcow2 disks that hold ``snapshot`` (a <domainsnapshot>) internally."""
    disks = snapshot.findall("domain/devices/disk")
    entries = entries_by_disk(snapshot, disks)
    default = _default_location(snapshot)
    located = ((disk, _location(disk, entries.get(index), default)) for index, disk in enumerate(disks))
    return [path for disk, where in located if where == "internal" and (path := qcow2_path(disk)) is not None]


def _default_location(snapshot: etree._Element) -> str:
    entries = snapshot.iterfind("disks/disk")
    external = (snapshot.findtext("state") == "disk-snapshot" or _memory_location(snapshot) == "external"
                or any(_entry_location(entry) == "external" for entry in entries))
    return "external" if external else "internal"


def _memory_location(snapshot: etree._Element) -> str | None:
    memory = snapshot.find("memory")
    if memory is None:
        return None
    return memory.get("snapshot") or ("external" if memory.get("file") else None)


def _entry_location(entry: etree._Element) -> str | None:
    """A <disks> entry's own location; naming a new file or format makes it external."""
    if entry.get("snapshot"):
        return entry.get("snapshot")
    source = entry.find("source")
    names_file = source is not None and any(source.get(a) for a in ("file", "dev", "dir", "name"))
    return "external" if names_file or _driver_type(entry) else None


def _location(disk: etree._Element, entry: etree._Element | None, default: str) -> str:
    own = _own_location(disk)
    if entry is None:
        return own or default
    explicit = _entry_location(entry)
    if explicit:
        return explicit
    # An internal snapshot is uniform: a listed disk may only opt out.
    return own if own is not None and (default != "internal" or own == "no") else default


def _own_location(disk: etree._Element) -> str | None:
    """The domain disk's snapshot= after libvirt's post-parse (read-only, and so every cdrom: 'no')."""
    if disk.get("snapshot"):
        return disk.get("snapshot")
    return "no" if is_read_only(disk) else None


def is_read_only(disk: etree._Element) -> bool:
    """libvirt's post-parse: a <readonly/> disk, and every cdrom."""
    return disk.find("readonly") is not None or disk.get("device") == "cdrom"


def entries_by_disk(moment: etree._Element, disks: list[etree._Element]) -> dict[int, etree._Element]:
    """Index of a domain disk -> its <disks> entry (the first one: libvirt refuses a second);
    a snapshot's and a checkpoint's <disks> name their disks alike."""
    entries: dict[int, etree._Element] = {}
    for entry in moment.iterfind("disks/disk"):
        index = _disk_index(disks, entry.get("name", ""))
        if index is not None:
            entries.setdefault(index, entry)
    return entries


def _disk_index(disks: list[etree._Element], name: str) -> int | None:
    """libvirt's virDomainDiskByName: a target, or (leading '/') an unambiguous source path."""
    if not name.startswith("/"):
        return next((i for i, disk in enumerate(disks) if target(disk) == name), None)
    found = [i for i, disk in enumerate(disks) if name in _source_names(disk)]
    return found[0] if len(found) == 1 else None


def target(disk: etree._Element) -> str | None:
    target = disk.find("target")
    return target.get("dev") if target is not None else None


def _source_names(disk: etree._Element) -> set[str]:
    source = disk.find("source")
    return set() if source is None else {name for a in ("file", "dev", "dir", "name") if (name := source.get(a))}


def _driver_type(element: etree._Element) -> str | None:
    driver = element.find("driver")
    return driver.get("type") if driver is not None else None


def qcow2_path(disk: etree._Element) -> str | None:
    """The image of a local qcow2 disk (the only kind qemu-img is asked about), else None."""
    attribute = _SOURCE_ATTRIBUTE.get(disk.get("type", "file"))  # libvirt's default disk type is file
    source = disk.find("source")
    if _driver_type(disk) != "qcow2" or attribute is None or source is None:
        return None
    return source.get(attribute) or None  # no path: an empty drive, never snapshotted


# --------------------------------------------------------------------------- asking the image

class Images:
    """``qemu-img info`` of each image, asked once per check run: the snapshot
    and the bitmap checks share the answer. An answer is reused only while
    the image is the same object, unchanged (device, inode, size, mtime)."""

    def __init__(self) -> None:
        self._answers: dict[str, tuple[tuple[int, int, int, int], dict[str, Any] | str]] = {}

    def info(self, image: str) -> dict[str, Any] | str:
        """qemu-img's JSON about ``image``, or why it cannot be inspected (the words after its path)."""
        try:
            fd, driver = _open_image(image)
        except _Refused as e:
            return str(e)
        except OSError as e:
            return f"cannot be inspected: {e}"
        try:
            info = os.fstat(fd)
            key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
            known = self._answers.get(image)
            if known is None or known[0] != key:
                known = self._answers[image] = (key, _ask(fd, driver))
            return known[1]
        finally:
            os.close(fd)


def report_unreadable(report: findings.Report, domain: str, kind: kinds.Kind, image: str, why: str) -> None:
    report.add(codes.IMAGE_UNREADABLE, f"{image} {why}", domain, kind, None, image, _UNREADABLE_HINT)


def _ask(fd: int, driver: str) -> dict[str, Any] | str:
    try:
        result = subprocess.run(_info_command(fd, driver), capture_output=True, text=True, timeout=_TIMEOUT,
                                check=False, pass_fds=(fd,), stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            return f"cannot be inspected: {_qemu_reason(result.stderr)}"
        info: object = json.loads(result.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError) as e:
        return f"cannot be inspected: {e}"
    snapshots = info.get("snapshots", []) if isinstance(info, dict) else None
    if not isinstance(snapshots, list) or not all(isinstance(s, dict) and "name" in s for s in snapshots):
        return "cannot be inspected: qemu-img did not describe an image"
    return cast(dict[str, Any], info)


def _qemu_reason(stderr: str) -> str:
    # "qemu-img: Could not open 'json:{...}': REASON": the spec names our descriptor, not the image.
    last = (stderr.strip().splitlines() or ["qemu-img failed"])[-1]
    head, found, reason = last.partition("': ")
    return reason if found and "'json:" in head else last


def _open_image(image: str) -> tuple[int, str]:
    """An O_PATH descriptor of the image and qemu's protocol driver for it; refuses anything else."""
    if not image.startswith("/"):
        raise _Refused("is not an absolute path (a URL or an option?): only a local image is inspected, "
                       "qemu-img was not run")
    fd = os.open(image, os.O_PATH | os.O_CLOEXEC)  # opens nothing: no FIFO blocks, no device is called
    mode = os.fstat(fd).st_mode
    driver = _PROTOCOL_DRIVER.get(stat.S_IFMT(mode))
    if driver is None:
        os.close(fd)
        raise _Refused(f"is {_TYPE_NAMES.get(stat.filemode(mode)[0], 'a special file')}, not a disk image: "
                       "it was not opened")
    return fd, driver


def _info_command(fd: int, driver: str) -> list[str]:
    # json: names the format and the local protocol driver, so qemu-img neither
    # probes nor parses a protocol out of the name; the name is our descriptor.
    spec = {"driver": "qcow2", "file": {"driver": driver, "filename": f"/dev/fd/{fd}"}}
    return ["qemu-img", "info", "--output=json", "-U", "json:" + json.dumps(spec)]
