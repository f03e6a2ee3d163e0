"""`snapstore check`: checkpoints against the persistent dirty bitmaps of their images (issue 15).

Real checkpoints of real domains (embedded qemu driver, QEMU's software
emulation, no OS; tests/labcheckpoints.py), real damage:

- a bitmap removed with ``qemu-img bitmap --remove`` (domain shut off): SS504;
- a bitmap added with ``qemu-img bitmap --add``, or left by a metadata-only
  checkpoint delete: SS505;
- the qemu of a running domain SIGKILLed (its pid file under ROOT/run/qemu):
  its bitmaps stay ``in-use`` and libvirt's status file stays (the embedded
  driver has no daemon to notice): SS506; the checkpoints made by that qemu
  lose their bitmaps: SS504;
- libvirt then notices, and the domain is started and shut down cleanly:
  qemu loads the in-use bitmaps as inconsistent and never saves them, so they
  stay in use in the image of a shut-off domain: SS507 (qemu-img itself calls
  them inconsistent).

What the premises rest on is asserted from the image too (qemu 7.2): a bitmap
made by a running qemu is in the image only once qemu closed it; a running
domain's bitmaps are ``in-use``. check decides "running" from libvirt's status
file (``--run-dir``, here the lab's ROOT/run/qemu) and /proc.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from unittest import mock

import labcheckpoints
import pytest
from lab import Lab
from lxml import etree
from support import cli as support_cli
from support.cli import Result

from snapstore import codes
from snapstore.check import bitmaps, disks

DOMAIN = "bm"
TIMEOUT = 30  # seconds, any qemu-img run


# --------------------------------------------------------------------------- the lab and check

@dataclasses.dataclass
class Env:
    lab: Lab
    work: Path
    capsys: pytest.CaptureFixture[str]

    @property
    def image(self) -> Path:
        return self.lab.root / "images" / f"{DOMAIN}.qcow2"

    @property
    def run_dir(self) -> Path:
        return self.lab.root / "run" / "qemu"

    def snapstore(self, *args: str) -> Result:
        config = self.work / "empty.toml"
        config.write_text("")  # defaults only, whatever the host has in /etc
        result = support_cli.in_process(self.capsys, [
            "--libvirt-dir", str(self.lab.snapshot_dir), "--checkpoint-dir", str(self.lab.checkpoint_dir),
            "--state-dir", str(self.work / "state"), "--config", str(config), *args])
        assert "Traceback" not in result.err and "internal error" not in result.err, str(result)
        return result

    def check(self, *args: str, run_dir: Path | None = None) -> Result:
        """`check --json` of the domain, its store consolidated first (no store-vs-folder finding)."""
        assert self.snapstore("consolidate", DOMAIN, "--checkpoints").code == 0
        return self.check_only(*args, run_dir=run_dir)

    def check_only(self, *args: str, run_dir: Path | None = None) -> Result:
        result = self.snapstore("check", DOMAIN, "--definitions", str(self.lab.root / "etc" / "qemu"),
                                "--run-dir", str(run_dir or self.run_dir), "--json", *args)
        assert result.data["exit_code"] == result.code, str(result)
        return result

    def held(self, image: Path | None = None) -> dict[str, list[str]]:
        """The image's bitmaps and their flags, as qemu-img shows them."""
        info = json.loads(qemu_img("info", "--output=json", "-U", str(image or self.image)))
        return {b["name"]: b["flags"] for b in info["format-specific"]["data"].get("bitmaps", [])}

    def bitmap(self, action: str, name: str, image: Path | None = None) -> None:
        qemu_img("bitmap", action, str(image or self.image), name)


@pytest.fixture
def env(lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Env:
    """Domain bm with checkpoints c1 <- c2 made while it ran, saved by its shutdown."""
    lab.run([{"op": "define", "domain": DOMAIN}, *labcheckpoints.saved(DOMAIN, ["c1", "c2"])])
    return Env(lab, tmp_path, capsys)


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True, timeout=TIMEOUT).stdout


def found(result: Result) -> set[tuple[str, str | None]]:
    """(code, moment) of every finding."""
    return {(f["code"], f["moment"]) for f in result.data["findings"]}


def finding(result: Result, code: str, moment: str) -> dict[str, Any]:
    [one] = [f for f in result.data["findings"] if (f["code"], f["moment"]) == (code, moment)]
    return one


def start(env: Env, *names: str) -> None:
    """The domain started (its qemu outlives the worker), checkpoints ``names`` made by that qemu."""
    env.lab.run([{"op": "start", "domain": DOMAIN},
                 *({"op": "checkpoint", "domain": DOMAIN, "name": name} for name in names)])


# --------------------------------------------------------------------------- clean

def test_clean_domain_shut_off_and_running_gives_no_finding(env: Env) -> None:
    assert env.held() == {"c1": ["auto"], "c2": ["auto"]}
    shut_off = env.check()
    assert (shut_off.code, shut_off.data["findings"], shut_off.data["notes"]) == (0, [], []), str(shut_off)
    assert shut_off.data["summary"]["checkpoints"] == 2

    start(env, "c3")
    # Premises: the running qemu has c1 and c2 open (in use); c3 reaches the image only at shutdown.
    assert env.held() == {"c1": ["in-use", "auto"], "c2": ["in-use", "auto"]}
    running = env.check()
    assert (running.code, running.data["findings"], running.data["notes"]) == (0, [], []), str(running)

    # Without libvirt's run folder the domain looks shut off: its in-use bitmaps look inconsistent,
    # and c3 missing; the note names the folder (that is what --run-dir is for).
    missing = env.work / "no-run-dir"
    blind = env.check_only(run_dir=missing)
    assert found(blind) == {(codes.BITMAP_INCONSISTENT, "c1"), (codes.BITMAP_INCONSISTENT, "c2"),
                            (codes.IMAGE_LACKS_BITMAP, "c3")}, str(blind)
    assert any(str(missing) in note for note in blind.data["notes"]), str(blind)


def test_no_disks_skips_the_bitmap_check(env: Env) -> None:
    env.bitmap("--remove", "c2")
    env.bitmap("--add", "extra")
    assert found(env.check()) == {(codes.IMAGE_LACKS_BITMAP, "c2"), (codes.IMAGE_ORPHAN_BITMAP, "extra")}
    skipped = env.check_only("--no-disks")
    assert (skipped.code, skipped.data["findings"]) == (0, []), str(skipped)


# --------------------------------------------------------------------------- SS504: a checkpoint without its bitmap

def test_removed_bitmap_breaks_the_chain_until_its_checkpoint_is_deleted(env: Env) -> None:
    env.lab.run(labcheckpoints.saved(DOMAIN, ["c3"]))
    env.bitmap("--remove", "c2")
    result = env.check()
    assert (result.code, found(result)) == (3, {(codes.IMAGE_LACKS_BITMAP, "c2")}), str(result)
    lacking = finding(result, codes.IMAGE_LACKS_BITMAP, "c2")
    assert (lacking["severity"], lacking["kind"], lacking["path"]) == (codes.ERROR, "checkpoint", str(env.image))
    assert "disk vda" in lacking["message"] and "'c2'" in lacking["message"], lacking
    assert f"virsh checkpoint-delete {DOMAIN} c2 --metadata" in lacking["hint"], lacking
    assert "full backup" in lacking["hint"], lacking

    # The hint, done: the checkpoint's metadata deleted (libvirt: its children move to its parent).
    env.lab.run([{"op": "checkpoint_delete", "domain": DOMAIN, "name": "c2", "metadata_only": True}])
    after = env.check()
    assert (after.code, after.data["findings"]) == (0, []), str(after)


def test_running_domain_needs_only_the_bitmaps_older_than_its_qemu(env: Env) -> None:
    env.bitmap("--remove", "c1")
    created = int(etree.parse(str(env.lab.checkpoint_dir / DOMAIN / "c1.xml")).findtext("creationTime"))
    time.sleep(max(0.0, created + bitmaps._START_MARGIN + 1.5 - time.time()))  # c1 clearly older than the qemu
    start(env, "c3")
    assert set(env.held()) == {"c2"}
    result = env.check()
    assert (result.code, found(result)) == (3, {(codes.IMAGE_LACKS_BITMAP, "c1")}), str(result)


# --------------------------------------------------------------------------- SS505: a bitmap without checkpoint

def test_bitmap_without_checkpoint(env: Env) -> None:
    env.bitmap("--add", "extra")
    added = env.check()
    assert (added.code, found(added)) == (1, {(codes.IMAGE_ORPHAN_BITMAP, "extra")}), str(added)
    stray = finding(added, codes.IMAGE_ORPHAN_BITMAP, "extra")
    assert (stray["severity"], stray["path"]) == (codes.WARNING, str(env.image))
    assert f"qemu-img bitmap --remove {env.image} extra" in stray["hint"], stray
    assert "snapstore restore --checkpoints" in stray["hint"], stray
    env.bitmap("--remove", "extra")

    # libvirt forgets c2 but its bitmap stays: while the store still holds c2 it is no stray (the
    # store-vs-folder findings say c2 is only in the store, and restore brings it back) ...
    env.lab.run([{"op": "checkpoint_delete", "domain": DOMAIN, "name": "c2", "metadata_only": True}])
    assert set(env.held()) == {"c1", "c2"}
    lost = env.check_only()
    assert found(lost) == {(codes.ONLY_IN_STORE, "c2"), (codes.CURRENT_DIFFERS, None)}, str(lost)
    # ... once the store follows libvirt, it is.
    forgotten = env.check()
    assert (forgotten.code, found(forgotten)) == (1, {(codes.IMAGE_ORPHAN_BITMAP, "c2")}), str(forgotten)


# --------------------------------------------------------------------------- SS506, SS507: in use, no qemu

def test_killed_qemu_leaves_bitmaps_in_use_then_inconsistent(env: Env) -> None:
    start(env, "c3")
    assert env.check().data["findings"] == []
    pid = labcheckpoints.kill(env.lab.root, DOMAIN)
    # qemu died: c1 and c2 stay in use, c3 never reached the image; libvirt's status file stays.
    assert env.held() == {"c1": ["in-use", "auto"], "c2": ["in-use", "auto"]}
    status = env.run_dir / f"{DOMAIN}.xml"
    assert status.exists()
    died = env.check()
    assert (died.code, found(died)) == (3, {(codes.BITMAP_QEMU_DIED, "c1"), (codes.BITMAP_QEMU_DIED, "c2"),
                                            (codes.IMAGE_LACKS_BITMAP, "c3")}), str(died)
    dead = finding(died, codes.BITMAP_QEMU_DIED, "c1")
    assert f"pid {pid}" in dead["message"] and str(status) in dead["message"], dead
    assert f"qemu-img bitmap --remove {env.image} c1" in dead["hint"], dead

    # A pid that lives but is no qemu of this domain (reused) is no running domain either.
    reused = env.work / "run-reused"
    shutil.copytree(env.run_dir, reused)
    (reused / status.name).write_text(status.read_text().replace(f"pid='{pid}'", f"pid='{os.getpid()}'"))
    assert found(env.check_only(run_dir=reused)) == found(died)
    # A status file that cannot be read: whether it runs is unknown, and so is what depends on it.
    unknown = env.work / "run-garbled"
    shutil.copytree(env.run_dir, unknown)
    (unknown / status.name).write_text("<domstatus")
    garbled = env.check_only(run_dir=unknown)
    assert (garbled.code, garbled.data["findings"]) == (0, []), str(garbled)
    assert any(f"cannot tell whether domain {DOMAIN} runs" in note for note in garbled.data["notes"]), str(garbled)

    # libvirt notices (its status file goes): the domain is shut off and its bitmaps in use.
    env.lab.run([{"op": "wait_inactive", "domain": DOMAIN}])
    assert not status.exists()
    noticed = env.check()
    inconsistent = {(codes.BITMAP_INCONSISTENT, "c1"), (codes.BITMAP_INCONSISTENT, "c2"),
                    (codes.IMAGE_LACKS_BITMAP, "c3")}
    assert (noticed.code, found(noticed)) == (3, inconsistent), str(noticed)
    hint = finding(noticed, codes.BITMAP_INCONSISTENT, "c2")["hint"]
    assert hint.startswith("take a new full backup; the bitmap must be removed") and \
        f"qemu-img bitmap --remove {env.image} c2" in hint, hint

    # Started and shut down cleanly: qemu loaded them as inconsistent and never saves such a
    # bitmap, so they stay in use; qemu-img itself refuses them as inconsistent.
    env.lab.run(labcheckpoints.saved(DOMAIN, []))
    assert env.held() == {"c1": ["in-use", "auto"], "c2": ["in-use", "auto"]}
    again = env.check()
    assert (again.code, found(again)) == (3, inconsistent), str(again)
    copy = env.work / "copy.qcow2"
    shutil.copyfile(env.image, copy)
    refused = subprocess.run(["qemu-img", "bitmap", "--enable", str(copy), "c1"], capture_output=True, text=True,
                             timeout=TIMEOUT)
    assert refused.returncode != 0 and "Bitmap 'c1' is inconsistent" in refused.stderr, refused.stderr


# --------------------------------------------------------------------------- which disks, which images

def two_disk_domain(lab: Lab) -> tuple[Path, Path]:
    images = (lab.root / "images" / "two-a.qcow2", lab.root / "images" / "two-b.qcow2")
    images[0].parent.mkdir(parents=True, exist_ok=True)
    devices = ""
    for image, target in zip(images, ("vda", "vdb")):
        qemu_img("create", "-q", "-f", "qcow2", str(image), "16M")
        devices += (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                    f"<source file='{image}'/><target dev='{target}' bus='virtio'/></disk>")
    lab.define_xml(f"<domain type='qemu'><name>{DOMAIN}</name><memory unit='MiB'>64</memory>"
                   f"<os><type arch='x86_64'>hvm</type></os><devices>{devices}</devices></domain>")
    return images


def test_the_disks_a_checkpoint_covers_follow_libvirt(lab: Lab, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """c1 lists vda alone (vdb not covered), c2 says vda='no' and vdb='bitmap', c3 lists none (both)."""
    a, b = two_disk_domain(lab)
    lab.run([{"op": "start", "domain": DOMAIN},
             {"op": "checkpoint_xml", "domain": DOMAIN,
              "xml": "<domaincheckpoint><name>c1</name><disks><disk name='vda'/></disks></domaincheckpoint>"},
             {"op": "checkpoint_xml", "domain": DOMAIN,
              "xml": "<domaincheckpoint><name>c2</name><disks><disk name='vda' checkpoint='no'/>"
                     "<disk name='vdb' checkpoint='bitmap'/></disks></domaincheckpoint>"},
             {"op": "checkpoint", "domain": DOMAIN, "name": "c3"},
             {"op": "destroy", "domain": DOMAIN}])
    env = Env(lab, tmp_path, capsys)
    assert (set(env.held(a)), set(env.held(b))) == ({"c1", "c3"}, {"c2", "c3"})
    for name, expected in {"c1": [("vda", str(a), "c1")], "c2": [("vdb", str(b), "c2")],
                           "c3": [("vda", str(a), "c3"), ("vdb", str(b), "c3")]}.items():
        saved = etree.parse(str(lab.checkpoint_dir / DOMAIN / f"{name}.xml")).getroot()
        assert bitmaps.covered(saved, name) == expected, name
        disks_part = saved.find("disks")
        disks_part.getparent().remove(disks_part)  # the same without <disks>: every writable disk
        assert bitmaps.covered(saved, name) == [("vda", str(a), name), ("vdb", str(b), name)]
    clean = env.check()
    assert (clean.code, clean.data["findings"]) == (0, []), str(clean)

    env.bitmap("--remove", "c3", b)
    broken = env.check()
    assert found(broken) == {(codes.IMAGE_LACKS_BITMAP, "c3")}, str(broken)
    lacking = finding(broken, codes.IMAGE_LACKS_BITMAP, "c3")
    assert lacking["path"] == str(b) and "disk vdb" in lacking["message"], lacking


def disk(target: str, source: str = "", fmt: str = "qcow2", kind: str = "file", extra: str = "") -> str:
    attribute = {"file": "file", "block": "dev", "network": "name"}[kind]
    where = f"<source {attribute}='{source}'/>" if source else ""
    return (f"<disk type='{kind}' device='disk'><driver name='qemu' type='{fmt}'/>{where}"
            f"<target dev='{target}'/>{extra}</disk>")


@pytest.mark.parametrize(("disks_part", "devices", "expected"), [
    ("", disk("vda", "/i/a") + disk("vdb", "/i/b", extra="<readonly/>") + disk("vdc"),
     [("vda", "/i/a", "cp")]),  # read-only and empty drives are not covered
    ("", disk("vda", "/i/a", fmt="raw") + disk("vdb", "/dev/x", kind="block") + disk("vdc", "p/d", kind="network"),
     [("vdb", "/dev/x", "cp")]),  # only a local qcow2 image holds one that can be inspected
    ("<disk name='vdb' checkpoint='bitmap' bitmap='old'/>", disk("vda", "/i/a") + disk("vdb", "/i/b"),
     [("vdb", "/i/b", "old")]),  # a listed disk's own bitmap name (a redefined checkpoint may carry one)
    ("<disk name='/i/b'/>", disk("vda", "/i/a") + disk("vdb", "/i/b"),
     [("vdb", "/i/b", "cp")]),  # listed by its source path; vda, not listed, is not covered
])
def test_covered_disks(disks_part: str, devices: str, expected: list[tuple[str, str, str]]) -> None:
    checkpoint = etree.fromstring(f"<domaincheckpoint><name>cp</name><disks>{disks_part}</disks>"
                                  f"<domain><devices>{devices}</devices></domain></domaincheckpoint>"
                                  if disks_part else
                                  f"<domaincheckpoint><name>cp</name><domain><devices>{devices}</devices></domain>"
                                  "</domaincheckpoint>")
    assert bitmaps.covered(checkpoint, "cp") == expected


# --------------------------------------------------------------------------- one qemu-img run per image

def test_each_image_is_asked_once_for_snapshots_and_bitmaps(env: Env) -> None:
    """A snapshot (metadata only: libvirt makes no internal snapshot beside checkpoints) and two
    checkpoints on one image: one qemu-img run serves the snapshot and the bitmap checks."""
    checkpoint = etree.parse(str(env.lab.checkpoint_dir / DOMAIN / "c1.xml")).getroot()
    domain = etree.tostring(checkpoint.find("domain"), encoding="unicode")
    folder = env.lab.snapshot_dir / DOMAIN
    folder.mkdir(parents=True)
    (folder / "s1.xml").write_text(f"<domainsnapshot><name>s1</name><state>shutoff</state>"
                                   f"<creationTime>1700000000</creationTime><memory snapshot='no'/>"
                                   f"<disks><disk name='vda' snapshot='internal'/></disks>{domain}"
                                   "<active>1</active></domainsnapshot>")
    (folder / "s1.xml").chmod(0o600)
    assert env.snapstore("consolidate", DOMAIN).code == 0
    env.bitmap("--add", "extra")
    with mock.patch.object(disks.subprocess, "run", wraps=subprocess.run) as ran:
        result = env.check()
    assert found(result) == {(codes.IMAGE_LACKS_SNAPSHOT, "s1"), (codes.IMAGE_ORPHAN_BITMAP, "extra")}, str(result)
    assert [call.args[0][:2] for call in ran.call_args_list] == [["qemu-img", "info"]], ran.call_args_list
