"""snapstore measured side by side with libvirt's own tools (issue 7). Run it as bench/run.

Data: a domain of real shape (two qcow2 disks, two NICs, q35 with libvirt's
controllers, VNC with a password) is defined on the system libvirtd for
every size N; its first snapshot is real (qemu-img internal snapshots of both
disks), the other N-1 are REDEFINEd from libvirt's own XML of it, so libvirtd
writes its real per-snapshot files. Tree shape: chains of 10; each chain forks
off the start of the chain ten chains back (depth ~ N/100 + 10); the last
snapshot is current. Every domain it defines (names snapbench-<pid>-<hex>-…),
daemon it starts and file it writes is removed at the end, on failure too;
libvirtd is left running.

Each figure is the median of repeated runs, commands interleaved round-robin
with the baselines they are compared with, process start included.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV = REPO / ".venv" / "bin"
SNAPSTORE = VENV / "snapstore"
PYTHON = VENV / "python"
sys.path.insert(0, str(REPO / "tests"))

import daemonproc  # noqa: E402  real snapstore daemon + notify socket (tests' helper)
import lab  # noqa: E402  embedded libvirt roots through labworker subprocesses
import labworker  # noqa: E402
import libvirt  # noqa: E402
from lxml import etree  # noqa: E402

SYSTEM_URI = "qemu:///system"
SNAPSHOT_ROOT = Path("/var/lib/libvirt/qemu/snapshot")
CHECKPOINT_ROOT = Path("/var/lib/libvirt/qemu/checkpoint")
PIDFILE = Path("/run/libvirt/libvirtd.pid")
PREFIX = "snapbench-"
DESCRIPTION = "bench snapshot"
SEGMENT = 10
MIB = 1024 * 1024
DEFAULT_HISTORY_MAX_BYTES = 256 * MIB  # snapstore/config.py's history_max_bytes
HISTORY_COMMAND_GENERATIONS = 4        # generations behind `history` and `diff` at the largest N
FLEET_HOST = "snapbench-host"          # the bench host's host_id and database role
FLEET_UP_TO_DATE = "fleet: up to date"  # STATUS= once the outbox is shipped
FLEET_DOMAINS, FLEET_MOMENTS, FLEET_GENERATIONS = 10, 100, 3  # per simulated host, domain, domain


def unit_watchdog_usec() -> int:
    """WatchdogSec= of the shipped unit: the daemon is measured as systemd runs it."""
    found = re.search(r"^WatchdogSec=(\d+)s?$", (REPO / "systemd" / "snapstore.service").read_text(), re.M)
    return int(found.group(1)) * 1_000_000 if found else 30_000_000


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


# --- cleanup -------------------------------------------------------------------------------------


class Cleanup:
    """Undo actions: the ``first`` ones in order (stop daemons, bring libvirtd
    back), then the others last-in first-out; one failing never stops the rest."""

    def __init__(self) -> None:
        self._first: list[tuple[str, Callable[[], Any]]] = []
        self._stack: list[tuple[str, Callable[[], Any]]] = []

    def push(self, what: str, action: Callable[[], Any], first: bool = False) -> None:
        (self._first if first else self._stack).append((what, action))

    def run(self) -> None:
        todo = self._first + self._stack[::-1]
        self._first, self._stack = [], []
        for what, action in todo:
            try:
                action()
            except Exception as e:  # noqa: BLE001 - report and go on with the rest
                say(f"cleanup: {what}: {type(e).__name__}: {e}")


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that cleans up


# --- the system libvirtd ------------------------------------------------------------------------


class System:
    """One connection to the system libvirtd, reopened after a restart."""

    def __init__(self) -> None:
        self._conn: libvirt.virConnect | None = None
        self.stopped_by_us = False

    def conn(self) -> libvirt.virConnect:
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                if self._conn.isAlive():
                    return self._conn
        self._conn = libvirt.open(SYSTEM_URI)
        return self._conn

    def forget(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
        self._conn = None

    def undefine(self, name: str) -> None:
        try:
            dom = self.conn().lookupByName(name)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
            raise
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                          | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)

    def libvirtd_pid(self) -> int | None:
        try:
            pid = int(PIDFILE.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def stop_libvirtd(self) -> None:
        pid = self.libvirtd_pid()
        self.forget()
        if pid is None:
            return
        self.stopped_by_us = True
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
            time.sleep(0.02)

    def start_libvirtd(self) -> float:
        """Start libvirtd; seconds until `virsh list` answers (its process start included)."""
        started = time.perf_counter()
        subprocess.run(["libvirtd", "-d", "-p", str(PIDFILE)], check=True, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while subprocess.run(["virsh", "-c", SYSTEM_URI, "list"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("libvirtd did not answer within 300 s")
            time.sleep(0.005)
        return time.perf_counter() - started

    def ensure_running(self) -> None:
        if self.libvirtd_pid() is None:
            subprocess.run([str(REPO / "scripts" / "libvirtd")], check=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- data of real shape -------------------------------------------------------------------------


DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <title>benchmark web server</title>
  <description>snapstore benchmark domain</description>
  <memory unit='MiB'>1024</memory>
  <currentMemory unit='MiB'>1024</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <clock offset='utc'><timer name='rtc' tickpolicy='catchup'/><timer name='pit' tickpolicy='delay'/>
    <timer name='hpet' present='no'/></clock>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <pm><suspend-to-mem enabled='no'/><suspend-to-disk enabled='no'/></pm>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='{disk0}'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{disk1}'/><target dev='vdb' bus='virtio'/></disk>
    <interface type='network'><mac address='{mac0}'/><source network='default'/><model type='virtio'/></interface>
    <interface type='network'><mac address='{mac1}'/><source network='default'/><model type='e1000e'/></interface>
    <serial type='pty'><target type='isa-serial' port='0'><model name='isa-serial'/></target></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <input type='tablet' bus='usb'/>
    <graphics type='vnc' port='-1' autoport='yes' passwd='bench123'><listen type='address'/></graphics>
    <video><model type='virtio' heads='1' primary='yes'/></video>
    <memballoon model='virtio'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>
"""


def domain_xml(name: str, uuid: str, images: Path) -> str:
    disks = []
    for index in range(2):
        image = images / f"{name}-{index}.qcow2"
        if not image.exists():
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
        disks.append(str(image))
    octets = uuidlib.UUID(uuid).bytes
    macs = [f"52:54:00:{octets[0]:02x}:{octets[1]:02x}:{index:02x}" for index in range(2)]
    return DOMAIN_XML.format(name=name, uuid=uuid, disk0=disks[0], disk1=disks[1], mac0=macs[0], mac1=macs[1])


def snapshot_name(index: int) -> str:
    return f"auto-{index:05d}"


def parent_index(index: int) -> int | None:
    """Chains of SEGMENT; a chain's first snapshot forks off the first of the
    chain SEGMENT chains back (the root for the first few)."""
    if index == 0:
        return None
    if index % SEGMENT:
        return index - 1
    return max(0, index - SEGMENT * SEGMENT)


def first_snapshot_xml(name: str) -> str:
    return f"<domainsnapshot><name>{name}</name><description>{DESCRIPTION}</description></domainsnapshot>"


def redefinitions(template: etree._Element, count: int) -> list[tuple[str, str]]:
    """(name, XML) of snapshots 1..count-1, made from libvirt's XML of snapshot 0."""
    created = int(template.findtext("creationTime"))
    return [(snapshot_name(i), labworker.renamed(template, snapshot_name(i), snapshot_name(parent_index(i)),
                                                 created + 60 * i))
            for i in range(1, count)]


@dataclasses.dataclass
class Domain:
    name: str
    uuid: str
    xml: str
    count: int
    build_seconds: float = 0.0

    @property
    def folder(self) -> Path:
        return SNAPSHOT_ROOT / self.name

    @property
    def current(self) -> str:
        return snapshot_name(self.count - 1)


def build_domain(system: System, cleanup: Cleanup, images: Path, name: str, count: int) -> Domain:
    """Define NAME on the system libvirtd with COUNT snapshots (one real, the rest REDEFINEd)."""
    uuid = str(uuidlib.uuid4())
    domain = Domain(name, uuid, domain_xml(name, uuid, images), count)
    cleanup.push(f"undefine {name}", lambda: system.undefine(name))
    conn = system.conn()
    dom = conn.defineXML(domain.xml)
    started = time.perf_counter()
    dom.snapshotCreateXML(first_snapshot_xml(snapshot_name(0)), 0)
    template = etree.fromstring(dom.snapshotLookupByName(snapshot_name(0))
                                .getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE).encode())
    for i, (_snap, xml) in enumerate(redefinitions(template, count), start=1):
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
        if i == count - 1:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
        dom.snapshotCreateXML(xml, flags)
        if i % 1000 == 0:
            say(f"  {name}: {i}/{count} snapshots ({time.perf_counter() - started:.0f} s)")
    domain.build_seconds = time.perf_counter() - started
    files = list(domain.folder.glob("*.xml"))
    if len(files) != count:
        raise RuntimeError(f"{domain.folder} holds {len(files)} files, expected {count}")
    return domain


# --- running and timing commands ----------------------------------------------------------------


class CommandFailed(RuntimeError):
    pass


@dataclasses.dataclass
class Sample:
    seconds: float
    maxrss_kib: int = 0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def run_timed(argv: list[str], ok: tuple[int, ...] = (0,), capture: bool = False) -> Sample:
    """One run of a command, process start included.

    No peak RSS here: a child's ru_maxrss includes its parent's high-water
    mark (spawned by vfork, exec accounts the old mm); see peak_rss_mib()."""
    with open(os.devnull, "wb") as null, \
            tempfile.TemporaryFile() as err, \
            (tempfile.TemporaryFile() if capture else contextlib.nullcontext(null)) as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _, status = os.waitpid(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        if code not in ok:
            err.seek(0)
            raise CommandFailed(f"{' '.join(argv)} exited {code}: {err.read().decode(errors='replace')[-1500:]}")
        extra = {}
        if capture:
            out.seek(0)
            extra["stdout"] = out.read()
    return Sample(seconds, 0, extra)


def peak_rss_mib(argv: list[str], ok: tuple[int, ...] = (0,)) -> float:
    """Peak RSS of one run, from GNU time (a small parent, so only the command's own)."""
    with tempfile.NamedTemporaryFile("r") as report:
        run_timed(["/usr/bin/time", "-f", "%M", "-o", report.name, *argv], ok)
        return int(report.read().split()[-1]) / 1024


@dataclasses.dataclass
class Case:
    label: str
    run: Callable[[], Sample]
    prepare: Callable[[], Any] | None = None
    warmup: bool = True


def measure(cases: list[Case], repeats: int, long_repeats: int, long_after: float = 2.0) -> dict[str, dict]:
    """Median of repeated runs, the cases interleaved round-robin; a case whose
    first run takes over long_after seconds is repeated long_repeats times."""
    samples: dict[str, list[Sample]] = {case.label: [] for case in cases}
    wanted = {case.label: repeats for case in cases}
    for case in cases:
        if case.prepare:
            case.prepare()
        first = case.run()
        if not case.warmup:
            samples[case.label].append(first)
        if first.seconds > long_after:
            wanted[case.label] = max(1, min(repeats, long_repeats))
    for _ in range(max(wanted.values())):
        for case in cases:
            if len(samples[case.label]) < wanted[case.label]:
                if case.prepare:
                    case.prepare()
                samples[case.label].append(case.run())
    return {label: stats(found) for label, found in samples.items()}


def stats(samples: list[Sample]) -> dict[str, Any]:
    seconds = [s.seconds for s in samples]
    result = {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds),
              "n": len(seconds), "samples": [round(s, 6) for s in seconds]}
    rss = [s.maxrss_kib for s in samples if s.maxrss_kib]
    if rss:
        result["maxrss_mib"] = statistics.median(rss) / 1024
    for key in sorted({key for s in samples for key in s.extra if key != "stdout"}):
        values = [s.extra[key] for s in samples if key in s.extra]
        result[key] = statistics.median(values) if all(isinstance(v, (int, float)) for v in values) else values
    return result


def bootstrap_interval(a: list[float], b: list[float], p: float, resamples: int = 2000) -> tuple[float, float]:
    """90% interval of percentile(a, p) - percentile(b, p), both resampled
    with replacement: how far the noise of this run lets the difference be read."""
    rng = random.Random(0)
    found = sorted(percentile(rng.choices(a, k=len(a)), p) - percentile(rng.choices(b, k=len(b)), p)
                   for _ in range(resamples))
    return found[resamples // 20], found[resamples - resamples // 20 - 1]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# --- the benchmark ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, cleanup: Cleanup) -> None:
        self.args = args
        self.cleanup = cleanup
        self.system = System()
        self.tag = f"{PREFIX}{os.getpid()}-{secrets.token_hex(2)}"
        self.work = Path(args.workdir) / self.tag
        self.work.mkdir(parents=True)
        cleanup.push(f"remove {self.work}", lambda: shutil.rmtree(self.work))
        # `python -m snapstore` (profiles) puts the cwd first on sys.path: not the repository's.
        os.chdir(self.work)
        cleanup.push("leave the work folder", lambda: os.chdir("/"))
        self.images = self.work / "images"
        self.images.mkdir()
        self.config = self.work / "snapstore.toml"
        daemonproc.write_config(self.config, quiet_period=args.quiet_period)
        self.state = self.work / "state"
        self.domains: dict[int, Domain] = {}
        self.results: dict[str, Any] = {"errors": []}
        self.rows: list[dict[str, Any]] = []
        self.daemons: list[daemonproc.Daemon] = []
        cleanup.push("stop daemons", self._stop_daemons, first=True)
        cleanup.push("leave libvirtd running", self.system.ensure_running, first=True)

    # --- helpers ---

    def snapstore(self, *args: str, state: Path | None = None, libvirt_dir: Path = SNAPSHOT_ROOT,
                  checkpoint_dir: Path = CHECKPOINT_ROOT, config: Path | None = None) -> list[str]:
        return [str(SNAPSTORE), "--config", str(config or self.config), "--libvirt-dir", str(libvirt_dir),
                "--checkpoint-dir", str(checkpoint_dir), "--state-dir", str(state or self.state), *args]

    def row(self, section: str, what: str, n: int | None, value: float | None, unit: str = "s",
            baseline: str = "", base_value: float | None = None, ratio: float | None = None,
            target: str = "", passed: bool | None = None, faster: bool = False) -> None:
        """One line of the table; ``ratio`` is value/baseline, or with ``faster`` baseline/value."""
        self.rows.append({"section": section, "what": what, "n": n, "value": value, "unit": unit,
                          "baseline": baseline, "baseline_value": base_value, "ratio": ratio,
                          "ratio_is_speedup": faster, "target": target, "pass": passed})

    def error(self, section: str, e: BaseException) -> None:
        say(f"{section}: FAILED: {type(e).__name__}: {e}")
        self.results["errors"].append({"section": section, "error": f"{type(e).__name__}: {e}"})
        self.row(section, f"ERROR {type(e).__name__} (see stderr and the JSON)", None, None)

    def freeze_code(self) -> dict[str, Any]:
        """Run every snapstore process on one version of the code, whatever is
        edited meanwhile: a copy of the working tree (or of HEAD) taken now,
        first on PYTHONPATH (ahead of the venv's editable install)."""
        mode = self.args.code
        if mode == "live":
            return {"code": "live working tree (not frozen)"}
        code = self.work / "code"
        if mode == "head":
            code.mkdir()
            archive = subprocess.run(["git", "archive", "HEAD", "snapstore"], cwd=REPO, check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
        else:
            shutil.copytree(REPO / "snapstore", code / "snapstore", ignore=shutil.ignore_patterns("__pycache__"))
        # Bytecode, as an installed package has it (pip compiles at install):
        # with PYTHONDONTWRITEBYTECODE set, every command would compile its
        # modules again (~20 ms of each `list`).
        subprocess.run([str(PYTHON), "-m", "compileall", "-q", str(code / "snapstore")], check=True)
        digest = hashlib.sha256()
        for path in sorted((code / "snapstore").rglob("*.py")):
            digest.update(str(path.relative_to(code)).encode() + b"\0" + path.read_bytes())
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")]))
        return {"code": f"{'HEAD' if mode == 'head' else 'working tree'} frozen at start",
                "code_sha256": digest.hexdigest()[:16]}

    def _stop_daemons(self) -> None:
        while self.daemons:
            self.daemons.pop().close()

    def start_daemon(self, libvirt_root: Path, state: Path, label: str,
                     watchdog: bool = True, config: Path | None = None) -> tuple[daemonproc.Daemon, float]:
        """The real daemon with a notify socket (and WATCHDOG_USEC as the unit
        sets it, unless not ``watchdog``); seconds from spawn to READY=1."""
        started = time.monotonic()
        daemon = daemonproc.Daemon(libvirt_root / "snapshot", libvirt_root / "checkpoint", state,
                                   config or self.config,
                                   self.work / f"daemon-{label}.log",
                                   watchdog_usec=unit_watchdog_usec() if watchdog else None)
        self.daemons.append(daemon)
        ready = daemon.wait_ready(timeout=900)
        return daemon, ready.at - started

    def variant_config(self, label: str, fleet: dict[str, Any] | None = None, **settings: int) -> Path:
        """The bench's config (the daemon's quiet period) plus integer settings,
        and a [fleet] table when ``fleet`` is given."""
        path = self.work / f"snapstore-{label}.toml"
        daemonproc.write_config(path, quiet_period=self.args.quiet_period)
        with open(path, "a") as out:
            out.writelines(f"{key} = {int(value)}\n" for key, value in settings.items())
            if fleet is not None:  # JSON's strings and booleans are TOML's
                out.writelines(["[fleet]\n", *(f"{key} = {json.dumps(value)}\n" for key, value in fleet.items())])
        return path

    def stop_daemon(self, daemon: daemonproc.Daemon) -> None:
        self.daemons.remove(daemon)
        daemon.close()

    def repeats(self, long: bool = False) -> int:
        if long:
            return self.args.long_repeats
        return self.args.repeats

    # --- data ---

    def build(self) -> None:
        sizes = sorted(set(self.args.sizes) | set(self.args.latency_sizes))
        self.results["build"] = {}
        for n in sizes:
            say(f"building {n} snapshots on {SYSTEM_URI} (REDEFINE)…")
            domain = build_domain(self.system, self.cleanup, self.images, f"{self.tag}-n{n}", n)
            self.domains[n] = domain
            sizes_ = [p.stat().st_size for p in domain.folder.glob("*.xml")]
            self.results["build"][str(n)] = {
                "domain": domain.name, "seconds": round(domain.build_seconds, 3),
                "file_bytes_mean": round(statistics.mean(sizes_)), "folder_bytes": sum(sizes_)}
            say(f"  {domain.name}: {n} snapshots in {domain.build_seconds:.1f} s, "
                f"{statistics.mean(sizes_) / 1024:.1f} KiB per file")

    # --- consolidate, check, list ---

    def store_file(self, domain: Domain, state: Path | None = None) -> Path:
        return (state or self.state) / "snapshots" / f"{domain.name}.xml"

    def consolidate_section(self, n: int) -> None:
        domain = self.domains[n]
        store = self.store_file(domain)
        floor_dir = self.work / "floor"
        floor_file = floor_dir / f"{domain.name}.xml"
        consolidate = self.snapstore("consolidate", domain.name)
        memo_state = self.work / "state-memo"  # consolidated once: check keeps and replays its memo there
        shutil.rmtree(memo_state, ignore_errors=True)
        run_timed(self.snapstore("consolidate", domain.name, state=memo_state))
        time.sleep(2.1)  # the memo is kept only of files over 2 s old (check/memo.py)
        cases = [
            Case("consolidate", lambda: run_timed(consolidate),
                 prepare=lambda: shutil.rmtree(self.state, ignore_errors=True)),  # derived files too
            Case("consolidate unchanged", lambda: run_timed(consolidate)),
            Case("check", lambda: run_timed(self.snapstore("check", domain.name, "--no-disks"), ok=(0, 1))),
            Case("check, memo kept", lambda: run_timed(
                self.snapstore("check", domain.name, "--no-disks", state=memo_state), ok=(0, 1))),
            Case("floor", lambda: self._floor([domain.folder], floor_dir),
                 prepare=lambda: floor_file.unlink(missing_ok=True)),
        ]
        found = measure(cases, self.repeats(), self.repeats(long=True))
        data = store.read_bytes()
        held = data.count(b"<domainsnapshot>")
        if held != n:
            raise RuntimeError(f"{store} holds {held} snapshots, expected {n}")
        found["store_bytes"] = len(data)
        self.results.setdefault("consolidate", {})[str(n)] = found
        floor = found["floor"]["median"]
        gated = n >= 1000
        for label, limit in (("consolidate", 1.5), ("consolidate unchanged", 1.0)):
            value = found[label]["median"]
            self.row("consolidate", f"snapstore {label}", n, value, baseline="floor", base_value=floor,
                     ratio=value / floor, target=f"≤ {limit}× floor" if gated else "",
                     passed=value / floor <= limit if gated else None)
        if not (memo_state / "index" / f"check.snapshots.{domain.name}.json").is_file():
            raise RuntimeError(f"check kept no memo in {memo_state}: the memo row measured full checks")
        for label, what in (("check", "snapstore check --no-disks, first after a commit"),
                            ("check, memo kept", "snapstore check --no-disks, files as last checked")):
            value = found[label]["median"]
            self.row("consolidate", what, n, value, baseline="floor", base_value=floor, ratio=value / floor,
                     target="≤ 0.6 s" if n == 1000 else "", passed=value <= 0.6 if n == 1000 else None)

    def _floor(self, folders: list[Path], out: Path) -> Sample:
        sample = run_timed([str(PYTHON), str(HERE / "floor.py"), str(out), *map(str, folders)], capture=True)
        sample.extra["in_process_seconds"] = json.loads(sample.extra["stdout"])["seconds"]
        return sample

    def list_section(self, n: int) -> None:
        domain = self.domains[n]
        virsh = ["virsh", "-c", SYSTEM_URI, "snapshot-list", domain.name]
        commands = {
            "snapstore list": self.snapstore("list", domain.name),
            "snapstore list --tree": self.snapstore("list", domain.name, "--tree"),
            "virsh snapshot-list": virsh,
            "virsh snapshot-list --tree": [*virsh, "--tree"],
            "virsh snapshot-list --name": [*virsh, "--name"],
        }
        self._check_listing(n, commands)
        store = self.store_file(domain)
        cases = [Case(label, lambda argv=argv: run_timed(argv)) for label, argv in commands.items()]
        cases.append(Case("snapstore list, stale index", lambda: run_timed(commands["snapstore list"]),
                          prepare=lambda: _recommit(store)))
        found = measure(cases, self.repeats(), self.repeats(long=True))
        self.results.setdefault("list", {})[str(n)] = found
        target = {1000: 5.0, 10000: 20.0}.get(n)
        for mine, theirs in (("snapstore list", "virsh snapshot-list"),
                             ("snapstore list --tree", "virsh snapshot-list --tree")):
            value, base = found[mine]["median"], found[theirs]["median"]
            gated = target is not None and mine == "snapstore list"
            self.row("list", mine, n, value, baseline=theirs, base_value=base, ratio=base / value,
                     target=f"≥ {target:g}× faster" if gated else "",
                     passed=base / value >= target if gated else None, faster=True)
        self.row("list", "snapstore list, stale index", n, found["snapstore list, stale index"]
                 ["median"], baseline="virsh snapshot-list", base_value=found["virsh snapshot-list"]["median"],
                 ratio=found["virsh snapshot-list"]["median"] / found["snapstore list, stale index"]
                 ["median"], faster=True)
        self.row("list", "virsh snapshot-list --name (reference)", n, found["virsh snapshot-list --name"]["median"])

    def _check_listing(self, n: int, commands: dict[str, list[str]]) -> None:
        """Both sides really list N snapshots before they are timed."""
        lines = run_timed(commands["snapstore list"], capture=True).extra["stdout"].decode().splitlines()
        names = run_timed(commands["virsh snapshot-list --name"], capture=True).extra["stdout"].split()
        if not n + 1 <= len(lines) <= n + 3 or len(names) != n:
            raise RuntimeError(f"snapstore list shows {len(lines) - 2} rows, virsh {len(names)} names; expected {n}")

    def scaling_rows(self) -> None:
        """Time per snapshot from N=1000 to N=10000 grows by at most 1.3× (check: 1.1×, issue 16)."""
        if not {1000, 10000} <= set(self.args.sizes):
            return
        for section, label in (("consolidate", "consolidate"), ("consolidate", "check"),
                               ("consolidate", "check, memo kept"), ("list", "snapstore list")):
            try:
                small = self.results[section]["1000"][label]["median"] / 1000
                large = self.results[section]["10000"][label]["median"] / 10000
            except KeyError:
                continue
            limit = 1.1 if label.startswith("check") else 1.3
            self.row("scaling", f"{label}: time per snapshot", 10000, large * 1e6, unit="µs",
                     baseline="same at N=1000", base_value=small * 1e6, ratio=large / small,
                     target=f"≤ {limit}×", passed=large / small <= limit)

    # --- transfer ---

    def transfer_section(self) -> None:
        count = self.args.transfer_count
        name = f"{self.tag}-xfer"
        uuid = str(uuidlib.uuid4())
        xml = domain_xml(name, uuid, self.images)
        source_lab = lab.Lab(self.work / "xfer-source")
        source = source_lab.uri
        say(f"transfer: {count} snapshots in the embedded root {source_lab.root}…")
        view = source_lab.run([{"op": "define_xml", "xml": xml},
                               {"op": "snapshot", "domain": name, "name": snapshot_name(0),
                                "description": DESCRIPTION},
                               {"op": "view", "domain": name}])[2]
        template = etree.fromstring(view["xml"][snapshot_name(0)].encode())
        steps = redefinitions(template, count)
        source_lab.run([{"op": "redefine", "domain": name, "xml": text, "current": i == len(steps) - 1}
                        for i, (_, text) in enumerate(steps)])
        self.cleanup.push(f"undefine {name}", lambda: self.system.undefine(name))

        def reset_target() -> None:
            self.system.undefine(name)
            self.system.conn().defineXML(xml)

        def verified(sample: Sample) -> Sample:
            dom = self.system.conn().lookupByName(name)
            held, current = dom.snapshotNum(0), dom.snapshotCurrent().getName()
            if held != count or current != snapshot_name(count - 1):
                raise RuntimeError(f"target holds {held} snapshots, current {current}; expected {count}")
            return sample

        dump = self.work / "xfer-dump.xml"
        transfer = self.snapstore("transfer", name, "--from", source, "--to", SYSTEM_URI, "-o", str(dump),
                                  state=self.work / "xfer-state")

        def api_loop() -> Sample:
            sample = run_timed([str(PYTHON), str(HERE / "apiloop.py"), source, SYSTEM_URI, name], capture=True)
            report = json.loads(sample.extra.pop("stdout"))
            sample.extra.update(in_process_seconds=report["seconds"], redefine_seconds=report["redefine_seconds"])
            return verified(sample)

        cases = [
            Case("snapstore transfer", lambda: verified(run_timed(transfer)), prepare=reset_target),
            Case("API loop", api_loop, prepare=reset_target),
            Case("virsh loop", lambda: verified(run_timed([str(HERE / "virsh-loop"), source, SYSTEM_URI, name])),
                 prepare=reset_target, warmup=False),
        ]
        found = measure(cases, self.repeats(), self.repeats(long=True), long_after=5.0)
        self.results["transfer"] = {"count": count, "source": "embedded root", "target": SYSTEM_URI, **found}
        value = found["snapstore transfer"]["median"]
        api, loop = found["API loop"]["median"], found["virsh loop"]["median"]
        self.row("transfer", "snapstore transfer", count, value, baseline="API loop", base_value=api,
                 ratio=value / api, target="≤ 1.5× API loop", passed=value / api <= 1.5)
        self.row("transfer", "snapstore transfer", count, value, baseline="virsh loop", base_value=loop,
                 ratio=loop / value, target="(issue: ≈15× faster)", faster=True)
        self.row("transfer", "API loop: of which target REDEFINE", count, found["API loop"].get("redefine_seconds"))
        self.system.undefine(name)

    # --- daemon ---

    def copy_roots(self, where: Path, domains: list[Domain]) -> Path:
        """A private libvirt tree (snapshot/, checkpoint/) holding copies of these domains' folders."""
        (where / "checkpoint").mkdir(parents=True)
        for domain in domains:
            shutil.copytree(domain.folder, where / "snapshot" / domain.name)
        return where

    def daemon_startup_section(self) -> None:
        domains = [self.domains[n] for n in sorted(self.domains)]
        total = sum(d.count for d in domains)
        root = self.copy_roots(self.work / "daemon-all", domains)
        state = self.work / "daemon-all-state"
        folders = [root / "snapshot" / d.name for d in domains]

        def start(label: str) -> Sample:
            daemon, seconds = self.start_daemon(root, state, label)
            status = daemon.notify.with_key("READY", "1")[0].fields.get("STATUS", "")
            hwm = _vm_hwm_kib(daemon.pid)
            self.stop_daemon(daemon)
            if f"{total} snapshots" not in status:
                raise RuntimeError(f"daemon READY with STATUS={status!r}, expected {total} snapshots")
            return Sample(seconds, hwm)

        cases = [
            Case("daemon start (empty store)", lambda: start("cold"),
                 prepare=lambda: shutil.rmtree(state, ignore_errors=True)),
            Case("daemon start (store up to date)", lambda: start("warm")),
            Case("floor over all domains", lambda: self._floor(folders, self.work / "floor-all")),
        ]
        found = measure(cases, self.repeats(), self.repeats(long=True), long_after=10.0)
        found["domains"] = {d.name: d.count for d in domains}
        self.results["daemon_start"] = found
        floor = found["floor over all domains"]["median"]
        for label in ("daemon start (empty store)", "daemon start (store up to date)"):
            value = found[label]["median"]
            self.row("daemon", f"{label} to READY=1", total, value, baseline="floor, all domains, one process",
                     base_value=floor, ratio=value / floor, target="≤ 1.5× floor", passed=value / floor <= 1.5)
        if self.args.restart_libvirtd:
            self.libvirtd_startup(total)

    def libvirtd_startup(self, total: int) -> None:
        say("restarting the system libvirtd to time its start-up with the same snapshots…")
        conn = self.system.conn()
        held = sum(dom.snapshotNum(0) for dom in conn.listAllDomains())
        samples = []
        for _ in range(self.args.libvirtd_restarts):
            self.system.stop_libvirtd()
            samples.append(Sample(self.system.start_libvirtd()))
        found = stats(samples)
        found["snapshots_held"] = held
        self.results["libvirtd_start"] = found
        self.row("daemon", "libvirtd start until `virsh list` answers (reference)", held, found["median"])

    def latency_section(self) -> None:
        for n in self.args.latency_sizes:
            self._latency(n, idle=n == max(self.args.latency_sizes))

    def _latency(self, n: int, idle: bool) -> None:
        domain = self.domains[n]
        root = self.copy_roots(self.work / f"latency-{n}", [domain])
        state = self.work / f"latency-{n}-state"
        daemon, _ = self.start_daemon(root, state, f"latency-{n}")
        store = self.store_file(domain, state)
        folder = root / "snapshot" / domain.name
        changed = self._changes([(daemon, store, folder)], self.args.latency_samples, random.Random(n))[0]
        latencies = changed["latencies"]
        cpu_per_change = changed["cpu_seconds_per_change"]
        read_per_change = changed["bytes_read_per_change"]
        files_per_change = changed["files_opened_per_change"]
        debounce = self.args.quiet_period
        floor = _durable_replace_floor(store, self.work / f"latency-{n}-floor")
        found = {"samples": [round(s, 6) for s in latencies], "p50": percentile(latencies, 50),
                 "p99": percentile(latencies, 99), "max": max(latencies), "debounce": debounce,
                 "cpu_seconds_per_change": cpu_per_change, "bytes_read_per_change": read_per_change,
                 "files_opened_per_change": files_per_change, "durable_replace_floor": floor}
        if idle:
            found["idle"] = self._idle(daemon)
        self.stop_daemon(daemon)
        if idle:  # the same daemon run by hand: no WATCHDOG_USEC in its environment
            daemon, _ = self.start_daemon(root, state, f"latency-{n}-no-watchdog", watchdog=False)
            found["idle_without_watchdog_usec"] = self._idle(daemon)
            self.stop_daemon(daemon)
        self.results.setdefault("latency", {})[str(n)] = found
        gated = n >= 1000
        for label, extra in (("p50", 0.030), ("p99", 0.150)):
            value = found[label]
            self.row("daemon", f"change-to-commit {label}", n, value, baseline="debounce", base_value=debounce,
                     target=f"≤ debounce + {extra * 1e3:.0f} ms" if gated else "",
                     passed=value <= debounce + extra if gated else None)
        self.row("daemon", "durable replace of the store file alone (reference)", n, floor * 1e3, unit="ms",
                 baseline="write, fsync, rename of the same bytes")
        self.row("daemon", "daemon CPU per change", n, cpu_per_change * 1e3, unit="ms")
        self.row("daemon", "snapshot files the daemon opens per change", n, files_per_change, unit="files",
                 target="1, not N" if gated else "", passed=files_per_change <= 2 if gated else None)
        self.row("daemon", "bytes the daemon reads per change", n, read_per_change / MIB, unit="MiB")
        if idle:
            for key, how in (("idle", "as the unit runs it"), ("idle_without_watchdog_usec", "no WATCHDOG_USEC")):
                self.row("daemon", f"idle CPU, {how} (% of one CPU)", n, found[key]["cpu_percent"], unit="%")
                self.row("daemon", f"idle wake-ups/s, {how}", n, found[key]["wakeups_per_second"], unit="/s")

    def _changes(self, targets: list[tuple[daemonproc.Daemon, Path, Path]], count: int,
                 rng: random.Random) -> list[dict[str, Any]]:
        """``count`` descriptions changed the way libvirt writes, one file at a
        time (chosen by ``rng``), 50-150 ms apart once committed: seconds from
        each rename until the store file holds it; the daemon's CPU, bytes
        read and snapshot files opened per change. ``targets``: (daemon, its
        store file, the folder it watches); with more than one, each change
        is made in every folder in turn (same file, same description; the
        order alternates), so that they share whatever else the machine does."""
        names = sorted(path.name for path in targets[0][2].glob("*.xml"))
        latencies: list[list[float]] = [[] for _ in targets]
        with contextlib.ExitStack() as stack:
            opens = [stack.enter_context(OpenCounter(folder)) for _, _, folder in targets]
            cpu_before = [_cpu_ticks(daemon.pid) for daemon, _, _ in targets]
            read_before = [_read_bytes(daemon.pid) for daemon, _, _ in targets]
            for k in range(count):
                marker = f"bench change {k} {secrets.token_hex(4)}"
                name = rng.choice(names)
                order = list(range(len(targets)))
                for i in order if k % 2 == 0 else order[::-1]:
                    daemon, store, folder = targets[i]
                    before = _identity(store)
                    renamed_at = _libvirt_write(folder / name, marker)
                    latencies[i].append(_until_store_holds(store, marker.encode(), daemon.alive, before) - renamed_at)
                    time.sleep(rng.uniform(0.05, 0.15))
            time.sleep(self.args.quiet_period)
            found = []
            for i, (daemon, _, _) in enumerate(targets):
                changes = len(latencies[i])
                # _libvirt_write opens the file once itself to read it; the rest are the daemon's.
                found.append({"latencies": latencies[i],
                              "cpu_seconds_per_change": (_cpu_ticks(daemon.pid) - cpu_before[i])
                              / os.sysconf("SC_CLK_TCK") / changes,
                              "bytes_read_per_change": (_read_bytes(daemon.pid) - read_before[i]) / changes,
                              "files_opened_per_change": (opens[i].count() - changes) / changes})
        return found

    def _idle(self, daemon: daemonproc.Daemon) -> dict[str, float]:
        time.sleep(1.0)
        seconds = self.args.idle_seconds
        ticks, switches = _cpu_ticks(daemon.pid), _context_switches(daemon.pid)
        time.sleep(seconds)
        cpu = (_cpu_ticks(daemon.pid) - ticks) / os.sysconf("SC_CLK_TCK")
        return {"seconds": seconds, "cpu_percent": 100 * cpu / seconds,
                "wakeups_per_second": (_context_switches(daemon.pid) - switches) / seconds}

    # --- peak RSS ---

    def rss_section(self) -> None:
        """Peak RSS at the largest N: dedicated runs under GNU time; the daemon's VmHWM."""
        n = max(self.args.sizes)
        domain = self.domains[n]
        state = self.work / f"rss-{n}-state"
        figures = {"consolidate": peak_rss_mib(self.snapstore("consolidate", domain.name, state=state))}
        store_bytes = self.store_file(domain, state).stat().st_size
        limit_mib = (3 * store_bytes) / MIB + 60
        for label, args, ok in (("consolidate unchanged", ("consolidate", domain.name), (0,)),
                                ("list, first run after consolidate", ("list", domain.name), (0,)),
                                ("list", ("list", domain.name), (0,)),
                                ("list --tree", ("list", domain.name, "--tree"), (0,)),
                                ("check --no-disks", ("check", domain.name, "--no-disks"), (0, 1))):
            figures[label] = peak_rss_mib(self.snapstore(*args, state=state), ok)
        figures["floor"] = peak_rss_mib([str(PYTHON), str(HERE / "floor.py"), str(self.work / "rss-floor"),
                                         str(domain.folder)])
        root = self.copy_roots(self.work / f"rss-{n}", [domain])
        daemon, _ = self.start_daemon(root, self.work / f"rss-{n}-daemon-state", f"rss-{n}")
        store = self.store_file(domain, self.work / f"rss-{n}-daemon-state")
        before = _identity(store)
        marker = f"bench rss change {secrets.token_hex(4)}"
        _libvirt_write(sorted((root / "snapshot" / domain.name).glob("*.xml"))[n // 2], marker)
        _until_store_holds(store, marker.encode(), daemon.alive, before)
        figures["daemon (start + one commit)"] = _vm_hwm_kib(daemon.pid) / 1024
        self.stop_daemon(daemon)
        self.results["rss"] = {"n": n, "store_bytes": store_bytes, "limit_mib": limit_mib,
                               **{f"{k}_mib": v for k, v in figures.items()}}
        gated = {"consolidate", "list", "daemon (start + one commit)"} if n >= 10000 else set()  # issue 7: at 10000
        for label, mib in figures.items():
            is_gated = label in gated
            self.row("rss", f"peak RSS {label}", n, mib, unit="MiB", baseline="3×file + 60 MiB",
                     base_value=limit_mib, ratio=mib / limit_mib, target="≤ 3×file + 60 MiB" if is_gated else "",
                     passed=mib <= limit_mib if is_gated else None)

    # --- history (issue 13) ---

    def history_n(self) -> int:
        """The size of the commit figures: N = 1000 (built for the daemon's latency), else the largest below it."""
        return 1000 if 1000 in self.domains else max(n for n in self.domains if n <= 1000)

    def history_data(self) -> tuple[Domain, Path, Path]:
        """A private copy of the N = 1000 folder and a state folder for it, consolidated (made once)."""
        if not hasattr(self, "_history_data"):
            domain = self.domains[self.history_n()]
            root = self.copy_roots(self.work / f"history-{domain.count}", [domain])
            state = self.work / f"history-{domain.count}-state"
            run_timed(self.snapstore("consolidate", domain.name, state=state, libvirt_dir=root / "snapshot",
                                     checkpoint_dir=root / "checkpoint"))
            self._history_data = (domain, root, state)
        return self._history_data

    def history_disk_section(self) -> None:
        """Disk used by 100 generations: 100 commits (`consolidate` after one
        description changed the way libvirt writes), history_max_bytes raised
        so that all 100 are kept; every 6th commit in between with history
        off, for the cost of a commit with and without history."""
        domain, root, state = self.history_data()
        n, wanted = domain.count, self.args.history_generations
        folder = root / "snapshot" / domain.name
        files = sorted(folder.glob("*.xml"))
        configs = {"on": self.variant_config("history-keep-all", history_max_bytes=1 << 40),
                   "off": self.variant_config("history-off", history_keep=0)}
        rng = random.Random(13)
        # "on after off": the index an off commit wrote has no digests, so the
        # next commit parses the file it replaces (apart: not the steady state).
        seconds: dict[str, list[float]] = {"on": [], "off": [], "on after off": []}
        k = 0
        while len(seconds["on"]) + len(seconds["on after off"]) < wanted:
            side = "off" if k % 6 == 5 else "on"
            _libvirt_write(rng.choice(files), f"bench history {k} {secrets.token_hex(4)}")
            seconds["on after off" if side == "on" and k % 6 == 0 and k else side].append(run_timed(self.snapstore(
                "consolidate", domain.name, state=state, libvirt_dir=root / "snapshot",
                checkpoint_dir=root / "checkpoint", config=configs[side])).seconds)
            k += 1
        history = state / "history"
        usage = _disk_usage(history)
        generations = sorted(history.rglob("*.xml"))
        store = self.store_file(domain, state)
        live = store.stat()
        live_bytes = live.st_blocks * 512
        inodes = {(p.stat().st_dev, p.stat().st_ino) for p in generations}
        if len(generations) != wanted or len(inodes) != wanted or (live.st_dev, live.st_ino) in inodes:
            raise RuntimeError(f"{history} holds {len(generations)} generation files ({len(inodes)} inodes), "
                               f"expected {wanted} distinct from the live file")
        # What the default history_max_bytes (256 MiB, snapstore/config.py) keeps of them: newest first.
        kept, total = 0, 0
        for path in sorted(generations, key=lambda p: int(p.stem), reverse=True):
            total += path.stat().st_size
            if kept and total > DEFAULT_HISTORY_MAX_BYTES:
                break
            kept += 1
        du = subprocess.run(["du", "-s", "--block-size=1", str(history)], capture_output=True, text=True)
        found = {"n": n, "generations": wanted, "store_bytes": live.st_size, "store_bytes_used": live_bytes,
                 **usage, "du_bytes": int(du.stdout.split()[0]) if du.returncode == 0 else None,
                 "kept_under_default_max_bytes": kept,
                 "consolidate_after_one_change": {side: stats([Sample(t) for t in times])
                                                  for side, times in seconds.items() if times}}
        self.results.setdefault("history", {})["disk"] = found
        per_generation = usage["generation_bytes"] / wanted
        self.row("history", f"disk used by {wanted} generations (distinct inodes, st_blocks)", n,
                 usage["total_bytes"] / MIB, unit="MiB", baseline="one consolidated file",
                 base_value=live_bytes / MIB, ratio=usage["total_bytes"] / live_bytes)
        self.row("history", "  per generation: its file (a hard link of the replaced inode)", n,
                 per_generation / MIB, unit="MiB", baseline="one consolidated file", base_value=live_bytes / MIB,
                 ratio=per_generation / live_bytes)
        self.row("history", "  per generation: its records (.json + .moments.json)", n,
                 usage["record_bytes"] / wanted / 1024, unit="KiB")
        self.row("history", f"generations the default history_max_bytes ({DEFAULT_HISTORY_MAX_BYTES // MIB} MiB) "
                 "keeps", n, kept, unit="gens", baseline="history_keep", base_value=100)
        if seconds["off"]:
            on, off = statistics.median(seconds["on"]), statistics.median(seconds["off"])
            self.row("history", "consolidate after one change, history on", n, on,
                     baseline="history off (history_keep = 0)", base_value=off, ratio=on / off)
        if seconds["on after off"]:
            value = statistics.median(seconds["on after off"])
            self.row("history", "  the same, first commit after one with history off (index without digests)",
                     n, value, baseline="history off", base_value=statistics.median(seconds["off"]),
                     ratio=value / statistics.median(seconds["off"]))

    def history_latency_section(self) -> None:
        """Change to commit with history off (history_keep = 0) and on (the
        defaults), the same machinery as the daemon section: two daemons on
        two copies of the same folder, the history-on one's state holding the
        generations made above, each change made in both folders in turn."""
        domain, root_on, state_on = self.history_data()
        n = domain.count
        off_config = self.variant_config("history-off", history_keep=0)
        root_off = self.copy_roots(self.work / f"history-off-{n}", [domain])
        state_off = self.work / f"history-off-{n}-state"
        run_timed(self.snapstore("consolidate", domain.name, state=state_off, libvirt_dir=root_off / "snapshot",
                                 checkpoint_dir=root_off / "checkpoint", config=off_config))
        found = self.on_off_latency("history", domain, (root_off, state_off, off_config),
                                    (root_on, state_on, self.config), self.args.history_samples, n + 13)
        self.results.setdefault("history", {})["latency"] = found
        self.on_off_rows("history", n, found, ("history off (history_keep = 0)", "history off"),
                         ("history on (defaults)", "history on"))

    def on_off_latency(self, label: str, domain: Domain, off_side: tuple[Path, Path, Path],
                       on_side: tuple[Path, Path, Path],
                       samples: int, seed: int, before: Callable[[daemonproc.Daemon], Any] | None = None,
                       after: Callable[[daemonproc.Daemon], Any] | None = None) -> dict[str, Any]:
        """Change to commit of two daemons, ``off_side`` and ``on_side`` (root,
        state, config), on two copies of the same folder: each change made in both
        in turn (``_changes``), after one untimed change each and both idle
        again; ``before(on daemon)`` runs once both are ready, ``after(on
        daemon)`` once the changes are made, before both stop. The p50 and
        p99 of each side, their differences with 90% bootstrap intervals, the
        paired differences (same change), CPU and bytes read per change."""
        n = domain.count
        targets = []
        for side, (root, state, config) in (("off", off_side), ("on", on_side)):
            daemon, _ = self.start_daemon(root, state, f"{label}-{side}", config=config)
            targets.append((daemon, self.store_file(domain, state), root / "snapshot" / domain.name))
        if before is not None:
            before(targets[1][0])
        rng = random.Random(seed)
        # One untimed change first: each daemon's first commit (a history-on
        # one prunes down to its limits then), and both idle again.
        self._changes(targets, 1, rng)
        for daemon, _, _ in targets:
            _settle(daemon.pid)
        runs = dict(zip(("off", "on"), self._changes(targets, samples, rng)))
        if after is not None:
            after(targets[1][0])
        for daemon, _, _ in targets:
            self.stop_daemon(daemon)
        found: dict[str, Any] = {"n": n, "debounce": self.args.quiet_period}
        for side, run in runs.items():
            latencies = run.pop("latencies")
            found[side] = {"samples": [round(t, 6) for t in latencies], "p50": percentile(latencies, 50),
                           "p99": percentile(latencies, 99), "max": max(latencies), **run}
        on, off = found["on"], found["off"]
        paired = [a - b for a, b in zip(on["samples"], off["samples"])]
        low, high = bootstrap_interval(on["samples"], off["samples"], 50)
        found.update(p50_difference=on["p50"] - off["p50"], p99_difference=on["p99"] - off["p99"],
                     p50_difference_interval_90=[low, high],
                     p99_difference_interval_90=list(bootstrap_interval(on["samples"], off["samples"], 99)),
                     paired_difference_median=statistics.median(paired),
                     paired_difference_quartiles=statistics.quantiles(paired, n=4))
        return found

    def on_off_rows(self, section: str, n: int, found: dict[str, Any], off_names: tuple[str, str],
                    on_names: tuple[str, str], limit: float = 0.002) -> None:
        """The rows of ``on_off_latency``; names: (in a row of its own, as a baseline).
        A verdict on the p50 difference only when the noise allows one: the
        90% interval wholly on one side of ``limit``."""
        on, off = found["on"], found["off"]
        (off_name, off_short), (on_name, on_short) = off_names, on_names
        samples = len(on["samples"])
        for label in ("p50", "p99"):
            self.row(section, f"change-to-commit {label}, {off_name}", n, off[label],
                     baseline="debounce", base_value=self.args.quiet_period)
            self.row(section, f"change-to-commit {label}, {on_name}", n, on[label],
                     baseline=off_short, base_value=off[label], ratio=on[label] / off[label])
        low, high = found["p50_difference_interval_90"]
        resolved = high <= limit or low > limit
        target = f"≤ +{limit * 1e3:g} ms"
        self.row(section, f"change-to-commit p50, on − off ({samples} changes each; 90% bootstrap interval "
                 f"{low * 1e3:+.1f} … {high * 1e3:+.1f} ms)", n, found["p50_difference"] * 1e3, unit="ms",
                 target=target if resolved else f"{target} (not resolved)",
                 passed=(high <= limit) if resolved else None)
        self.row(section, "change-to-commit p99, on − off", n, found["p99_difference"] * 1e3, unit="ms")
        self.row(section, "change-to-commit, median of the paired differences (on − off, same change)", n,
                 found["paired_difference_median"] * 1e3, unit="ms")
        self.row(section, f"daemon CPU per change, {on_short}", n, on["cpu_seconds_per_change"] * 1e3, unit="ms",
                 baseline=off_short, base_value=off["cpu_seconds_per_change"] * 1e3,
                 ratio=on["cpu_seconds_per_change"] / off["cpu_seconds_per_change"])
        self.row(section, f"bytes the daemon reads per change, {on_short}", n, on["bytes_read_per_change"] / MIB,
                 unit="MiB", baseline=off_short, base_value=off["bytes_read_per_change"] / MIB,
                 ratio=on["bytes_read_per_change"] / off["bytes_read_per_change"])

    def history_commands_section(self) -> None:
        """`history DOM` and `diff DOM` at the largest N, a few generations
        made by `consolidate` after one change each; `list DOM` the baseline.
        Also `diff -v` (parses both files) and `diff` once `list` has rebuilt
        a stale index (the store file replaced behind snapstore's back)."""
        n = max(self.domains)
        domain = self.domains[n]
        root = self.copy_roots(self.work / f"history-commands-{n}", [domain])
        state = self.work / f"history-commands-{n}-state"
        folder = root / "snapshot" / domain.name
        rng = random.Random(n + 1)

        def snapstore(*args: str) -> list[str]:
            return self.snapstore(*args, state=state, libvirt_dir=root / "snapshot", checkpoint_dir=root / "checkpoint")

        gens = HISTORY_COMMAND_GENERATIONS
        run_timed(snapstore("consolidate", domain.name))
        for k, path in enumerate(rng.sample(sorted(folder.glob("*.xml")), gens)):  # a different file each time
            _libvirt_write(path, f"bench history command {k} {secrets.token_hex(4)}")
            run_timed(snapstore("consolidate", domain.name))
        commands = {
            "snapstore list": snapstore("list", domain.name),
            "snapstore history": snapstore("history", domain.name),
            "snapstore history --json": snapstore("history", domain.name, "--json"),
            "snapstore diff": snapstore("diff", domain.name),
            "snapstore diff 1 GEN": snapstore("diff", domain.name, "1", str(gens)),
            "snapstore diff -v": snapstore("diff", domain.name, "-v"),
        }
        shown = {label: run_timed(argv, capture=True).extra["stdout"].decode() for label, argv in commands.items()}
        if len(shown["snapstore history"].splitlines()) != gens + 1 or \
                f"generation {gens} -> live: ~1" not in shown["snapstore diff"] or \
                f"generation 1 -> {gens}: ~{gens - 1}" not in shown["snapstore diff 1 GEN"]:
            raise RuntimeError(f"unexpected output: {shown['snapstore history']!r} {shown['snapstore diff']!r} "
                               f"{shown['snapstore diff 1 GEN']!r}")
        cases = [Case(label, lambda argv=argv: run_timed(argv)) for label, argv in commands.items()]
        found = measure(cases, self.repeats(), self.repeats(long=True))
        # Last and apart: once `list` has rebuilt a stale index from the file,
        # the index holds no digests and `diff` parses the live file.
        store = self.store_file(domain, state)
        found.update(measure([Case("snapstore diff, stale index", lambda: run_timed(commands["snapstore diff"]),
                                   prepare=lambda: (_recommit(store), run_timed(commands["snapstore list"])))],
                             self.repeats(), self.repeats(long=True)))
        found["generations"] = gens
        found["store_bytes"] = store.stat().st_size
        self.results.setdefault("history", {})["commands"] = {str(n): found}
        base = found["snapstore list"]["median"]
        gated = n >= 10000
        self.row("history", "snapstore list (baseline)", n, base)
        for label in ("snapstore history", "snapstore diff", "snapstore history --json", "snapstore diff 1 GEN",
                      "snapstore diff -v", "snapstore diff, stale index"):
            value = found[label]["median"]
            target = label in ("snapstore history", "snapstore diff")
            self.row("history", f"{label} ({gens} generations)" if label == "snapstore history" else label, n, value,
                     baseline="snapstore list", base_value=base, ratio=value / base,
                     target=("≤ 0.5 s" if gated else "(≤ 0.5 s at N=10000)") if target else "",
                     passed=value <= 0.5 if gated and target else None)

    # --- fleet: replication to PostgreSQL ---

    def fleet_server(self) -> Any:
        """The tests' PostgreSQL 15 (tests/support/postgres.py: initdb'd as
        postgres in a temp folder, a free port, fsync off), started once."""
        if not hasattr(self, "_postgres"):
            from support.postgres import Postgres

            say("fleet: starting PostgreSQL 15 (tests/support/postgres.py)…")
            self._postgres = Postgres()
            self.cleanup.push("stop PostgreSQL", self._postgres.close)
        return self._postgres

    def fleet_database(self) -> Any:
        """A new database, its schema made by `snapstore fleet init` as the
        owner, and the bench host's login role (a member of snapstore_host)."""
        from support.postgres import Fleet

        db = Fleet(self.fleet_server())
        run_timed(self.snapstore("fleet", "init", "--dsn", db.admin_dsn))
        db.add_host(FLEET_HOST)
        return db

    def fleet_config(self, label: str, db: Any) -> Path:
        return self.variant_config(label, fleet={"enabled": True, "dsn": db.host_dsn(FLEET_HOST),
                                                 "host_id": FLEET_HOST})

    def fleet_ship_section(self) -> None:
        """Generations shipped per second from one host: ``--fleet-generations``
        commits of the N = 100 domain by `consolidate` with [fleet] enabled
        (one description changed before each), so the outbox holds them all;
        then the daemon, timed from spawn until STATUS= says `fleet: up to
        date` (and until the outbox is found empty). Before each run the
        outbox is queued again (hard links kept aside) and the database
        emptied. Baseline: bench/pgloop.py inserting the same files,
        compressed, into a scratch table, in one process."""
        n = min(self.domains, key=lambda size: abs(size - 100))
        domain = self.domains[n]
        wanted = self.args.fleet_generations
        db = self.fleet_database()
        config = self.fleet_config("fleet-ship", db)
        root = self.copy_roots(self.work / f"fleet-ship-{n}", [domain])
        state = self.work / f"fleet-ship-{n}-state"
        files = sorted((root / "snapshot" / domain.name).glob("*.xml"))
        consolidate = self.snapstore("consolidate", domain.name, state=state, libvirt_dir=root / "snapshot",
                                     checkpoint_dir=root / "checkpoint", config=config)
        say(f"fleet: queueing {wanted} generations of {n} snapshots (`consolidate` after one change each)…")
        rng = random.Random(n + 17)
        commits = []
        for k in range(wanted):
            if k:
                _libvirt_write(rng.choice(files), f"bench fleet {k} {secrets.token_hex(4)}")
            commits.append(run_timed(consolidate).seconds)
        outbox = state / "outbox"
        if len(list(outbox.glob("*.json"))) != wanted:
            raise RuntimeError(f"{outbox} holds {len(list(outbox.glob('*.json')))} entries, expected {wanted}")
        kept = self.work / "fleet-ship-queued"  # the entries again, for every run
        kept.mkdir()
        for path in outbox.iterdir():
            if path.is_file():
                os.link(path, kept / path.name)
        contents = sorted(str(path) for path in kept.glob("*.xml"))
        queued_bytes = sum(os.path.getsize(path) for path in contents)
        table = "snapbench_loop"
        with db.server.admin(db.dbname) as conn:
            conn.execute(f"CREATE TABLE {table} (name text PRIMARY KEY, size bigint NOT NULL, "
                         "compressed bytea NOT NULL)")

        def requeue() -> None:
            for path in outbox.iterdir():
                if path.is_file():
                    path.unlink()
            shutil.rmtree(outbox / "shipped", ignore_errors=True)
            for path in kept.iterdir():
                os.link(path, outbox / path.name)
            with db.server.admin(db.dbname) as conn:
                conn.execute("TRUNCATE snapstore.domains, snapstore.generations, snapstore.contents, "
                             "snapstore.hosts")

        early: list[int] = []  # per run: STATUS= said up to date before the outbox was empty

        def drain() -> Sample:
            started = time.monotonic()
            daemon = daemonproc.Daemon(root / "snapshot", root / "checkpoint", state, config,
                                       self.work / "daemon-fleet-ship.log", watchdog_usec=unit_watchdog_usec())
            self.daemons.append(daemon)
            try:
                emptied = _until_up_to_date(daemon, outbox, timeout=900)
                statuses = [m for m in daemon.notify.all() if "STATUS" in m.fields]  # before STATUS=stopping
            finally:
                self.stop_daemon(daemon)
            final = len(statuses)  # the last run of statuses saying so: the one that stayed
            while final and FLEET_UP_TO_DATE in statuses[final - 1].fields["STATUS"]:
                final -= 1
            early.append(sum(FLEET_UP_TO_DATE in m.fields["STATUS"] for m in statuses[:final]))
            held = db.query("SELECT count(*) FROM snapstore.generations")[0][0]
            if held != wanted:
                raise RuntimeError(f"the database holds {held} generations, expected {wanted}")
            ready = daemon.notify.with_key("READY", "1")[0].at
            return Sample(statuses[final].at - started, 0, {
                "outbox_empty_seconds": emptied - started, "ready_seconds": ready - started,
                "status_lag_seconds": statuses[final].at - emptied,
                "statuses": [(round(m.at - started, 3), m.fields["STATUS"]) for m in statuses]})

        def loop() -> Sample:
            sample = run_timed([str(PYTHON), str(HERE / "pgloop.py"), "insert", db.admin_dsn, table, *contents],
                               capture=True)
            sample.extra["in_process_seconds"] = json.loads(sample.extra.pop("stdout"))["seconds"]
            return sample

        def empty_table() -> None:
            with db.server.admin(db.dbname) as conn:
                conn.execute(f"TRUNCATE {table}")

        cases = [Case("daemon", drain, prepare=requeue), Case("bare insert loop", loop, prepare=empty_table)]
        found = measure(cases, self.repeats(), self.repeats(long=True), long_after=600.0)
        compressed = db.query("SELECT sum(octet_length(compressed)) FROM snapstore.contents")[0][0]
        found.update(n=n, generations=wanted, queued_bytes=queued_bytes, compressed_bytes=int(compressed),
                     up_to_date_before_empty=early,
                     consolidate_seconds=stats([Sample(t) for t in commits]))
        self.results.setdefault("fleet", {})["ship"] = found
        daemon, base = found["daemon"], found["bare insert loop"]
        if any(early):
            say(f"fleet: STATUS= said `{FLEET_UP_TO_DATE}` before the outbox was empty (times, per run: {early})")
        rate, base_rate = wanted / daemon["median"], wanted / base["median"]
        what = f"{wanted} generations"
        self.row("fleet", f"generations shipped per second: daemon spawn to STATUS `{FLEET_UP_TO_DATE}` ({what})",
                 n, rate, unit="gen/s", baseline="bare psycopg insert loop", base_value=base_rate,
                 ratio=rate / base_rate, faster=True)
        rate_empty = wanted / daemon["outbox_empty_seconds"]
        self.row("fleet", "  the same, to the outbox found empty (polled every 5 ms)", n, rate_empty, unit="gen/s",
                 baseline="bare psycopg insert loop", base_value=base_rate, ratio=rate_empty / base_rate, faster=True)
        self.row("fleet", f"  time to ship {what}: spawn to STATUS", n, daemon["median"],
                 baseline="bare loop", base_value=base["median"], ratio=daemon["median"] / base["median"])
        self.row("fleet", "  of which spawn to READY=1 (reference)", n, daemon["ready_seconds"])
        self.row("fleet", "  STATUS= after the outbox emptied (the main loop's wake-up)", n,
                 daemon["status_lag_seconds"] * 1e3, unit="ms")
        self.row("fleet", "  bare loop in-process, connect included (reference)", n, base["in_process_seconds"])
        self.row("fleet", f"  runs whose STATUS= said `{FLEET_UP_TO_DATE}` while entries were queued", n,
                 sum(1 for count in early if count), unit="runs", baseline="runs (warm-up included)",
                 base_value=len(early), target="0", passed=not any(early))
        self.row("fleet", f"  contents in the database, compressed ({what})", n, compressed / MIB, unit="MiB",
                 baseline="the files", base_value=queued_bytes / MIB, ratio=compressed / queued_bytes)
        self.row("fleet", "  `consolidate` with [fleet] enabled, per generation queued (reference)", n,
                 statistics.median(commits))

    def fleet_scale_section(self) -> None:
        """`fleet list --json` and `fleet check --json` over ``--fleet-hosts``
        simulated hosts × 10 domains × 100 snapshots, the rows made in the
        database by SQL as the owner (see fleet_rows). Baseline: the same
        SELECTs (noted from snapstore's own calls) run bare by bench/pgloop.py."""
        from snapstore import config as settings
        from snapstore.check import findings
        from snapstore.fleet import view

        hosts = self.args.fleet_hosts
        db = self.fleet_database()
        config = self.fleet_config("fleet-scale", db)
        say(f"fleet: {hosts} hosts × {FLEET_DOMAINS} domains × {FLEET_MOMENTS} snapshots in the database…")
        started = time.perf_counter()
        with db.server.admin(db.dbname) as conn:
            for statement in fleet_rows(hosts):
                conn.execute(statement)  # our own SQL, integers only
        built = time.perf_counter() - started
        expected = fleet_findings(hosts)
        queries = {}
        import psycopg

        with psycopg.connect(db.host_dsn(FLEET_HOST)) as conn:
            for label, call in (("list", lambda c: view.domains(c)),
                                ("check", lambda c: view.check(c, findings.Report(),
                                                               settings.Config().fleet_stale_after, None))):
                noted = _NotedConnection(conn)
                call(noted)
                queries[label] = self.work / f"fleet-{label}-queries.json"
                queries[label].write_text(json.dumps(noted.statements))
        state = self.work / "fleet-scale-state"  # no local domains: the fleet's findings only
        commands = {"list": self.snapstore("fleet", "list", "--json", state=state, config=config),
                    "check": self.snapstore("fleet", "check", "--json", state=state, config=config)}
        listed = json.loads(run_timed(commands["list"], capture=True).extra["stdout"])
        checked = json.loads(run_timed(commands["check"], ok=(0, 1, 3), capture=True).extra["stdout"])
        codes = collections.Counter(f["code"] for f in checked["findings"])
        if len(listed["domains"]) != hosts * FLEET_DOMAINS or dict(codes) != expected:
            raise RuntimeError(f"fleet list shows {len(listed['domains'])} domains, check {dict(codes)}; "
                               f"expected {hosts * FLEET_DOMAINS} and {expected}")

        def bare(label: str) -> Sample:
            sample = run_timed([str(PYTHON), str(HERE / "pgloop.py"), "query", db.host_dsn(FLEET_HOST),
                                str(queries[label])], capture=True)
            sample.extra["in_process_seconds"] = json.loads(sample.extra.pop("stdout"))["seconds"]
            return sample

        cases = [Case("snapstore fleet list --json", lambda: run_timed(commands["list"])),
                 Case("list: bare SELECT", lambda: bare("list")),
                 Case("snapstore fleet check --json", lambda: run_timed(commands["check"], ok=(0, 1, 3))),
                 Case("check: bare SELECTs", lambda: bare("check"))]
        found = measure(cases, self.repeats(), self.repeats(long=True), long_after=10.0)
        found.update(hosts=hosts, domains=hosts * FLEET_DOMAINS, moments=FLEET_MOMENTS,
                     generations_per_domain=FLEET_GENERATIONS, build_seconds=built, findings=dict(codes))
        self.results.setdefault("fleet", {})["scale"] = found
        shared = expected.get("SS601", 0) + expected.get("SS602", 0)
        for label, base_label, what in (
                ("snapstore fleet list --json", "list: bare SELECT", f"{hosts:,} hosts × {FLEET_DOMAINS} domains"),
                ("snapstore fleet check --json", "check: bare SELECTs",
                 f"{shared} uuids on two hosts, {expected.get('SS603', 0)} stale hosts")):
            value, base = found[label]["median"], found[base_label]["median"]
            self.row("fleet", f"{label} ({what})", FLEET_MOMENTS, value,
                     baseline="the same SQL, psycopg in one process", base_value=base, ratio=value / base)
            self.row("fleet", f"  {base_label} in-process, connect included (reference)", FLEET_MOMENTS,
                     found[base_label]["in_process_seconds"])

    def fleet_latency_section(self) -> None:
        """Change to commit at N = 1000 with replication off (the defaults,
        history on) and on ([fleet] enabled, the database on this machine),
        as the history section measures history on and off; afterwards every
        generation committed must be in the database."""
        n = self.history_n()
        domain = self.domains[n]
        db = self.fleet_database()
        sides = {}
        for side, config in (("off", self.config), ("on", self.fleet_config("fleet-on", db))):
            root = self.copy_roots(self.work / f"fleet-{side}-{n}", [domain])
            state = self.work / f"fleet-{side}-{n}-state"
            run_timed(self.snapstore("consolidate", domain.name, state=state, libvirt_dir=root / "snapshot",
                                     checkpoint_dir=root / "checkpoint", config=config))
            sides[side] = (root, state, config)
        shipped: dict[str, Any] = {}

        def up_to_date(daemon: daemonproc.Daemon) -> None:
            _until_up_to_date(daemon, sides["on"][1] / "outbox", timeout=300)

        def count(daemon: daemonproc.Daemon) -> None:
            up_to_date(daemon)
            shipped["generations"], shipped["newest"] = db.query(
                "SELECT count(*), max(generation) FROM snapstore.generations WHERE host_id = %s", FLEET_HOST)[0]

        samples = self.args.fleet_samples
        found = self.on_off_latency("fleet", domain, sides["off"], sides["on"], samples, n + 29,
                                    before=up_to_date, after=count)
        committed = samples + 2  # `consolidate`, the untimed change, the timed ones
        found.update(shipped=shipped, committed=committed)
        self.results.setdefault("fleet", {})["latency"] = found
        self.on_off_rows("fleet", n, found, ("replication off (history on)", "replication off"),
                         ("replication on ([fleet] enabled)", "replication on"))
        self.row("fleet", "generations in the database after the changes", n, shipped["generations"], unit="gens",
                 baseline="committed", base_value=committed, target="all",
                 passed=shipped["generations"] == committed == shipped["newest"])

    # --- profiles ---

    def profile(self, out: Path) -> None:
        """cProfile of snapstore's commands at the largest N (and the daemon's start)."""
        import pstats
        out.mkdir(parents=True, exist_ok=True)
        n = max(self.args.sizes)
        domain = self.domains[n]
        state = self.work / "profile-state"
        store = self.store_file(domain, state)
        runs = {
            f"consolidate-{n}": self.snapstore("consolidate", domain.name, state=state),
            f"consolidate-unchanged-{n}": self.snapstore("consolidate", domain.name, state=state),
            f"list-{n}": self.snapstore("list", domain.name, state=state),
            f"list-tree-{n}": self.snapstore("list", domain.name, "--tree", state=state),
            f"check-{n}": self.snapstore("check", domain.name, "--no-disks", state=state),
        }
        for label, argv in runs.items():
            prof = out / f"{label}.prof"
            run_timed([str(PYTHON), "-m", "cProfile", "-o", str(prof), "-m", "snapstore", *argv[1:]], ok=(0, 1))
            with open(out / f"{label}.txt", "w") as text:
                for order in ("cumulative", "tottime"):
                    pstats.Stats(str(prof), stream=text).sort_stats(order).print_stats(30)
            say(f"profile: {out / label}.txt")
        store.unlink(missing_ok=True)
        self.profile_daemon(out, max(self.args.latency_sizes))

    def profile_daemon(self, out: Path, n: int, changes: int = 20) -> None:
        """cProfile of the daemon: start (empty store) to READY=1, then ``changes`` commits."""
        import pstats
        domain = self.domains[n]
        root = self.copy_roots(self.work / f"profile-daemon-{n}", [domain])
        state = self.work / f"profile-daemon-{n}-state"
        prof = out / f"daemon-{n}.prof"
        notify = daemonproc.NotifySocket()
        env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(unit_watchdog_usec())}
        argv = self.snapstore("daemon", state=state, libvirt_dir=root / "snapshot", checkpoint_dir=root / "checkpoint")
        proc = subprocess.Popen([str(PYTHON), "-m", "cProfile", "-o", str(prof), "-m", "snapstore", *argv[1:]],
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            daemonproc.wait_for(lambda: notify.with_key("READY", "1") or proc.poll() is not None, 900)
            files = sorted((root / "snapshot" / domain.name).glob("*.xml"))
            store = self.store_file(domain, state)
            for k in range(changes):
                marker = f"bench profile change {k}"
                before = _identity(store)
                _libvirt_write(files[k * len(files) // changes], marker)
                _until_store_holds(store, marker.encode(), lambda: proc.poll() is None, before)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            notify.close()
        with open(out / f"daemon-{n}.txt", "w") as text:
            print(f"daemon: start with {n} snapshots (empty store), then {changes} changes", file=text)
            for order in ("cumulative", "tottime"):
                pstats.Stats(str(prof), stream=text).sort_stats(order).print_stats(30)
        say(f"profile: {out}/daemon-{n}.txt")


# --- /proc readings -----------------------------------------------------------------------------


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _settle(pid: int, quiet: float = 0.5, timeout: float = 120.0) -> None:
    """Until the process has used no CPU for ``quiet`` seconds (its work after a commit done)."""
    deadline = time.monotonic() + timeout
    ticks = _cpu_ticks(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = _cpu_ticks(pid)
        if now == ticks:
            return
        ticks = now
    raise RuntimeError(f"process {pid} still busy after {timeout} s")


def _context_switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
    return total


def _proc_field(pid: int, file: str, key: str) -> int:
    """The number after ``key:`` in /proc/PID/FILE (0 when absent)."""
    for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def _read_bytes(pid: int) -> int:
    """Bytes the process read through read(2) and the like (rchar)."""
    return _proc_field(pid, "io", "rchar")


class OpenCounter:
    """Counts opens of *.xml files in one folder (inotify IN_OPEN), whoever opens them."""

    IN_OPEN = 0x20
    _HEADER = 16  # struct inotify_event: int wd; uint32 mask, cookie, len; char name[len]

    def __init__(self, folder: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or self._libc.inotify_add_watch(self.fd, os.fsencode(folder), self.IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {folder}")

    def __enter__(self) -> OpenCounter:
        return self

    def __exit__(self, *_: Any) -> None:
        os.close(self.fd)

    def count(self) -> int:
        """Opens of *.xml files since the watch began (drains the queue)."""
        found = getattr(self, "_found", 0)
        while True:
            try:
                data = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                break
            offset = 0
            while offset < len(data):
                length = int.from_bytes(data[offset + 12:offset + 16], sys.byteorder)
                name = data[offset + self._HEADER:offset + self._HEADER + length].rstrip(b"\0")
                found += name.endswith(b".xml")
                offset += self._HEADER + length
        self._found = found
        return found


def _vm_hwm_kib(pid: int) -> int:
    """Peak RSS of the process's current image (reset by exec, unlike ru_maxrss)."""
    return _proc_field(pid, "status", "VmHWM")


def _libvirt_write(path: Path, marker: str) -> float:
    """Change a snapshot's description the way libvirt writes (<name>.xml.new,
    fsync, rename); perf_counter() at the rename."""
    data = re.sub(rb"<description>.*?</description>", f"<description>{marker}</description>".encode(),
                  path.read_bytes(), count=1, flags=re.S)
    temp = path.with_name(path.name + ".new")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    renamed_at = time.perf_counter()
    os.rename(temp, path)
    return renamed_at


def _recommit(path: Path) -> None:
    """Replace a store file by a copy of itself (a new inode) behind snapstore's
    back, as a restored backup would: the list index no longer matches it."""
    temp = path.with_name(f".snapbench-{path.name}")
    shutil.copy2(path, temp)
    os.replace(temp, path)


def _durable_replace_floor(store: Path, scratch: Path, repeats: int = 15) -> float:
    """Median seconds until a replacement of ``store``'s bytes is visible, done
    the least durable way (temp, write, fsync, rename; the folder fsync and
    freeing the old file come after): the part of a commit the disk sets."""
    data = store.read_bytes()
    scratch.mkdir(exist_ok=True)
    target, temp = scratch / "store.xml", scratch / "store.xml.tmp"
    target.write_bytes(data)
    times = []
    for _ in range(repeats):
        old = os.open(target, os.O_RDONLY)
        started = time.perf_counter()
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.rename(temp, target)
        times.append(time.perf_counter() - started)
        folder = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(folder)
        os.close(folder)
        os.close(old)
    shutil.rmtree(scratch)
    return statistics.median(times)


def _disk_usage(folder: Path) -> dict[str, int]:
    """Bytes used under ``folder`` as du counts them: st_blocks × 512 of each
    distinct inode (folders included); generation files (*.xml) and records apart."""
    seen: set[tuple[int, int]] = set()
    usage = {"total_bytes": 0, "generation_bytes": 0, "record_bytes": 0, "folder_bytes": 0, "files": 0}
    for path in [folder, *folder.rglob("*")]:
        info = path.lstat()
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        used = info.st_blocks * 512
        usage["total_bytes"] += used
        if path.is_dir():
            usage["folder_bytes"] += used
        else:
            usage["files"] += 1
            usage["generation_bytes" if path.suffix == ".xml" else "record_bytes"] += used
    return usage


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def _until_store_holds(store: Path, marker: bytes, alive: Callable[[], bool], seen: Any = None,
                       timeout: float = 60.0) -> float:
    """perf_counter() when the store file (other than ``seen``, its identity
    before the change) first holds marker; polled every millisecond."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        identity = _identity(store)
        if identity is not None and identity != seen:
            now = time.perf_counter()
            seen = identity
            if marker in store.read_bytes():
                return now
        if not alive():
            raise RuntimeError(f"the daemon died before {store} reflected the change")
        time.sleep(0.001)
    raise RuntimeError(f"{store} did not reflect the change within {timeout} s")


# --- the fleet's simulated hosts ----------------------------------------------------------------


def fleet_rows(hosts: int) -> list[str]:
    """SQL, run as the owner, for ``hosts`` simulated hosts (sim-00001…), each
    with FLEET_DOMAINS domains of FLEET_MOMENTS snapshots, FLEET_GENERATIONS
    generations each (the newest in snapstore.domains). Three contents: the
    same digests, one snapshot changed, the last one renamed. Host 2k's
    domain 0 is host 2k-1's (same name, same uuid): for odd k a diverged
    copy (another content, SS601), for even k the same (SS602). Every 50th
    host was last seen two hours ago (SS603), the others within ten minutes."""
    hosts, m, d, g = int(hosts), FLEET_MOMENTS, FLEET_DOMAINS, FLEET_GENERATIONS
    return [
        f"""INSERT INTO snapstore.hosts (host_id, last_seen, version)
            SELECT format('sim-%s', lpad(h::text, 5, '0')),
                   now() - CASE WHEN h % 50 = 0 THEN interval '2 hours' ELSE make_interval(secs => h % 600) END,
                   'snapbench'
            FROM generate_series(1, {hosts}) h""",
        f"""CREATE TEMP TABLE variants AS
            SELECT v, encode(sha256(convert_to('snapbench content ' || v, 'UTF8')), 'hex') AS sha256,
                   (SELECT jsonb_object_agg(format('auto-%s', lpad((i + (v = 2 AND i = {m - 1})::int)::text, 5, '0')),
                                            left(encode(sha256(convert_to(i || CASE WHEN v = 1 AND i = {m // 2}
                                                 THEN ' changed' ELSE '' END, 'UTF8')), 'hex'), 16))
                    FROM generate_series(0, {m - 1}) i) AS digests
            FROM generate_series(0, 2) v""",
        f"""INSERT INTO snapstore.contents (sha256, size, compressed)
            SELECT sha256, 6800 * {m}, convert_to(repeat(sha256, 100), 'UTF8') FROM variants""",
        f"""CREATE TEMP TABLE sim AS
            SELECT format('sim-%s', lpad(h::text, 5, '0')) AS host_id,
                   format('vm-%s-%s', lpad(o::text, 5, '0'), d) AS domain,
                   (o + d + (d = 0 AND h % 2 = 0 AND (h / 2) % 2 = 1)::int) % 3 AS variant
            FROM generate_series(1, {hosts}) h CROSS JOIN generate_series(0, {d - 1}) d
            CROSS JOIN LATERAL (SELECT CASE WHEN d = 0 AND h % 2 = 0 THEN h - 1 ELSE h END AS o) owner""",
        f"""INSERT INTO snapstore.generations (host_id, kind, domain, generation, uuid, sha256, moments, current,
                                               digests, committed_at, committed_by)
            SELECT s.host_id, 'snapshot', s.domain, g, md5(s.domain)::uuid, v.sha256, {m}, 'auto-{m - 1:05d}',
                   v.digests, now() - make_interval(hours => {g} - g), 'snapbench'
            FROM sim s JOIN variants v ON v.v = s.variant CROSS JOIN generate_series(1, {g}) g""",
        f"""INSERT INTO snapstore.domains (host_id, kind, domain, generation, uuid, moments, current, committed_at)
            SELECT host_id, kind, domain, generation, uuid, moments, current, committed_at
            FROM snapstore.generations WHERE generation = {g}""",
        "ANALYZE snapstore.hosts, snapstore.contents, snapstore.generations, snapstore.domains",
    ]


def fleet_findings(hosts: int) -> dict[str, int]:
    """The findings `fleet check` must report on fleet_rows(hosts), by code."""
    pairs = hosts // 2
    found = {"SS601": (pairs + 1) // 2, "SS602": pairs // 2, "SS603": hosts // 50}
    return {code: count for code, count in found.items() if count}


class _NotedConnection:
    """A psycopg connection that notes each statement run through it, for the baseline to run them bare."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.statements: list[list[Any]] = []

    def execute(self, query: str, params: Any = None) -> Any:
        self.statements.append([query, params])
        return self._conn.execute(query, params)


def _until_up_to_date(daemon: daemonproc.Daemon, outbox: Path, timeout: float) -> float:
    """monotonic() when ``outbox`` was first found without a queued entry
    (polled every 5 ms), returned once STATUS= says so too."""
    deadline = time.monotonic() + timeout
    emptied = None
    while True:
        now = time.monotonic()
        if emptied is None and not any(name.endswith(".json") for name in os.listdir(outbox)):
            emptied = now
        if emptied is not None and FLEET_UP_TO_DATE in (daemon.notify.last_status() or ""):
            return emptied
        if not daemon.alive() or now > deadline:
            raise RuntimeError(f"no `{FLEET_UP_TO_DATE}` within {timeout} s: {daemon.describe()}")
        time.sleep(0.005)


# --- stale leftovers of killed runs -------------------------------------------------------------


def sweep_stale(system: System, workdir: Path) -> None:
    pattern = re.compile(rf"^{PREFIX}(\d+)-[0-9a-f]+")
    for dom in system.conn().listAllDomains():
        found = pattern.match(dom.name())
        if found and not _alive(int(found.group(1))):
            say(f"removing {dom.name()}, left by a killed run")
            system.undefine(dom.name())
    for path in workdir.glob(f"{PREFIX}*"):
        found = pattern.match(path.name)
        if found and not _alive(int(found.group(1))):
            shutil.rmtree(path, ignore_errors=True)


# --- report -------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    def first(path: str, key: str) -> str:
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        return ""

    def output(*argv: str) -> str:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            return subprocess.run(argv, capture_output=True, text=True, check=True, cwd=REPO).stdout.strip()
        return ""

    return {"host": platform.node(), "cpu": first("/proc/cpuinfo", "model name"), "cpus": os.cpu_count(),
            "memory": first("/proc/meminfo", "MemTotal"), "kernel": platform.release(),
            "os": output("sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""),
            "libvirt": output("virsh", "--version"), "python": platform.python_version(),
            "lxml": ".".join(map(str, etree.LXML_VERSION)),
            "filesystem": output("findmnt", "-no", "FSTYPE,SOURCE", "-T", "/var/lib/libvirt"),
            "snapstore_commit": output("git", "rev-parse", "--short", "HEAD"),
            "snapstore_modified": bool(output("git", "status", "--porcelain", "snapstore"))}


def fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "s":
        return f"{value * 1e3:.1f} ms" if value < 10 else f"{value:.1f} s"
    return f"{value:.1f} {unit}" if unit != "%" else f"{value:.2f} %"


def table(rows: list[dict[str, Any]]) -> str:
    header = ("section", "measure", "N", "snapstore", "baseline", "ratio", "target", "")
    lines = []
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}×"
        if r["ratio"] and r["ratio_is_speedup"]:
            ratio = f"{r['ratio']:.2f}× faster" if r["ratio"] >= 1 else f"{1 / r['ratio']:.2f}× slower"
        base = f"{r['baseline']} {fmt(r['baseline_value'], r['unit'])}" if r["baseline"] else ""
        verdict = {True: "PASS", False: "FAIL", None: ""}[r["pass"]]
        lines.append((r["section"], r["what"], "" if r["n"] is None else str(r["n"]),
                      fmt(r["value"], r["unit"]), base, ratio, r["target"], verdict))
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *lines]]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


# --- main ---------------------------------------------------------------------------------------


SECTIONS = ("consolidate", "list", "transfer", "daemon", "rss", "history", "fleet")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 100 and 1000 only, fewer repeats")
    parser.add_argument("--sizes", type=_ints, help="snapshot counts for list/consolidate/check "
                                                     "(default 100,1000,10000; --quick 100,1000)")
    parser.add_argument("--json", type=Path, default=HERE / "results.json", metavar="FILE",
                        help="where the results go (default bench/results.json)")
    parser.add_argument("--repeats", type=int, help="runs per figure (default 7; --quick 3)")
    parser.add_argument("--long-repeats", type=int, help="runs per figure for runs over a few seconds "
                                                         "(default 3; --quick 1)")
    parser.add_argument("--transfer-count", type=int, default=300)
    parser.add_argument("--latency-sizes", type=_ints, default=[10, 1000])
    parser.add_argument("--latency-samples", type=int, help="changes per size (default 60; --quick 20)")
    parser.add_argument("--history-samples", type=int,
                        help="changes per side (history on, off) for the history section (default 120; --quick 60)")
    parser.add_argument("--history-generations", type=int, default=100,
                        help="commits whose generations the history section measures on disk (default 100)")
    parser.add_argument("--fleet-generations", type=int, default=200,
                        help="generations queued before the daemon ships them in the fleet section (default 200)")
    parser.add_argument("--fleet-hosts", type=int, default=1000,
                        help="simulated hosts (10 domains of 100 snapshots each) for fleet list/check (default 1000)")
    parser.add_argument("--fleet-samples", type=int,
                        help="changes per side (replication on, off) in the fleet section (default 120; --quick 60)")
    parser.add_argument("--idle-seconds", type=float, help="idle CPU window (default 10; --quick 4)")
    parser.add_argument("--quiet-period", type=float, default=0.25, help="the daemon's debounce (default 0.25)")
    parser.add_argument("--no-libvirtd-restart", dest="restart_libvirtd", action="store_false",
                        help="do not restart the system libvirtd to time its start-up")
    parser.add_argument("--libvirtd-restarts", type=int, help="(default 3; --quick 1)")
    parser.add_argument("--sections", type=lambda text: text.split(","), default=list(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--profile", type=Path, nargs="?", const=HERE / "profiles", metavar="DIR",
                        help="also cProfile snapstore's commands at the largest N (default DIR bench/profiles)")
    parser.add_argument("--code", choices=("tree", "head", "live"), default="tree",
                        help="the snapstore code measured: a copy of the working tree taken at start (default), "
                             "of the last commit, or the live tree (edits during the run take effect)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                        help="parent of the scratch folder (default /var/tmp, same disk as /var/lib)")
    args = parser.parse_args(argv)
    for name in ("json", "profile", "workdir"):  # the run changes its working folder
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    quick = args.quick
    args.sizes = sorted(args.sizes or ([100, 1000] if quick else [100, 1000, 10000]))
    for name, full, short in (("repeats", 7, 3), ("long_repeats", 3, 1), ("latency_samples", 60, 20), ("history_samples", 120, 60),
                              ("fleet_samples", 120, 60), ("idle_seconds", 10.0, 4.0), ("libvirtd_restarts", 3, 1)):
        if getattr(args, name) is None:
            setattr(args, name, short if quick else full)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run: run as root (it reads libvirt's folders and restarts libvirtd)", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions
    cleanup = Cleanup()
    started = time.monotonic()
    bench = None
    try:
        System().ensure_running()
        bench = Bench(args, cleanup)
        sweep_stale(bench.system, args.workdir)
        bench.results.update(machine=machine(), options={k: str(v) if isinstance(v, Path) else v
                                                         for k, v in vars(args).items()})
        bench.results["machine"].update(bench.freeze_code())
        say(f"measuring snapstore: {bench.results['machine']}")
        bench.build()
        sections: list[tuple[str, Callable[[], None]]] = []
        for n in args.sizes:
            if "consolidate" in args.sections:
                sections.append((f"consolidate N={n}", lambda n=n: bench.consolidate_section(n)))
            if "list" in args.sections:
                sections.append((f"list N={n}", lambda n=n: bench.list_section(n)))
        sections.append(("scaling", bench.scaling_rows))
        if "transfer" in args.sections:
            sections.append(("transfer", bench.transfer_section))
        if "daemon" in args.sections:
            sections += [("daemon start-up", bench.daemon_startup_section), ("daemon latency", bench.latency_section)]
        if "rss" in args.sections:
            sections.append(("peak RSS", bench.rss_section))
        if "history" in args.sections:
            sections += [("history: disk of generations", bench.history_disk_section),
                         ("history: change to commit, on and off", bench.history_latency_section),
                         ("history: history and diff", bench.history_commands_section)]
        if "fleet" in args.sections:
            sections += [("fleet: generations shipped", bench.fleet_ship_section),
                         ("fleet: list and check", bench.fleet_scale_section),
                         ("fleet: change to commit, replication on and off", bench.fleet_latency_section)]
        if args.profile:
            sections.append(("profile", lambda: bench.profile(args.profile)))
        for label, section in sections:
            say(f"{label}…")
            try:
                section()
            except (Exception, AssertionError) as e:  # noqa: BLE001 - one failing section leaves the others
                bench.error(label, e)
    finally:
        cleanup.run()
    if bench is None:
        return 2
    bench.results["seconds_total"] = round(time.monotonic() - started, 1)
    bench.results["rows"] = bench.rows
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(bench.results, indent=2, default=str) + "\n")
    print(table(bench.rows))
    print(f"\n{len(bench.rows)} rows; {sum(r['pass'] is False for r in bench.rows)} targets missed; "
          f"total {bench.results['seconds_total']:.0f} s; JSON: {args.json}")
    return 1 if bench.results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
