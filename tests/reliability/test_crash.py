"""Crash consistency (issue 8 §1): writers SIGKILLed at random moments and at
every call of the write path; the daemon SIGKILLed while libvirt works.

After every kill: the consolidated file (or the expanded folder) parses,
validates and is byte for byte the generation committed last or the one
being committed (campaign.generation_files); after the next start
(Store.prepare, or the next expand) no snapstore temp is left and the
attic holds only whole copies.
"""
from __future__ import annotations

import dataclasses
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import campaign
import pytest
import straced
from campaign import Sandbox
from daemonproc import Daemon, store_summary, view_summary, wait_for, write_config
from scenarios import SCENARIOS, fresh

from snapstore import store

WRITER = Path(__file__).with_name("crashwriter.py")
MODES = {"store": campaign.budget(20, 400), "cli": campaign.budget(15, 300), "expand": campaign.budget(15, 300)}
MAX_DELAY = 0.25  # seconds a writer runs before its kill: tens of commits


class Zygote:
    """crashwriter.py's fork server: one fresh writer process per kill."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(WRITER), "zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def spawn(self, mode: str, base: Path, log: Path, first: int) -> int:
        self.proc.stdin.write(f"{mode} {base} {log} {first}\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@dataclasses.dataclass
class Frames:
    """What one writer's log says: the commits it began and ended."""

    begun: list[int]
    ended: list[int]
    error: str | None

    @classmethod
    def read(cls, log: Path) -> Frames:
        lines = log.read_text().splitlines() if log.exists() else []
        begun = [int(line[2:]) for line in lines if line.startswith("B ")]
        ended = [int(line[2:]) for line in lines if line.startswith("E ")]
        error = next((line for line in lines if line.startswith("X ")), None)
        return cls(begun, ended, error)

    def allowed(self, before: int | None) -> set[int | None]:
        """Generations the disk may hold after a kill: the last committed, or the one in flight."""
        allowed = {self.ended[-1] if self.ended else before}
        if self.begun and (not self.ended or self.begun[-1] != self.ended[-1]):
            allowed.add(self.begun[-1])
        return allowed


def kill_at_random(zygote: Zygote, mode: str, base: Path, log: Path, first: int, rng: random.Random) -> int:
    pid = zygote.spawn(mode, base, log, first)
    wait_for(lambda: log.exists() and log.read_text().startswith(("R", "X")), 30, f"writer {pid} never started")
    time.sleep(rng.uniform(0, MAX_DELAY))
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not _alive(pid), 10, f"writer {pid} survived SIGKILL")
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def which_generation(found, allowed: set[int | None], expected) -> int | None:
    """The generation in ``allowed`` whose expected form equals ``found`` (None: nothing on disk)."""
    for n in allowed:
        if (found is None and n is None) or (n is not None and found == expected(n)):
            return n
    raise AssertionError(f"data: the disk holds none of the generations {sorted(map(str, allowed))}")


class Leftovers:
    """Temps or half copies a start should have removed: collected, reported once at the end.

    Where kills fall at random, the two kinds the crash-point tests pin
    deterministically (an index temp, a half attic copy: see the BUG
    assertions there) are counted, not failed on, so that these tests fail
    only on something new; anything else left behind fails them.
    """

    KNOWN = ("/state/index/", "/state/attic/")

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self.found: dict[str, str] = {}
        self.known: dict[str, str] = {}
        self.attic_seen: set[str] = set()  # attic folders checked already

    def add(self, paths: list[str], why: str) -> None:
        for path in paths:
            if not self.strict and any(marker in path for marker in self.KNOWN):
                self.known.setdefault(path, why)
            else:
                self.found.setdefault(path, why)

    def check(self, when: str) -> None:
        campaign.count("leftovers of the known bugs after a random kill (pinned by the crash-point tests)",
                       len(self.known))
        assert not self.found, f"BUG: left behind after {when}: {_grouped(self.found)}"


@pytest.mark.parametrize("mode", list(MODES))
def test_random_sigkill_while_committing(mode: str, tmp_path: Path) -> None:
    sandbox, rng, zygote, leftovers = Sandbox(tmp_path / "box"), random.Random(f"{mode}-{os.getpid()}"), Zygote(), Leftovers(strict=False)
    on_disk: int | None = None
    next_generation = 1
    try:
        for kill in range(MODES[mode]):
            log = tmp_path / f"log-{kill}"
            pid = kill_at_random(zygote, mode, sandbox.base, log, next_generation, rng)
            frames = Frames.read(log)
            assert frames.error is None, f"the writer failed by itself: {frames.error}"
            on_disk = check_after_kill(mode, sandbox, frames.allowed(on_disk), frames, pid, leftovers)
            next_generation = max([next_generation, *frames.begun]) + 1
            campaign.count(f"kills survived (SIGKILL at random, {mode})")
    finally:
        zygote.close()
    leftovers.check("the next start (a later kill or a later run should have swept them)")


def _grouped(found: dict[str, str]) -> str:
    by_reason: dict[str, list[str]] = {}
    for path, why in found.items():
        by_reason.setdefault(why, []).append(path)
    return "; ".join(f"{why}: {len(paths)}, e.g. {paths[0]}" for why, paths in by_reason.items())


def check_after_kill(mode: str, sandbox: Sandbox, allowed: set[int | None], frames: Frames, pid: int,
                     leftovers: Leftovers) -> int | None:
    if mode == "expand":
        found = _out_files(sandbox)
        on_disk = which_generation(found or None, allowed, campaign.expanded_files)
        assert not [name for name in (found or {}) if not name.endswith(".xml")], f"foreign files in {found}"
        if frames.ended:  # this writer's expands swept what earlier writers left
            old = [p for p in campaign.temps_under(sandbox.base / "out") if f"-{pid}-" not in p]
            leftovers.add(old, "a temp folder of an earlier writer beside the domain folder (expand sweeps them)")
    else:
        path = sandbox.store_file()
        data = path.read_bytes() if path.exists() else None
        if data is not None:
            campaign.parse_store(data, f"the store file after a kill ({mode})")
        on_disk = which_generation(data, allowed, campaign.generation_bytes)
    store.Store(sandbox.state).prepare()  # what the next writer or the daemon does first
    leftovers.add(campaign.temps_under(sandbox.state), "a temp in the state folder after Store.prepare()")
    if mode == "expand":
        half = campaign.half_attic_copies(sandbox.state, _generation_folder, leftovers.attic_seen)
        leftovers.add(half, "a half-written copy in the attic (legacydir._keep_in_attic)")
    return on_disk


def _out_files(sandbox: Sandbox) -> dict[str, bytes] | None:
    folder = sandbox.base / "out" / "vm1"
    return {path.name: path.read_bytes() for path in folder.iterdir()} if folder.exists() else None


def _generation_folder(files: dict[str, bytes]) -> bool:
    match = re.match(r"g(\d+)", next(iter(files), ""))
    return bool(match) and files == campaign.expanded_files(int(match[1]))


# --------------------------------------------------------------------------- a crash at every call


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_sigkill_at_each_write_path_call(name: str, tmp_path: Path) -> None:
    """strace kills the command on entering each call of its write path in
    turn (the call is not made): the old or the new state, whole; the next
    run sweeps what the dead one left and commits."""
    scenario = SCENARIOS[name]
    template = Sandbox(tmp_path / "template")
    scenario.setup(template)
    probe = fresh(template.base, tmp_path / "run")
    _, calls = straced.trace(scenario.argv(probe), tmp_path / "trace.log", straced.CRASH_POINTS)
    targets = straced.sites(calls, probe.base, straced.CRASH_POINTS)
    chosen = straced.choose(targets, campaign.FULL)
    leftovers = Leftovers()
    for site in chosen:
        sandbox = fresh(template.base, tmp_path / "run")
        result, hit = straced.inject(scenario.argv(sandbox), tmp_path / "kill.log", site, kill=True)
        assert result.code == -signal.SIGKILL and hit is not None, f"{site.label}: not killed there\n{result}"
        state = scenario.observe(sandbox)
        assert state in (scenario.old(), scenario.new()), f"data: killed at {site.label} ({hit}): neither state"
        rerun = campaign.run_script(scenario.argv(sandbox))
        assert rerun.code == 0 and scenario.observe(sandbox) == scenario.new(), f"after a kill at {site.label}: {rerun}"
        leftovers.add(campaign.half_attic_copies(sandbox.state, lambda files: files == campaign.expanded_files(1)),
                      f"a half-written copy in the attic after a kill at {site.label} (legacydir._keep_in_attic)")
        for temp in campaign.temps_under(sandbox.base):
            leftovers.add([temp], f"after a kill at {site.label}, {_why_left(temp)}")
        campaign.count(f"kills survived (SIGKILL at each write-path call, {name})")
    leftovers.check("the next start")


def test_sigkill_at_each_history_call(tmp_path: Path) -> None:
    """History on (the default): a kill at each call on the history path (the
    link of the replaced file, the record, the folder fsync) leaves the live
    file old or new, whole, and every generation kept valid; the next run
    commits and keeps one generation of the old file, not two."""
    scenario = SCENARIOS["consolidate"]
    template = Sandbox(tmp_path / "template")
    scenario.setup(template)
    probe = fresh(template.base, tmp_path / "run")
    _, calls = straced.trace(scenario.argv(probe), tmp_path / "trace.log", straced.HISTORY_CALLS)
    targets = straced.sites(calls, probe.state / "history", straced.HISTORY_CALLS)
    assert {site.name for site in targets} >= {"linkat", "openat", "write", "fsync"}, targets
    for site in targets:
        sandbox = fresh(template.base, tmp_path / "run")
        result, hit = straced.inject(scenario.argv(sandbox), tmp_path / "kill.log", site, kill=True)
        assert result.code == -signal.SIGKILL and hit is not None, f"{site.label}: not killed there\n{result}"
        assert scenario.observe(sandbox) in (scenario.old(), scenario.new()), f"data: killed at {site.label}"
        assert campaign.history_problems(sandbox.state) == [], f"killed at {site.label}"
        rerun = campaign.run_script(scenario.argv(sandbox))
        assert rerun.code == 0 and scenario.observe(sandbox) == scenario.new(), f"after {site.label}: {rerun}"
        kept = sorted((sandbox.state / "history").glob("*/*/*.xml"))
        assert [path.read_bytes() for path in kept] == [scenario.old()], f"after {site.label}: generations {kept}"
        assert campaign.history_problems(sandbox.state) == [], f"after a kill at {site.label} and a rerun"
        assert campaign.temps_under(sandbox.state) == [], f"a temp left after a kill at {site.label} and a rerun"
        campaign.count("kills survived (SIGKILL at each history call)")


def _why_left(temp: str) -> str:
    if "/state/index/" in temp:
        return "a listing-index temp the next start does not sweep (Store.prepare sweeps snapshots/, checkpoints/, attic/)"
    if "/out/" in temp:
        return ("the swapped-out folder stays in the root under a temp name: the next expand finds the folder "
                "equal and returns before legacydir._swap_in sweeps")
    return "a temp of the killed run the next run did not sweep"


# --------------------------------------------------------------------------- the daemon, libvirt working


class LibvirtLoad(campaign.Actor):
    """libvirt creating, reverting and deleting snapshots, batch after batch, until stopped
    (each batch is one labworker process)."""

    def __init__(self, lab, domains: list[str], rng: random.Random) -> None:
        super().__init__("libvirt-load")
        self.lab, self.domains, self.rng = lab, domains, rng
        self.names = {domain: {"base"} for domain in domains}
        self.operations = 0

    def act(self) -> None:
        batch = [self._operation() for _ in range(20)]
        self.lab.run(batch)
        self.operations += len(batch)

    def _operation(self) -> dict:
        """Create a snapshot, or revert to or delete an existing one (``names`` tracks them)."""
        domain = self.rng.choice(self.domains)
        existing = sorted(self.names[domain])
        action = self.rng.choices(["snapshot", "revert", "delete"], [5, 2, 3] if len(existing) > 2 else [1, 0, 0])[0]
        if action == "snapshot":
            name = f"s{self.rng.randrange(1 << 40)}"
            self.names[domain].add(name)
        else:
            name = self.rng.choice(existing)
            if action == "delete":
                self.names[domain].discard(name)
        return {"op": action, "domain": domain, "name": name}


def test_daemon_sigkilled_while_libvirt_creates_and_deletes(lab, tmp_path: Path) -> None:
    domains = ["vm1", "vm2"]
    lab.run([op for domain in domains for op in ({"op": "define", "domain": domain},
                                                  {"op": "snapshot", "domain": domain, "name": "base"})])
    state, config = tmp_path / "state", write_config(tmp_path / "daemon.toml", quiet_period=0.02)
    rng, leftovers = random.Random(f"daemon-{os.getpid()}"), Leftovers(strict=False)
    load = LibvirtLoad(lab, domains, rng).start()
    try:
        for kill in range(campaign.budget(6, 100)):
            daemon = Daemon(lab.snapshot_dir, lab.checkpoint_dir, state, config, tmp_path / f"daemon{kill}.stderr")
            try:
                daemon.wait_ready(timeout=60)
                leftovers.add(campaign.stale_temps(state), "a temp of a dead process after the daemon's start")
                time.sleep(rng.uniform(0.1, 1.0))
                assert daemon.kill() == -signal.SIGKILL, daemon.describe()
            finally:
                daemon.close()
            for path in (state / "snapshots").glob("*.xml"):
                campaign.parse_store(path.read_bytes(), f"{path} after the daemon's kill")
                assert path.stat().st_mode & 0o777 == 0o600, path
            campaign.count("kills survived (SIGKILL of the daemon, libvirt working)")
    finally:
        load.stop(timeout=300)
        campaign.count("libvirt operations under the killed daemon", load.operations)
    final = Daemon(lab.snapshot_dir, lab.checkpoint_dir, state, config, tmp_path / "final.stderr")
    try:
        final.wait_ready(timeout=60)
        for domain in domains:
            view = lab.view(domain)
            assert store_summary(state, domain) == view_summary(view), f"data: {domain} differs from libvirt"
        leftovers.add(campaign.stale_temps(state), "a temp of a dead process after the daemon's start")
    finally:
        final.close()
    leftovers.check("the daemon's next start")
