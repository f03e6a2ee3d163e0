"""Concurrency (issue 8 §5): the daemon and four command-line writers on the same domains.

A mutator changes three libvirt folders as libvirt does (one rename per
file: new current snapshot, old one unmarked, oldest pruned), so readers
also meet the inconsistent moments in between. The daemon follows; four
loops run the real ``snapstore consolidate`` on the same domains, two of
them with a lock timeout short enough to expire. Every run ends (no
deadlock) with exit 0, a refusal naming the rule, or the lock-timeout line;
every version of every store file is valid; once the writers stop, every
store file equals its folder (no lost update).

Two kinds of wrong commit are counted: one that goes back to an older
folder state (a writer committing what it read before it waited for the
lock), and one the folder never held (a folder read while libvirt rewrote
it: some files old, some new). Each is pinned deterministically below.
"""
from __future__ import annotations

import fcntl
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import campaign
from campaign import Sandbox
from daemonproc import Daemon, wait_for, write_config

from snapstore import cli, fsio

DOMAINS = ("vm1", "vm2", "vm3")
SECONDS = campaign.budget(10, 60)
KEEP = 6  # snapshots per domain: the oldest is pruned, as a rotating backup script does
LOCK_TIMEOUT_LINE = "lock held by another snapstore process"
KNOWN_RACE = "internal error: FileNotFoundError"
GOOD = campaign.samples.snapshot_xml


class Mutator(campaign.Actor):
    """libvirt-like changes, one file per rename; ``generation[domain]`` is the newest."""

    def __init__(self, sandbox: Sandbox, rng: random.Random) -> None:
        super().__init__("mutator")
        self.sandbox, self.rng = sandbox, rng
        self.generation = {domain: 0 for domain in DOMAINS}
        for domain in DOMAINS:
            campaign.write_legacy(self.folder(domain), {"g0.xml": GOOD("g0", None, True, 1700000000)})

    def folder(self, domain: str) -> Path:
        return self.sandbox.libvirt / domain

    def pause(self) -> float:
        return self.rng.uniform(0, 0.02)

    def act(self) -> None:
        domain = self.rng.choice(DOMAINS)
        folder, n = self.folder(domain), self.generation[domain] + 1
        campaign.plant(folder, f"g{n}.xml", GOOD(f"g{n}", f"g{n - 1}", True, 1700000000 + n))
        oldest = max(0, n - KEEP)
        campaign.plant(folder, f"g{n - 1}.xml", GOOD(f"g{n - 1}", f"g{n - 2}" if n - 1 > oldest else None,
                                                     False, 1700000000 + n - 1))
        if n - KEEP > 0:
            (folder / f"g{n - KEEP - 1}.xml").unlink(missing_ok=True)
            campaign.plant(folder, f"g{oldest}.xml", GOOD(f"g{oldest}", None, oldest == n, 1700000000 + oldest))
        self.generation[domain] = n


class LockHog(campaign.Actor):
    """Another snapstore process holding a domain's lock for a while now and then (a large
    commit, a slow disk): writers with a short lock timeout must give up and say so."""

    def __init__(self, sandbox: Sandbox, rng: random.Random) -> None:
        super().__init__("lock-hog")
        self.sandbox, self.rng, self.holds = sandbox, rng, 0

    def pause(self) -> float:
        return self.rng.uniform(0.2, 0.6)

    def act(self) -> None:
        fd = os.open(self.sandbox.state / "locks" / f"snapshots.{self.rng.choice(DOMAINS)}.lock",
                     os.O_RDONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.holds += 1
            self.stopping.wait(self.rng.uniform(0.1, 0.3))
        finally:
            os.close(fd)


class Writer(campaign.Actor):
    """One command-line writer: ``snapstore consolidate`` of every domain, again and again,
    until a run that began after ``finish(after)`` has ended."""

    def __init__(self, sandbox: Sandbox, config: Path, rng: random.Random) -> None:
        super().__init__("writer")
        self.sandbox, self.config, self.rng = sandbox, config, rng
        self.runs: list[tuple[float, campaign.Result]] = []
        self.fresh_after: float | None = None

    def act(self) -> None:
        began = time.monotonic()
        order = self.rng.sample(DOMAINS, len(DOMAINS))
        result = campaign.run_script(self.sandbox.argv("consolidate", *order, config=self.config), timeout=60)
        self.runs.append((time.monotonic() - began, result))
        if self.fresh_after is not None and began > self.fresh_after:
            self.stopping.set()

    def finish(self, after: float) -> None:
        self.fresh_after = after
        self.join()


def generation_of(data: bytes) -> int:
    tree = campaign.parse_store(data)
    return int(tree.current[1:]) if tree.current else -1


def held_by_the_folder(data: bytes) -> bool:
    """True when ``data`` is a consistent state the mutator's folder really had: after
    step n, g<max(0, n-KEEP)>..g<n> in a chain, g<n> current; within step n, before the
    oldest is dropped, the same chain one longer."""
    tree = campaign.parse_store(data)
    if not tree.current:
        return False
    n = int(tree.current[1:])
    held = {m.name: m.parent for m in tree.moments}
    return any(held == {f"g{i}": (f"g{i - 1}" if i > oldest else None) for i in range(oldest, n + 1)}
               for oldest in {max(0, n - KEEP), max(0, n - KEEP - 1)})


def test_daemon_and_four_writers_on_the_same_domains(sandbox: Sandbox, tmp_path: Path) -> None:
    rng = random.Random(f"concurrency-{os.getpid()}")
    mutator = Mutator(sandbox, rng)
    daemon = Daemon(sandbox.libvirt, sandbox.checkpoints, sandbox.state,
                    write_config(tmp_path / "daemon.toml", quiet_period=0.05, settle_timeout=60.0, lock_timeout=2.0),
                    tmp_path / "daemon.stderr")
    configs = [write_config(tmp_path / f"writer{i}.toml", lock_timeout=timeout)
               for i, timeout in enumerate((0.02, 0.05, 5.0, 5.0))]
    writers = [Writer(sandbox, config, random.Random(rng.random())) for config in configs]
    hog = LockHog(sandbox, random.Random(rng.random()))
    try:
        daemon.wait_ready()
        versions = campaign.Versions(*(sandbox.store_file(domain) for domain in DOMAINS)).start()
        for actor in (mutator, hog, *writers):
            actor.start()
        time.sleep(SECONDS)
        mutator.stop()
        hog.stop()
        for writer in writers:
            writer.finish(after=time.monotonic())
        final = {domain: campaign.consolidated_of(mutator.folder(domain), domain) for domain in DOMAINS}
        for domain in DOMAINS:
            wait_for(lambda d=domain: sandbox.store_file(d).read_bytes() == final[d], 15,
                     lambda d=domain: f"data: {d}: the store never caught up with its folder (a lost update); "
                                      f"{daemon.describe()}")
        seen = versions.stop()
        assert daemon.alive() and "Traceback" not in daemon.stderr(), daemon.describe()
        assert daemon.stop() == 0, daemon.describe()
    finally:
        for actor in (mutator, hog):
            actor.stopping.set()
        daemon.close()
    campaign.count("concurrency: locks held long by another process", hog.holds)
    report(writers, seen, daemon.stderr())


def report(writers: list[Writer], seen: dict[Path, list[bytes]], daemon_log: str) -> None:
    runs = [run for writer in writers for run in writer.runs]
    # A snapshot file deleted between listing and stat: a known bug, pinned deterministically by
    # test_fixed_corpus.test_file_removed_between_listing_and_reading; counted here, not failed on.
    known = [result for _, result in runs if KNOWN_RACE in result.err]
    unclear = {problem: str(result) for _, result in runs if result.code and KNOWN_RACE not in result.err
               for problem in campaign.error_problems(result) + _unexpected_lines(result)}
    timeouts = sum(LOCK_TIMEOUT_LINE in result.err for _, result in runs)
    backwards = never_held = 0
    for data in seen.values():
        generations = [generation_of(version) for version in data]
        backwards += sum(later < earlier for earlier, later in zip(generations, generations[1:]))
        never_held += sum(not held_by_the_folder(version) for version in data)
    campaign.count("concurrency: command-line writer runs", len(runs))
    campaign.count("concurrency: store versions observed (all valid)", sum(map(len, seen.values())))
    campaign.count("concurrency: lock timeouts reported", timeouts)
    campaign.count("concurrency: daemon commits", daemon_log.count(": committed "))
    campaign.count("concurrency: commits that went back to an older folder state", backwards)
    campaign.count("concurrency: commits of a state the folder never held (read while rewritten)", never_held)
    campaign.count("concurrency: seconds of load", SECONDS)
    campaign.count("concurrency: runs ended by the known legacydir.sources race (internal error)", len(known))
    campaign.NOTES["concurrency: slowest writer run"] = f"{max(took for took, _ in runs):.2f} s"
    assert not unclear, f"BUG: runs that failed unclearly: {unclear}"
    assert backwards == 0, f"BUG: {backwards} commits went back to an older folder state (a lost update)"
    assert never_held == 0, f"BUG: {never_held} commits of a state the folder never held (a torn read)"
    assert timeouts, "no lock timeout happened: the short-timeout writers never met a held lock"


def _unexpected_lines(result: campaign.Result) -> list[str]:
    """Lines that are neither a refused tree of a known domain nor a lock timeout."""
    return [f"unexpected line {line!r}" for line in result.lines
            if not (LOCK_TIMEOUT_LINE in line or re.match(r"snapstore: (vm[123]: |warning: )", line))]


# --------------------------------------------------------------------------- the deterministic case


def test_a_commit_never_goes_back_to_an_older_folder_state(sandbox: Sandbox) -> None:
    """Writer A reads the folder, then waits for the lock; meanwhile the folder changes and writer
    B commits the new state. A must not then commit what it read before the change."""
    folder = campaign.write_legacy(sandbox.libvirt / "vm1", {"s1.xml": GOOD("s1", None, True)})
    assert campaign.run_script(sandbox.argv("consolidate", "vm1")).code == 0
    campaign.write_legacy(folder, {"s1.xml": GOOD("s1", None), "s2.xml": GOOD("s2", "s1", True)})
    lock_path = sandbox.state / "locks" / "snapshots.vm1.lock"
    lock = os.open(lock_path, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    first = subprocess.Popen([str(campaign.SCRIPT), *sandbox.argv("consolidate", "vm1")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _holds_open(first.pid, lock_path), 15, "writer A never reached the lock")
        os.kill(first.pid, signal.SIGSTOP)  # A has read s1 and s2, and waits for the lock
        campaign.write_legacy(folder, {"s1.xml": GOOD("s1", None), "s2.xml": GOOD("s2", "s1"),
                                       "s3.xml": GOOD("s3", "s2", True)})
        os.close(lock)
        second = campaign.run_script(sandbox.argv("consolidate", "vm1"))
        assert second.code == 0, second
    finally:
        os.kill(first.pid, signal.SIGCONT)
        first.wait(timeout=30)
    held = campaign.parse_store(sandbox.store_file().read_bytes())
    campaign.count("concurrency: deterministic interleavings tried")
    assert sorted(held.by_name) == ["s1", "s2", "s3"], (
        "BUG: lost update: 'consolidate' reads the legacy folder before it takes the domain lock "
        "(cli/consolidate._consolidate: read_folder, then store.replace locks), so a run that waited "
        "for the lock commits the folder as it was before it waited, over the newer state another "
        f"writer committed meanwhile; the store now holds {sorted(held.by_name)}, the folder s1, s2, s3. "
        "The daemon does not see it (nothing changed in libvirt's folder) until the next libvirt event "
        "or the periodic reconcile (600 s); the soak counts such backward commits")


def test_a_folder_rewritten_while_read_is_not_committed_half_old_half_new(sandbox: Sandbox, monkeypatch) -> None:
    """libvirt creates s2 as the new current snapshot (s2.xml with <active>1, then s1.xml rewritten
    with <active>0) after consolidate listed the folder and before it read s1.xml. The folder held
    {s1 current} and then {s1, s2 current}; it never held {s1} with no current snapshot."""
    folder = campaign.write_legacy(sandbox.libvirt / "vm1", {"s1.xml": GOOD("s1", None, True)})
    real = fsio.read_identified  # what legacydir reads each file with

    def libvirt_writes_first(dir_fd, name, *args, **kwargs):
        if name == "s1.xml" and not (folder / "s2.xml").exists():
            campaign.plant(folder, "s2.xml", GOOD("s2", "s1", True, 1700000001))
            campaign.plant(folder, "s1.xml", GOOD("s1", None, False))
        return real(dir_fd, name, *args, **kwargs)
    monkeypatch.setattr(fsio, "read_identified", libvirt_writes_first)
    code = cli.main(["-q", *sandbox.argv("consolidate", "vm1")])
    assert (folder / "s2.xml").exists(), "the interleaving never happened: legacydir reads files another way now"
    campaign.count("concurrency: deterministic interleavings tried")
    path = sandbox.store_file()
    held = campaign.parse_store(path.read_bytes()) if path.exists() else None
    summary = None if held is None else (sorted(held.by_name), held.current)
    assert summary in (None, (["s1"], "s1"), (["s1", "s2"], "s2")), (
        "BUG: a folder read while libvirt rewrote it is committed half old, half new: consolidate "
        f"(exit {code}) committed {summary}, a state the folder never held (s1 without a current "
        "snapshot): legacydir.read_folder lists the folder, then reads each file, and nothing checks "
        "that the entries did not change meanwhile (legacydir.sources is taken before the read but "
        "compared only at the next run); the daemon heals it on the next event, a command does not")


def _holds_open(pid: int, path: Path) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False
