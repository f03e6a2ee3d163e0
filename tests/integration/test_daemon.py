"""`snapstore daemon` as a real process, following a real libvirt (issue 3, DESIGN §5).

Each test gets its own embedded qemu root (the `lab` fixture): every Lab call
is a libvirt subprocess that really writes the per-snapshot files while the
daemon, a separate process, watches them.  The daemon talks to a test datagram
socket as NOTIFY_SOCKET (tests/daemonproc.py).  Every wait has a deadline; every
daemon is stopped in the fixture teardown (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemonproc import (
    Daemon,
    read_store,
    store_path,
    store_summary,
    summary_of_bytes,
    view_summary,
    wait_for,
    write_config,
)
from lab import Lab, View
from lxml import etree

from snapstore import kinds
from snapstore.formats import consolidated, mapping, xmlsafe

FOLLOW = 2.0  # seconds: a libvirt change must be in the store within this (issue 3)
TEMP_PREFIX = ".snapstore-tmp-"

Start = Callable[..., Daemon]


# --- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def start(tmp_path: Path, lab: Lab, state: Path) -> Iterator[Start]:
    """start(**settings) -> a running daemon on `lab` and `state`; all stopped at teardown."""
    started: list[Daemon] = []

    def run(*, settings: dict[str, float] | None = None, checkpoint_dir: Path | None = None,
            watchdog_usec: int | None = None, on_ready: Callable[[], Any] | None = None,
            verbose: bool = False) -> Daemon:
        n = len(started)
        config = write_config(tmp_path / f"daemon{n}.toml", **(settings or {}))
        daemon = Daemon(lab.snapshot_dir, checkpoint_dir or lab.checkpoint_dir, state, config,
                        tmp_path / f"daemon{n}.stderr", watchdog_usec=watchdog_usec, on_ready=on_ready,
                        extra_args=("-v",) if verbose else ())
        started.append(daemon)
        return daemon

    yield run
    for daemon in started:
        daemon.close()


def views(lab: Lab, *domains: str) -> dict[str, View]:
    """libvirt's view of several domains in one libvirt start."""
    results = lab.run([{"op": "view", "domain": domain} for domain in domains])
    return {domain: View(**result) for domain, result in zip(domains, results)}


def snap(domain: str, name: str) -> dict[str, Any]:
    return {"op": "snapshot", "domain": domain, "name": name}


def revert(domain: str, name: str) -> dict[str, Any]:
    return {"op": "revert", "domain": domain, "name": name}


def delete(domain: str, name: str) -> dict[str, Any]:
    return {"op": "delete", "domain": domain, "name": name}


def assert_store_equals(state: Path, domain: str, view: View) -> None:
    """Names, parents, current and every snapshot's XML (C14N) equal libvirt's API view."""
    path = store_path(state, domain)
    data = path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path} mode {oct(path.stat().st_mode)}"
    tree = consolidated.parse_consolidated(data, kinds.SNAPSHOT, str(path))
    assert tree.validate() == [], f"{path}: {tree.validate()}"
    assert summary_of_bytes(data) == view_summary(view)
    order = [m.name for m in tree.moments]
    for index, moment in enumerate(tree.moments):
        assert moment.parent is None or order.index(moment.parent) < index, f"{order}: not parents first"
        libvirt = etree.fromstring(view.xml[moment.name].encode())
        assert xmlsafe.canonical(mapping.element(moment)) == xmlsafe.canonical(libvirt), (
            f"{domain}/{moment.name}: the store differs from libvirt's SECURE XML")


def assert_follows(lab: Lab, state: Path, domain: str, daemon: Daemon, what: str) -> View:
    """Call right after a libvirt operation returned: the store equals libvirt's view within FOLLOW s."""
    done = time.monotonic()
    view = lab.view(domain)
    remaining = max(done + FOLLOW - time.monotonic(), 0.0)
    wait_for(lambda: store_summary(state, domain) == view_summary(view), remaining,
             lambda: (f"after {what}, the store holds {store_summary(state, domain)} but libvirt "
                      f"{view_summary(view)}; {daemon.describe()}"))
    assert_store_equals(state, domain, view)
    # The daemon never writes into libvirt's folders.
    assert sorted(os.listdir(lab.snapshot_dir / domain)) == sorted(f"{name}.xml" for name in view.names), what
    return view


def temps(state: Path) -> list[str]:
    return [str(path) for path in state.rglob(f"{TEMP_PREFIX}*")]


def observe(daemon: Daemon, seconds: float) -> None:
    """Let `seconds` pass while the daemon must stay alive (an observation window, not a wait)."""
    end = time.monotonic() + seconds
    wait_for(lambda: time.monotonic() >= end or not daemon.alive(), seconds + 1.0)
    assert daemon.alive(), f"daemon died: {daemon.describe()}"


def committed_lines(daemon: Daemon) -> int:
    return sum(": committed " in line for line in daemon.stderr().splitlines())


def plant(folder: Path, name: str, data: bytes) -> Path:
    """Put a file into a libvirt folder in one rename (as libvirt does), so no reader sees it half written."""
    temp = folder.parents[3] / f"planting-{name}"  # the lab root: same file system, not watched
    temp.write_bytes(data)
    os.chmod(temp, 0o600)
    os.rename(temp, folder / name)
    return folder / name


def renamed_copy(source: Path, name: str) -> bytes:
    """A copy of libvirt's file `source` for a snapshot called `name` (its <active> kept)."""
    root = etree.fromstring(source.read_bytes())
    root.find("name").text = name
    return etree.tostring(root)


class VersionRecorder:
    """Every version of one store file, by polling its identity in a tight loop.

    The daemon replaces the file by rename, so each version has its own inode:
    a version is recorded when (inode, size, mtime) changes, read through the
    file descriptor opened on it (the content of that inode, not of a later one).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.versions: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="store-versions", daemon=True)

    def _poll(self) -> None:
        last = None
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                info = os.fstat(fd)
                identity = (info.st_ino, info.st_size, info.st_mtime_ns)
                if identity != last:
                    chunks = []
                    while chunk := os.read(fd, 1 << 20):
                        chunks.append(chunk)
                    self.versions.append(b"".join(chunks))
                    last = identity
            finally:
                os.close(fd)

    def __enter__(self) -> VersionRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Background:
    """One lab batch in a thread, so the test can act while libvirt writes."""

    def __init__(self, lab: Lab, ops: list[dict[str, Any]]) -> None:
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(lab, ops), daemon=True)
        self._thread.start()

    def _run(self, lab: Lab, ops: list[dict[str, Any]]) -> None:
        try:
            lab.run(ops)
        except BaseException as e:  # reported by join()
            self.error = e

    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float = 60.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "lab batch did not finish"
        if self.error is not None:
            raise self.error


BURST = [snap("vm1", "b"), snap("vm1", "c"), snap("vm1", "d"), revert("vm1", "b"), snap("vm1", "e"),
         revert("vm1", "a"), delete("vm1", "c"), snap("vm1", "f"), delete("vm1", "e"), revert("vm1", "d"),
         snap("vm1", "g"), delete("vm1", "b"), revert("vm1", "f"), snap("vm1", "h")]


# --- start-up ----------------------------------------------------------------------------------------


def test_ready_only_after_initial_reconcile(lab: Lab, state: Path, start: Start) -> None:
    lab.run([{"op": "define", "domain": "vm1"}, snap("vm1", "a"), snap("vm1", "b"), revert("vm1", "a"),
             {"op": "define", "domain": "vm2"},
             {"op": "bulk_snapshots", "domain": "vm2", "prefix": "s", "count": 30, "branch_every": 7,
              "mode": "redefine"}])
    expected = views(lab, "vm1", "vm2")

    daemon = start(on_ready=lambda: {d: read_store(state, d) for d in ("vm1", "vm2")})
    ready = daemon.wait_ready()

    # What the store held when READY=1 arrived (read in the notify thread on arrival).
    at_ready = daemon.notify.ready_snapshots[0]
    for domain, view in expected.items():
        assert at_ready[domain] is not None, f"READY=1 before {domain}'s store file existed; {daemon.describe()}"
        assert summary_of_bytes(at_ready[domain]) == view_summary(view), f"{domain} at READY=1"
        assert_store_equals(state, domain, view)
    # Before READY=1 only start-timeout extensions (progress of the first reconcile) may come.
    before = [d for d in daemon.notify.all() if d.at < ready.at]
    assert all(set(d.fields) == {"EXTEND_TIMEOUT_USEC"} for d in before), before
    assert [d for d in daemon.notify.all() if "EXTEND_TIMEOUT_USEC" not in d.fields][0] is ready, \
        "READY=1 must be the first notification but start-timeout extensions"
    status = ready.fields.get("STATUS", "")
    assert "2 domains" in status and "32 snapshots" in status and "0 checkpoints" in status, status
    assert "degraded" not in status and "guarded" not in status, status
    assert not daemon.notify.with_key("WATCHDOG"), "WATCHDOG=1 without WATCHDOG_USEC"


def test_checkpoint_root_absent_at_start(lab: Lab, state: Path, start: Start) -> None:
    lab.run([{"op": "define", "domain": "vm1"}, snap("vm1", "a")])
    shutil.rmtree(lab.checkpoint_dir)

    daemon = start()
    status = daemon.wait_ready().fields["STATUS"]
    assert "1 domains, 1 snapshots, 0 checkpoints" in status, status
    assert "Traceback" not in daemon.stderr() and "ERROR" not in daemon.stderr(), daemon.stderr()
    lab.snapshot("vm1", "b")
    assert_follows(lab, state, "vm1", daemon, "a snapshot with no checkpoint root")

    # The root appears later (libvirt makes it at its start, or by hand): it is watched too,
    # including a domain folder created in it afterwards.
    lab.checkpoint_dir.mkdir(exist_ok=True)
    (lab.checkpoint_dir / "vm1").mkdir()
    plant(lab.checkpoint_dir / "vm1", "c1.xml",
          b"<domaincheckpoint><name>c1</name><creationTime>1700000000</creationTime></domaincheckpoint>")
    checkpoints = store_path(state, "vm1", kinds.CHECKPOINT)
    wait_for(checkpoints.exists, FOLLOW + 1.0, lambda: f"no {checkpoints}; {daemon.describe()}")
    tree = consolidated.parse_consolidated(checkpoints.read_bytes(), kinds.CHECKPOINT, str(checkpoints))
    assert [m.name for m in tree.moments] == ["c1"]
    assert daemon.alive(), daemon.describe()


# --- following libvirt -------------------------------------------------------------------------------


def test_each_libvirt_operation_is_followed_within_2s(lab: Lab, state: Path, start: Start) -> None:
    lab.run([{"op": "define", "domain": "vm1"}, snap("vm1", "a")])
    daemon = start()
    daemon.wait_ready()
    assert_store_equals(state, "vm1", lab.view("vm1"))

    lab.snapshot("vm1", "b")
    assert assert_follows(lab, state, "vm1", daemon, "create b").current == "b"
    lab.snapshot("vm1", "c")
    assert assert_follows(lab, state, "vm1", daemon, "create c").parents["c"] == "b"
    lab.revert("vm1", "a")
    assert assert_follows(lab, state, "vm1", daemon, "revert to a").current == "a"
    lab.delete("vm1", "b")  # c is reparented to a
    view = assert_follows(lab, state, "vm1", daemon, "delete b")
    assert view.parents == {"a": None, "c": "a"}

    xml_c = view.xml["c"]
    lab.delete("vm1", "c", metadata_only=True)
    assert assert_follows(lab, state, "vm1", daemon, "delete c (metadata only)").names == ["a"]
    lab.redefine("vm1", xml_c)
    view = assert_follows(lab, state, "vm1", daemon, "redefine c without current")
    assert (view.current, view.parents) == ("a", {"a": None, "c": "a"})
    lab.redefine("vm1", xml_c, current=True)
    assert assert_follows(lab, state, "vm1", daemon, "redefine c with current").current == "c"

    # A domain created after the start, whose name must be escaped in the store: its folder is new.
    lab.run([{"op": "define", "domain": "vm 2é"}, snap("vm 2é", "n1")])
    assert assert_follows(lab, state, "vm 2é", daemon, "a new domain's first snapshot").names == ["n1"]
    assert store_path(state, "vm 2é").name == "vm%202%C3%A9.xml"

    last = read_store(state, "vm1")
    lab.undefine("vm1")  # with VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA: libvirt removes the folder
    done = time.monotonic()
    path = store_path(state, "vm1")
    wait_for(lambda: not path.exists(), max(done + FOLLOW - time.monotonic(), 0.0),
             lambda: f"undefine: {path} still there; {daemon.describe()}")
    attic = list((state / "attic").iterdir())
    assert len(attic) == 1 and attic[0].read_bytes() == last, f"attic holds {attic}, not the last file"
    assert "vm1" in attic[0].name
    assert daemon.alive(), daemon.describe()


def test_every_committed_version_is_consistent(lab: Lab, state: Path, start: Start) -> None:
    """libvirt writes one file per rename (a create or revert rewrites two, a delete rewrites
    the children): with almost no quiet period the daemon reads mid-operation, and the gate
    alone must keep every inconsistent state out of the store."""
    lab.run([{"op": "define", "domain": "vm1"}, snap("vm1", "a")])
    with VersionRecorder(store_path(state, "vm1")) as recorder:
        daemon = start(settings={"quiet_period": 0.001}, verbose=True)
        daemon.wait_ready()
        lab.run(BURST)
        view = lab.view("vm1")
        wait_for(lambda: store_summary(state, "vm1") == view_summary(view), FOLLOW,
                 lambda: f"final state {store_summary(state, 'vm1')} vs {view_summary(view)}; {daemon.describe()}")
        # Let the recorder see the last rename (it polls continuously).
        wait_for(lambda: recorder.versions and recorder.versions[-1] == read_store(state, "vm1"), 1.0)
    assert_store_equals(state, "vm1", view)

    for index, data in enumerate(recorder.versions):
        tree = consolidated.parse_consolidated(data, kinds.SNAPSHOT, f"version {index}")
        assert tree.validate() == [], f"committed version {index} is inconsistent: {tree.validate()}\n{data.decode()}"
        assert len({m.name for m in tree.moments}) == len(tree.moments)
    committed = committed_lines(daemon)
    # The recorder polls: two commits closer than one poll show as one. It must
    # still have seen nearly all of them, or the check above proves little.
    assert committed * 0.8 <= len(recorder.versions) <= committed, (
        f"the test saw {len(recorder.versions)} versions, the daemon logged {committed} commits")
    # The burst changed the state 14 times; the store followed through several of them.
    assert committed >= 3, daemon.stderr()


# --- the consistency gate and crash remnants ---------------------------------------------------------


GATE = {"quiet_period": 0.05, "settle_timeout": 1.0}


def _committed_good_state(lab: Lab, state: Path, start: Start) -> tuple[Daemon, bytes, os.stat_result]:
    lab.run([{"op": "define", "domain": "vm1"}, snap("vm1", "a"), snap("vm1", "b")])
    daemon = start(settings=GATE)
    daemon.wait_ready()
    assert_store_equals(state, "vm1", lab.view("vm1"))
    return daemon, read_store(state, "vm1"), store_path(state, "vm1").stat()


def _assert_untouched(state: Path, before: bytes, info: os.stat_result) -> None:
    now = store_path(state, "vm1").stat()
    assert read_store(state, "vm1") == before, "an inconsistent folder was committed"
    assert (now.st_ino, now.st_mtime_ns) == (info.st_ino, info.st_mtime_ns), "the store file was rewritten"


def _assert_degraded_once(daemon, state: Path, before: bytes, info, reason: str) -> None:
    """STATUS says degraded after the settle timeout, the store is untouched, one warning."""
    status = daemon.wait_status(lambda s: "degraded" in s and "vm1" in s, GATE["settle_timeout"] + 3.0,
                                "degraded: vm1 after the settle timeout")
    assert "degraded: vm1" in status, status
    _assert_untouched(state, before, info)
    warnings = [line for line in daemon.stderr().splitlines() if "degraded" in line]
    assert len(warnings) == 1 and reason in warnings[0], warnings


def test_two_current_markers_are_not_committed_and_degrade(lab: Lab, state: Path, start: Start) -> None:
    daemon, before, info = _committed_good_state(lab, state, start)
    folder = lab.snapshot_dir / "vm1"
    # A crash between libvirt's two renames: a second file with <active>1</active>.
    assert b"<active>1</active>" in (folder / "b.xml").read_bytes()
    remnant = plant(folder, "x.xml", renamed_copy(folder / "b.xml", "x"))

    planted = time.monotonic()
    _assert_degraded_once(daemon, state, before, info, "marked current")
    took = time.monotonic() - planted
    assert took >= GATE["settle_timeout"] - 0.1, f"degraded after {took:.2f} s, before the settle timeout"

    remnant.unlink()
    daemon.wait_status(lambda s: "degraded" not in s, FOLLOW, "degraded cleared once the folder is fixed")
    _assert_untouched(state, before, info)  # the fixed folder holds exactly the committed state
    assert len([line for line in daemon.stderr().splitlines() if "degraded" in line]) == 1, "warned more than once"


def test_stale_libvirt_temp_is_not_committed_and_degrades(lab: Lab, state: Path, start: Start) -> None:
    daemon, before, info = _committed_good_state(lab, state, start)
    folder = lab.snapshot_dir / "vm1"
    # libvirt crashed after writing b.xml.new, before renaming it over b.xml.
    remnant = plant(folder, "b.xml.new", renamed_copy(folder / "b.xml", "b"))

    # *.new files are never read as content, but their folder's change still makes the daemon look.
    _assert_degraded_once(daemon, state, before, info, "b.xml.new")

    remnant.unlink()
    daemon.wait_status(lambda s: "degraded" not in s, FOLLOW, "degraded cleared once the stale temp is gone")
    _assert_untouched(state, before, info)


# --- process lifecycle ---------------------------------------------------------------------------------


def _daemon_in_a_burst(lab: Lab, start: Start, quiet: float, gate: Path):
    """A ready daemon that has committed at least 3 versions of a burst, which
    then waits at GATE: the test opens the gate and acts while libvirt writes
    the rest, whatever the speed of the machine."""
    lab.run([{"op": "define", "domain": "vm1"}, snap("vm1", "a")])
    daemon = start(settings={"quiet_period": quiet})
    daemon.wait_ready()
    burst = Background(lab, BURST[:5] + [{"op": "wait_path", "path": str(gate)}] + BURST[5:])
    # At the gate libvirt holds a..e with e current; the daemon has committed that state.
    wait_for(lambda: (s := store_summary(daemon.state_dir, "vm1")) is not None and s.current == "e",
             30.0, daemon.describe)
    assert burst.running(), f"the burst went past its gate; {daemon.describe()}"
    return daemon, burst


def test_sigkill_mid_activity_then_restart_loses_nothing(lab: Lab, state: Path, start: Start,
                                                         tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    first, burst = _daemon_in_a_burst(lab, start, quiet=0.02, gate=gate)
    gate.touch()  # libvirt goes on writing while the daemon is killed
    assert first.kill() == -signal.SIGKILL
    # What a kill in the middle of a commit leaves: a temp of the dead process.
    stale = store_path(state, "vm1").parent / f"{TEMP_PREFIX}{first.pid}-0123456789ab"
    stale.write_bytes(b"<?xml version='1.0'?><snapshots")
    burst.join()  # libvirt goes on while the daemon is down
    view = lab.view("vm1")
    assert sorted(view.names) == ["a", "d", "f", "g", "h"]

    second = start(settings={"quiet_period": 0.02})
    second.wait_ready()
    assert_store_equals(state, "vm1", view)
    assert temps(state) == [], "stale snapstore temps left after the restart"
    lab.snapshot("vm1", "after")  # and it keeps following
    assert_follows(lab, state, "vm1", second, "a snapshot after the restart")


def test_a_commit_written_ahead_is_never_published_by_a_killed_daemon(lab: Lab, state: Path, start: Start) -> None:
    """The last part of a quiet period writes the commit ahead (a temp in
    the store's folder, durable, not yet renamed). A daemon killed then has
    published nothing; the next one sweeps the temp and commits the change."""
    lab.run([{"op": "define", "domain": "vm1"}, snap("vm1", "s1")])
    first = start(settings={"quiet_period": 4.0})  # written ahead 1 s before the deadline
    first.wait_ready()
    before = read_store(state, "vm1")
    lab.snapshot("vm1", "s2")
    wait_for(lambda: temps(state) != [], 5.0, lambda: f"nothing written ahead; {first.describe()}")
    assert first.kill() == -signal.SIGKILL
    assert read_store(state, "vm1") == before and len(temps(state)) == 1
    second = start(settings={"quiet_period": 4.0})
    second.wait_ready()
    assert_store_equals(state, "vm1", lab.view("vm1"))
    assert temps(state) == [], "the killed daemon's temp was not swept"


def test_sigterm_mid_activity_exits_0_with_stopping(lab: Lab, state: Path, start: Start,
                                                    tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    daemon, burst = _daemon_in_a_burst(lab, start, quiet=0.01, gate=gate)
    gate.touch()
    daemon.send(signal.SIGTERM)
    try:
        code = daemon.proc.wait(timeout=5)
    except Exception:
        raise AssertionError(f"no exit within 5 s of SIGTERM; {daemon.describe()}") from None
    burst.join()
    assert code == 0, daemon.describe()
    stopping = daemon.notify.with_key("STOPPING", "1")
    assert len(stopping) == 1, daemon.describe()
    assert daemon.notify.all()[-1] is stopping[0], "STOPPING=1 must be the last notification"
    assert "Traceback" not in daemon.stderr(), daemon.stderr()
    # The commit in flight finished: the file is whole and consistent, no temp is left.
    data = read_store(state, "vm1")
    assert consolidated.parse_consolidated(data, kinds.SNAPSHOT, "store").validate() == []
    assert temps(state) == []


def test_sighup_reloads_settings_and_rescans(lab: Lab, state: Path, start: Start, tmp_path: Path) -> None:
    lab.run([{"op": "define", "domain": "vm1"}, snap("vm1", "a"), snap("vm1", "b")])
    daemon = start(settings={"quiet_period": 0.05, "settle_timeout": 60.0},
                   on_ready=lambda: read_store(state, "vm1"))
    daemon.wait_ready()
    view = lab.view("vm1")

    # Behind its back, where no watch can see: the store file goes away.  Only a rescan brings it back.
    store_path(state, "vm1").unlink()
    daemon.send(signal.SIGHUP)
    second = daemon.wait_ready(2, timeout=10)
    reloading = daemon.notify.with_key("RELOADING", "1")
    assert len(reloading) == 1 and reloading[0].at <= second.at, daemon.describe()
    at_ready = daemon.notify.ready_snapshots[-1]
    assert at_ready is not None and summary_of_bytes(at_ready) == view_summary(view), (
        f"the second READY=1 came before the rescan rewrote the store; {daemon.describe()}")
    assert_store_equals(state, "vm1", view)

    # The reload read the config again: a shorter settle timeout now degrades in about a second.
    write_config(tmp_path / "daemon0.toml", quiet_period=0.05, settle_timeout=0.5)
    daemon.send(signal.SIGHUP)
    daemon.wait_ready(3, timeout=10)
    folder = lab.snapshot_dir / "vm1"
    plant(folder, "x.xml", renamed_copy(folder / "b.xml", "x"))
    daemon.wait_status(lambda s: "degraded: vm1" in s, 3.0, "degraded with the reloaded settle_timeout (0.5 s)")

    # A config that does not load is reported, the old settings stay, the daemon stays up.
    (tmp_path / "daemon0.toml").write_text("settle_timeout = 'soon'\n")
    daemon.send(signal.SIGHUP)
    daemon.wait_ready(4, timeout=10)
    assert daemon.alive() and "reload failed" in daemon.stderr(), daemon.describe()


def test_watchdog_pings_at_half_the_interval(lab: Lab, state: Path, start: Start) -> None:
    lab.run([{"op": "define", "domain": "vm1"}, snap("vm1", "a")])
    daemon = start(watchdog_usec=400_000)  # a ping about every 0.2 s
    ready = daemon.wait_ready()
    begin = time.monotonic()
    lab.snapshot("vm1", "b")  # activity in the window too
    observe(daemon, max(begin + 2.0 - time.monotonic(), 0.0))
    pings = [m for m in daemon.notify.with_key("WATCHDOG", "1") if begin <= m.at <= begin + 2.0]
    assert 5 <= len(pings) <= 15, f"{len(pings)} WATCHDOG=1 in 2 s; {daemon.describe()}"
    gaps = [b.at - a.at for a, b in zip(pings, pings[1:])]
    assert max(gaps) < 0.4, f"a gap of {max(gaps):.2f} s between pings exceeds WATCHDOG_USEC"
    # systemd arms the watchdog when the service starts: the start-up
    # reconcile pings too, and READY=1 is not delayed by a missing ping.
    every = [m.at for m in daemon.notify.with_key("WATCHDOG", "1") if m.at <= begin + 2.0]
    assert every and every[0] <= ready.at + 0.4
    assert max(b - a for a, b in zip(every, every[1:])) < 0.4


# --- data-loss guards --------------------------------------------------------------------------------


def test_start_guard_keeps_store_of_missing_or_empty_folder(lab: Lab, state: Path, start: Start) -> None:
    lab.run([{"op": "define", "domain": "vm1"}, snap("vm1", "a"), snap("vm1", "b"),
             {"op": "define", "domain": "vm2"}, snap("vm2", "c")])
    first = start()
    first.wait_ready()
    assert first.stop() == 0
    before = {domain: read_store(state, domain) for domain in ("vm1", "vm2")}
    assert all(before.values())

    # Metadata lost (reinstall, upgrade): vm1's folder is gone, vm2's is empty.
    shutil.rmtree(lab.snapshot_dir / "vm1")
    for path in (lab.snapshot_dir / "vm2").iterdir():
        path.unlink()

    second = start()
    status = second.wait_ready().fields["STATUS"]
    for domain in ("vm1", "vm2"):
        assert read_store(state, domain) == before[domain], f"{domain}'s store file was changed at start"
        assert f"snapstore expand {domain}" in second.stderr(), second.stderr()
        assert domain in status.partition("guarded")[2], status
    assert list((state / "attic").iterdir()) == []

    # libvirt now writes a new snapshot for vm2: the kept file goes to the attic, nothing is lost.
    lab.snapshot("vm2", "new")
    assert assert_follows(lab, state, "vm2", second, "first snapshot after lost metadata").names == ["new"]
    attic = list((state / "attic").iterdir())
    assert [path.read_bytes() for path in attic] == [before["vm2"]], attic
    assert read_store(state, "vm1") == before["vm1"]
    second.wait_status(lambda s: "vm2" not in s.partition("guarded")[2], FOLLOW, "vm2 no longer guarded")


def test_undefine_then_define_again_within_the_quiet_period_keeps_old_file(
        lab: Lab, state: Path, start: Start) -> None:
    """An admin script: undefine with snapshot metadata, define a new domain of the same name,
    snapshot it.  The old folder was removed while running: its file must go to the attic."""
    lab.run([{"op": "define", "domain": "vm1"}, snap("vm1", "a"), snap("vm1", "b")])
    daemon = start(settings={"quiet_period": 1.0})  # the three calls take ~0.1 s: surely inside it
    daemon.wait_ready()
    before = read_store(state, "vm1")
    lab.run([{"op": "undefine", "domain": "vm1"}, {"op": "define", "domain": "vm1"}, snap("vm1", "z")])
    assert assert_follows(lab, state, "vm1", daemon, "undefine, define, snapshot").names == ["z"]
    kept = [path.read_bytes() for path in (state / "attic").iterdir()]
    assert kept == [before], (
        "regression: the undefined domain's store file (snapshots a, b of the old uuid) was overwritten by the "
        "new domain's tree instead of moving to attic/: the removal and re-creation of the folder fell "
        f"in one quiet period, and Synchronizer.sync only sees a folder with other snapshots; attic: {kept}")


def test_failed_commit_is_retried(lab: Lab, state: Path, start: Start) -> None:
    """A commit that fails (here: another snapstore process holds the domain's lock past
    lock_timeout) must be retried, not dropped until the next event or the 600 s reconcile."""
    lab.run([{"op": "define", "domain": "vm1"}, snap("vm1", "a")])
    daemon = start(settings={"lock_timeout": 0.3})
    daemon.wait_ready()
    lock = os.open(state / "locks" / "snapshots.vm1.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lab.snapshot("vm1", "b")
        wait_for(lambda: "giving up" in daemon.stderr(), 5.0, daemon.describe)
    finally:
        os.close(lock)  # releases the flock
    view = lab.view("vm1")
    wait_for(lambda: store_summary(state, "vm1") == view_summary(view), 3.0,
             lambda: ("regression: after a failed commit (LockTimeout) the daemon never retries: Service._sync_due "
                      "retries only Outcome.UNSETTLED, and _sync_one returns None on SnapstoreError, so the "
                      f"store stays at {store_summary(state, 'vm1')} (libvirt: {view_summary(view)}) until "
                      f"another event or the periodic reconcile; STATUS={daemon.notify.last_status()!r}"))


def test_foreign_file_in_the_root_is_ignored(lab: Lab, state: Path, start: Start) -> None:
    lab.run([{"op": "define", "domain": "vm1"}, snap("vm1", "a")])
    daemon = start()
    daemon.wait_ready()
    (lab.snapshot_dir / "stray.txt").write_text("not a domain folder\n")
    lab.snapshot("vm1", "b")
    assert_follows(lab, state, "vm1", daemon, "a snapshot after a stray file appeared in the root")
    errors = [line for line in daemon.stderr().splitlines() if "ERROR" in line]
    assert errors == [], (
        "regression: a plain file in libvirt's snapshot root is taken for a domain (watcher._Handler._domain_of "
        "returns the first path part whatever it is), the sync fails with 'Not a directory' and is logged "
        f"as an ERROR: {errors}")
    status = daemon.wait_status(lambda s: "snapshots" in s, 1.0, "a status")
    assert status.startswith("1 domains"), f"regression: the stray file is counted as a domain in STATUS={status!r}"


def test_inotify_overflow_triggers_a_full_rescan(lab: Lab, state: Path, start: Start) -> None:
    """A real kernel queue overflow: the daemon's inotify instance is made
    with max_queued_events=1 (the limit is read at inotify_init)."""
    lab.run([{"op": "define", "domain": "vm1"}, snap("vm1", "a")])
    limit = Path("/proc/sys/fs/inotify/max_queued_events")
    saved = limit.read_text()
    limit.write_text("1\n")
    try:
        daemon = start()
        daemon.wait_ready()
    finally:
        limit.write_text(saved)
    noise = lab.snapshot_dir / "vm1"
    for i in range(200):  # foreign files: events the daemon would ignore, enough to overflow
        (noise / f"noise{i}.txt").write_text("x")
    lab.snapshot("vm1", "b")
    wait_for(lambda: "full rescan" in daemon.stderr(), 10.0, daemon.describe)
    for i in range(200):
        (noise / f"noise{i}.txt").unlink()
    assert_follows(lab, state, "vm1", daemon, "a snapshot while events overflowed")


def test_idle_daemon_sleeps(lab: Lab, state: Path, start: Start) -> None:
    """Without WATCHDOG_USEC the loop must still block (it once spun at ~90% CPU)."""
    lab.run([{"op": "define", "domain": "vm1"}, snap("vm1", "a")])
    daemon = start()
    daemon.wait_ready()
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu_seconds() -> float:
        fields = Path(f"/proc/{daemon.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    before, started = cpu_seconds(), time.monotonic()
    observe(daemon, 2.0)
    used = (cpu_seconds() - before) / (time.monotonic() - started)
    assert used < 0.05, f"idle daemon used {used:.0%} of a CPU"
