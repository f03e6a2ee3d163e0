"""Internal snapshots against the qcow2 images that must hold them.

Each image is asked once (``qemu-img info --output=json -U``: qemu 7.2's
``snapshot -l`` has no JSON output), whatever the number of snapshots;
``-U`` reads an image a running domain holds; the format comes from the
domain XML so a raw image is never probed.
"""
from __future__ import annotations

import json
import subprocess
from collections import defaultdict

from lxml import etree

from snapstore import codes, kinds, model
from snapstore.check import findings

_TIMEOUT = 60


def check_images(report: findings.Report, domain: str, tree: model.Tree) -> None:
    expected = _expected_by_image(tree)
    for (image, image_format), names in sorted(expected.items()):
        held = _image_snapshots(report, domain, image, image_format)
        if held is None:
            continue
        for name in sorted(names - held):
            report.add(codes.IMAGE_LACKS_SNAPSHOT, f"snapshot {name!r} is internal but {image} does not hold it",
                       domain, kinds.SNAPSHOT, name, image,
                       "the disk state is gone: remove the metadata with "
                       f"'virsh snapshot-delete {domain} {name} --metadata'")
        for name in sorted(held - set(tree.by_name)):
            report.add(codes.IMAGE_ORPHAN_SNAPSHOT, f"{image} holds snapshot {name!r} that has no metadata",
                       domain, kinds.SNAPSHOT, name, image,
                       f"inspect with 'qemu-img snapshot -l {image}'; restore its metadata or delete it")


def _expected_by_image(tree: model.Tree) -> dict[tuple[str, str], set[str]]:
    """(image path, format) -> names of the snapshots it must hold internally."""
    expected: dict[tuple[str, str], set[str]] = defaultdict(set)
    for moment in tree.moments:
        if b'snapshot="internal"' not in moment.body:  # serialized by lxml: always double quotes
            continue
        element = moment.element
        for disk in element.iterfind("disks/disk[@snapshot='internal']"):
            source = _source_of(element, disk.get("name", ""))
            if source is not None:
                expected[source].add(moment.name)
    return expected


def _source_of(element: etree._Element, target: str) -> tuple[str, str] | None:
    for disk in element.iterfind("domain/devices/disk"):
        source = disk.find("source")
        if source is None or source.get("file") is None:
            continue
        target_element = disk.find("target")
        dev = target_element.get("dev") if target_element is not None else None
        if target in (dev, source.get("file")):  # <disk name=> is a target dev or a path
            driver = disk.find("driver")
            return source.get("file"), driver.get("type", "qcow2") if driver is not None else "qcow2"
    return None


def _image_snapshots(report: findings.Report, domain: str, image: str, image_format: str) -> set[str] | None:
    command = ["qemu-img", "info", "--output=json", "-U", "-f", image_format, image]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
        if result.returncode == 0:
            return {snapshot["name"] for snapshot in json.loads(result.stdout).get("snapshots", [])}
        reason = (result.stderr.strip().splitlines() or ["failed"])[-1]
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, TypeError) as e:
        reason = str(e)
    report.add(codes.IMAGE_UNREADABLE, f"{image} cannot be inspected: {reason}", domain, kinds.SNAPSHOT,
               None, image, "check that the image exists and is readable")
    return None
