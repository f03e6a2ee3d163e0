"""`snapstore check`'s disk cross-check (snapstore/check/disks.py) on hostile and default-shaped metadata.

Each case writes libvirt's layout by hand (``<root>/snapshot/vm1/<name>.xml``
with a full embedded ``<domain>``), makes real qcow2 images with real
internal snapshots (``qemu-img create``/``snapshot -c``), consolidates, runs
`snapstore check --json` and asserts the exact finding codes.

Hostile image paths (the metadata is not trusted): a URL must not make
qemu-img connect anywhere, an option-shaped path must not become a
qemu-img option (strace shows what is opened), a FIFO must not block.
Defaults: a snapshot without ``<disks>`` and a qcow2 disk on a block device
(a loop device, when losetup works here) are compared with their images;
which disks a snapshot covers is pinned against libvirt 9.0's rules.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from support.cli import Result

from snapstore import cli, codes
from snapstore.check import disks

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".venv" / "bin" / "snapstore"
DOMAIN = "vm1"
UUID = "4f293fa2-6c6a-40c1-835c-76727585c2dc"
TIMEOUT = 30  # seconds for any subprocess; the disk check's own per-image limit is 60
FAST = 10.0   # seconds: a check of one small domain that did not wait on anything
LISTED = "    <disk name='vda' snapshot='internal'/>\n"  # <disks> as libvirt writes it for vda alone


# --------------------------------------------------------------------------- metadata in libvirt's layout

def file_disk(path: str, dev: str = "vda", fmt: str = "qcow2", device: str = "disk", extra: str = "") -> str:
    return (f"      <disk type='file' device='{device}'{extra}>\n        <driver name='qemu' type='{fmt}'/>\n"
            f"        <source file='{path}'/>\n        <target dev='{dev}' bus='virtio'/>\n      </disk>\n")


def read_only(disk: str) -> str:
    return disk.replace("<target", "<readonly/>\n        <target")


def block_disk(path: str, dev: str = "vda") -> str:
    return ("      <disk type='block' device='disk'>\n        <driver name='qemu' type='qcow2'/>\n"
            f"        <source dev='{path}'/>\n        <target dev='{dev}' bus='virtio'/>\n      </disk>\n")


def snapshot_xml(name: str, devices: str, memory: str = "<memory snapshot='internal'/>", state: str = "running",
                 entries: str = "", active: bool = True) -> str:
    """A <domainsnapshot> as libvirt writes its file; no <disks> unless ``entries``."""
    disks_part = f"  <disks>\n{entries}  </disks>\n" if entries else ""
    return (f"<domainsnapshot>\n  <name>{name}</name>\n  <state>{state}</state>\n"
            f"  <creationTime>1700000000</creationTime>\n  {memory}\n{disks_part}"
            f"  <domain type='kvm'>\n    <name>{DOMAIN}</name>\n    <uuid>{UUID}</uuid>\n"
            "    <memory unit='KiB'>65536</memory>\n    <os>\n      <type arch='x86_64' machine='pc'>hvm</type>\n"
            f"    </os>\n    <devices>\n{devices}    </devices>\n  </domain>\n"
            f"  <active>{int(active)}</active>\n</domainsnapshot>\n")


def qcow2(path: Path, *snapshots: str) -> Path:
    """A real qcow2 image holding real internal snapshots."""
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"])
    for name in snapshots:
        run(["qemu-img", "snapshot", "-c", name, str(path)])
    return path


def run(command: list[str]) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=TIMEOUT).stdout


# --------------------------------------------------------------------------- running check

@dataclasses.dataclass
class Env:
    base: Path

    def __post_init__(self) -> None:
        for folder in (self.snapshots / DOMAIN, self.checkpoints, self.definitions):
            folder.mkdir(parents=True)
        self.config.write_text("")  # defaults only, whatever the host has in /etc

    snapshots = property(lambda self: self.base / "snapshot")
    checkpoints = property(lambda self: self.base / "checkpoint")
    definitions = property(lambda self: self.base / "definitions")  # empty: no uuid check
    state = property(lambda self: self.base / "state")
    config = property(lambda self: self.base / "empty.toml")

    def write(self, name: str, xml: str) -> None:
        path = self.snapshots / DOMAIN / f"{name}.xml"
        path.write_text(xml)
        path.chmod(0o600)

    def argv(self, command: str, *args: str) -> list[str]:
        return ["--libvirt-dir", str(self.snapshots), "--checkpoint-dir", str(self.checkpoints),
                "--state-dir", str(self.state), "--config", str(self.config), command, *args]

    def check_argv(self) -> list[str]:
        return self.argv("check", "--definitions", str(self.definitions), "--json")

    def consolidate(self) -> None:
        assert cli.main(self.argv("consolidate", "--all")) == 0, "consolidating the hand-made folder failed"


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path / "root")


def check(env: Env, capsys: pytest.CaptureFixture[str]) -> Result:
    """`snapstore check --json` in-process, after consolidating (so no store-vs-folder finding)."""
    env.consolidate()
    capsys.readouterr()
    code = cli.main(env.check_argv())
    out, err = capsys.readouterr()
    result = Result(code, out, err)
    assert "Traceback" not in err and "internal error" not in err, f"check crashed:\n{result}"
    assert result.data["exit_code"] == code, result
    return result


def traced_check(env: Env, tmp_path: Path, calls: str) -> tuple[Result, str]:
    """The console script under strace -f (children included): the result and the trace of ``calls``."""
    assert shutil.which("strace"), "strace is a test dependency (scripts/install installs it)"
    env.consolidate()
    log = tmp_path / "strace.log"
    done = subprocess.run(["strace", "-f", "-qq", "-e", f"trace={calls}", "-o", str(log), str(SCRIPT),
                           *env.check_argv()], capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL)
    result = Result(done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in result.err, f"check crashed:\n{result}"
    return result, log.read_text()


def findings(result: Result, code: str) -> list[dict[str, str]]:
    return [f for f in result.data["findings"] if f["code"] == code]


# --------------------------------------------------------------------------- hostile image paths

def test_url_source_is_a_finding_and_nothing_connects(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        url = f"nbd://127.0.0.1:{listener.getsockname()[1]}/x"
        env.write("s1", snapshot_xml("s1", file_disk(url), entries=LISTED))
        result = check(env, capsys)
        with pytest.raises(BlockingIOError):
            connection, peer = listener.accept()  # the backlog keeps any connection check made
            connection.close()
            pytest.fail(f"check connected to {url} from {peer}: qemu-img was handed the URL")
    # SS108: libvirt's schema wants an absolute path there too.
    assert result.codes == {codes.IMAGE_UNREADABLE, codes.SCHEMA_INVALID}, result
    (finding,) = findings(result, codes.IMAGE_UNREADABLE)
    assert finding["path"] == url and "not an absolute path" in finding["message"], finding


def test_option_shaped_path_is_not_an_option(env: Env, tmp_path: Path) -> None:
    secret = tmp_path / "secret-key"
    secret.write_text("hunter2")
    path = f"--object=secret,id=s0,file={secret}"
    env.write("s1", snapshot_xml("s1", file_disk(path), entries=LISTED))
    result, trace = traced_check(env, tmp_path, "openat,execve")
    opened = [line for line in trace.splitlines() if "openat(" in line and str(secret) in line]
    assert not opened, "the option-shaped path became a qemu-img option that opened the file:\n" + "\n".join(opened)
    assert "qemu-img" not in trace, "qemu-img was run for a path that is not absolute"
    assert result.codes == {codes.IMAGE_UNREADABLE, codes.SCHEMA_INVALID}, result
    (finding,) = findings(result, codes.IMAGE_UNREADABLE)
    assert finding["path"] == path and "not an absolute path" in finding["message"], finding


def test_path_with_json_quote_and_comma_is_one_local_name(env: Env, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Text qemu would parse in a bare name or an option string stays part of a local file name."""
    folder = tmp_path / 'json:{"driver":"nbd"},file.driver=nbd,a"b'
    folder.mkdir()
    image = qcow2(folder / "disk.qcow2", "s1", "extra")
    env.write("s1", snapshot_xml("s1", file_disk(str(image)), entries=LISTED))
    result = check(env, capsys)
    assert result.codes == {codes.IMAGE_ORPHAN_SNAPSHOT}, result  # the image itself was read: "extra"
    (finding,) = findings(result, codes.IMAGE_ORPHAN_SNAPSHOT)
    assert finding["path"] == str(image) and finding["moment"] == "extra", finding


def test_fifo_image_is_never_opened(env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "disk.qcow2"
    os.mkfifo(fifo)
    env.write("s1", snapshot_xml("s1", file_disk(str(fifo)), entries=LISTED))
    started = time.monotonic()
    result = check(env, capsys)
    seconds = time.monotonic() - started
    assert seconds < FAST, f"check took {seconds:.1f} s on a FIFO image: it waited on the FIFO"
    assert result.codes == {codes.IMAGE_UNREADABLE} and result.code == 1, result
    (finding,) = findings(result, codes.IMAGE_UNREADABLE)
    assert "is a FIFO, not a disk image" in finding["message"], finding


@pytest.mark.parametrize("target, kind", [("/dev/null", "a character device"), ("DIR", "a directory")])
def test_special_files_are_findings(env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    target: str, kind: str) -> None:
    path = str(tmp_path) if target == "DIR" else target
    env.write("s1", snapshot_xml("s1", file_disk(path), entries=LISTED))
    result = check(env, capsys)
    assert result.codes == {codes.IMAGE_UNREADABLE}, result
    assert f"is {kind}, not a disk image" in findings(result, codes.IMAGE_UNREADABLE)[0]["message"], result


def test_format_is_never_probed(env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A raw file the domain calls qcow2 is read as qcow2 (and fails), not probed and read as raw."""
    image = tmp_path / "disk.qcow2"
    run(["qemu-img", "create", "-q", "-f", "raw", str(image), "1M"])
    env.write("s1", snapshot_xml("s1", file_disk(str(image)), entries=LISTED))
    result = check(env, capsys)
    assert result.codes == {codes.IMAGE_UNREADABLE}, result
    (finding,) = findings(result, codes.IMAGE_UNREADABLE)
    assert finding["message"] == f"{image} cannot be inspected: Image is not in qcow2 format", finding


def test_symlinked_image_is_followed(env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Operators link their images: the link is followed, and what it ends at is tested."""
    link = tmp_path / "disk.qcow2"
    link.symlink_to(qcow2(tmp_path / "real.qcow2", "s1"))
    env.write("s1", snapshot_xml("s1", file_disk(str(link)), entries=LISTED))
    env.write("s2", snapshot_xml("s2", file_disk(str(link)), entries=LISTED, active=False))
    result = check(env, capsys)
    assert result.codes == {codes.IMAGE_LACKS_SNAPSHOT}, result
    assert [f["moment"] for f in findings(result, codes.IMAGE_LACKS_SNAPSHOT)] == ["s2"], result


def test_symlink_to_a_fifo_is_a_finding(env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "disk.qcow2").symlink_to(tmp_path / "fifo")
    env.write("s1", snapshot_xml("s1", file_disk(str(tmp_path / "disk.qcow2")), entries=LISTED))
    started = time.monotonic()
    result = check(env, capsys)
    assert time.monotonic() - started < FAST, "check waited on the FIFO behind a symlink"
    assert result.codes == {codes.IMAGE_UNREADABLE}, result
    assert "is a FIFO" in findings(result, codes.IMAGE_UNREADABLE)[0]["message"], result


# --------------------------------------------------------------------------- internal snapshots without <disks>

def test_internal_memory_without_disks_list_is_compared(env: Env, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """full_domain.xml's shape: <memory snapshot='internal'/>, no <disks>; the image lacks the snapshot."""
    image = qcow2(tmp_path / "disk.qcow2")
    env.write("s1", snapshot_xml("s1", file_disk(str(image))))
    result = check(env, capsys)
    assert result.codes == {codes.IMAGE_LACKS_SNAPSHOT} and result.code == 3, result
    (finding,) = findings(result, codes.IMAGE_LACKS_SNAPSHOT)
    assert finding["moment"] == "s1" and finding["path"] == str(image), finding


def test_internal_memory_without_disks_list_held_by_image(env: Env, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    image = qcow2(tmp_path / "disk.qcow2", "s1", "extra")
    env.write("s1", snapshot_xml("s1", file_disk(str(image))))
    result = check(env, capsys)
    # The image was really read: its snapshot without metadata is reported.
    assert result.codes == {codes.IMAGE_ORPHAN_SNAPSHOT}, result
    assert [f["moment"] for f in findings(result, codes.IMAGE_ORPHAN_SNAPSHOT)] == ["extra"], result


def test_disk_only_snapshot_without_disks_list_is_not_internal(env: Env, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    image = qcow2(tmp_path / "disk.qcow2")
    env.write("s1", snapshot_xml("s1", file_disk(str(image)), memory="<memory snapshot='no'/>",
                                 state="disk-snapshot"))
    result = check(env, capsys)
    assert result.code == 0 and result.data["findings"] == [], result


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loop device over a qcow2 image holding s1 (skipped where losetup cannot attach one)."""
    image = qcow2(tmp_path / "backing.qcow2", "s1")
    # A loop device ignores a partial last sector, where the snapshot table may sit.
    os.truncate(image, -(-image.stat().st_size // 512) * 512)
    attached = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True,
                              timeout=TIMEOUT) if shutil.which("losetup") else None
    if attached is None or attached.returncode != 0:
        pytest.skip(f"no loop device here: {attached.stderr.strip() if attached else 'no losetup'}")
    device = attached.stdout.strip()
    try:
        yield device, image
    finally:
        subprocess.run(["losetup", "--detach", device], check=True, timeout=TIMEOUT)


def test_qcow2_on_a_block_device(env: Env, loop_device: tuple[str, Path],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    device, _ = loop_device
    env.write("s1", snapshot_xml("s1", block_disk(device), entries=LISTED))
    env.write("s2", snapshot_xml("s2", block_disk(device), entries=LISTED, active=False))
    result = check(env, capsys)
    assert result.codes == {codes.IMAGE_LACKS_SNAPSHOT}, result
    (finding,) = findings(result, codes.IMAGE_LACKS_SNAPSHOT)
    assert finding["moment"] == "s2" and finding["path"] == device, finding


# --------------------------------------------------------------------------- which disks libvirt's rules cover

A, B = "/img/a.qcow2", "/img/b.qcow2"
INTERNAL = "<memory snapshot='internal'/>"
EXTERNAL = "<memory snapshot='external' file='/img/mem'/>"
COVERED = [
    ("no <disks>: every qcow2 disk", file_disk(A) + file_disk(B, "vdb"), INTERNAL, "", "running", [A, B]),
    ("shut off, memory no: still internal", file_disk(A), "<memory snapshot='no'/>", "", "shutoff", [A]),
    ("raw disk", file_disk(A, fmt="raw"), INTERNAL, "", "running", []),
    ("read-only disk", read_only(file_disk(A)), INTERNAL, "", "running", []),
    ("cdrom is read-only", file_disk(A, device="cdrom"), INTERNAL, "", "running", []),
    ("floppy is not", file_disk(A, "fda", device="floppy"), INTERNAL, "", "running", [A]),
    ("disk's own snapshot='no'", file_disk(A, extra=" snapshot='no'") + file_disk(B, "vdb"), INTERNAL, "",
     "running", [B]),
    ("disk's own snapshot='external', unlisted", file_disk(A, extra=" snapshot='external'"), INTERNAL, "",
     "running", []),
    ("read-only but own snapshot='internal'", read_only(file_disk(A, extra=" snapshot='internal'")), INTERNAL, "",
     "running", [A]),
    ("disk-only snapshot", file_disk(A), "<memory snapshot='no'/>", "", "disk-snapshot", []),
    ("external memory", file_disk(A), EXTERNAL, "", "running", []),
    ("entry snapshot='no', other unlisted", file_disk(A) + file_disk(B, "vdb"), INTERNAL,
     "    <disk name='vda' snapshot='no'/>\n", "running", [B]),
    ("entry by source path", file_disk(A) + file_disk(B, "vdb"), INTERNAL,
     f"    <disk name='{A}' snapshot='no'/>\n", "running", [B]),
    ("listed without snapshot=: uniform internal wins over own 'external'",
     file_disk(A, extra=" snapshot='external'"), INTERNAL, "    <disk name='vda'/>\n", "running", [A]),
    ("listed without snapshot=: own 'no' still counts", file_disk(A, extra=" snapshot='no'"), INTERNAL,
     "    <disk name='vda'/>\n", "running", []),
    ("an entry naming a new file is external, and so is the default", file_disk(A) + file_disk(B, "vdb"),
     "<memory snapshot='no'/>", "    <disk name='vda'>\n      <source file='/img/a.new'/>\n    </disk>\n",
     "shutoff", []),
    ("external default, unlisted disk's own 'internal'",
     file_disk(A) + file_disk(B, "vdb",
                              extra=" snapshot='internal'"), INTERNAL, "    <disk name='vda' snapshot='external'/>\n", "running", [B]),
    ("block device", block_disk(A), INTERNAL, "", "running", [A]),
    ("network disk", "      <disk type='network' device='disk'>\n        <driver name='qemu' type='qcow2'/>\n"
     "        <source protocol='nbd' name='x'><host name='127.0.0.1' port='10899'/></source>\n"
     "        <target dev='vda' bus='virtio'/>\n      </disk>\n", INTERNAL, "", "running", []),
]


@pytest.mark.parametrize("devices, memory, entries, state, expected",
                         [case[1:] for case in COVERED], ids=[case[0] for case in COVERED])
def test_disks_an_internal_snapshot_covers(devices: str, memory: str, entries: str, state: str,
                                           expected: list[str]) -> None:
    element = etree.fromstring(snapshot_xml("s1", devices, memory, state, entries))
    assert disks.internal_images(element) == expected
