"""The daemon's Prometheus metrics (README "Metrics"), for node_exporter's
textfile collector: rendered from the synchronizer's domain states and the
commits counted here, at most once a second after a change (and once at
start), and written by a thread of their own, so a slow or failing metrics
folder never holds up the main loop, and so never a commit.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
import typing
from collections.abc import Callable, Mapping
from pathlib import Path

from snapstore import __version__, config, errors, fsio, metrics
from snapstore.daemon import logs, sync

log = logging.getLogger("snapstore.daemon")
INTERVAL = 1.0  # seconds: at most one write this often
# snapstore_domain_state's values, the worst first: a domain's kinds are
# summed up as the worst state either has.
STATES = ("failing", "degraded", "guarded", "ok")


def domain_state(state: sync.DomainState) -> str:
    """One key's state. An undone domain (the store was undone to a
    generation libvirt's folder lacks) is "guarded": as for a missing or
    emptied folder, the store is kept and commits from the folder wait."""
    if state.failures:
        return "failing"
    if state.degraded is not None:
        return "degraded"
    return "guarded" if state.guarded or state.undone is not None else "ok"


class Fleet(typing.NamedTuple):
    """The replication's gauges (daemon.replication.Replicator.gauges)."""

    queued: int
    reachable: bool
    shipped: int  # generations the database took since the daemon started


class Exporter:
    """Counters, and what the metrics file holds; off when ``path`` is None."""

    def __init__(self, settings: config.Config, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self.commits = 0
        self.failures = 0
        self.committed_at: dict[sync.Key, float] = {}
        self._changed = True  # written once at start
        self._next = float("-inf")
        self._offered: bytes | None = None
        self._writer: _Writer | None = None
        self._fleet: Fleet | None = None
        self.configure(settings)

    def configure(self, settings: config.Config) -> None:
        """(Re)start the writer for the settings' file and mode (SIGHUP)."""
        target = None if settings.metrics_file is None else (settings.metrics_file, settings.metrics_mode)
        if self._writer is not None and (self._writer.path, self._writer.mode) == target:
            return
        self.close()
        self._writer = None if target is None else _Writer(*target)
        self._changed, self._offered = True, None

    def record(self, key: sync.Key, outcome: sync.Outcome) -> None:
        """One sync's outcome: every sync may change a domain's state or count."""
        self._changed = True
        if outcome is sync.Outcome.COMMITTED:
            self.commits += 1
            self.committed_at[key] = self.wall()
        elif outcome is sync.Outcome.FAILED:
            self.failures += 1

    def fleet(self, gauges: Fleet | None) -> None:
        """The replication's state, when the fleet is on; written when it changes."""
        if gauges != self._fleet:
            self._fleet, self._changed = gauges, True

    def next_due(self) -> float | None:
        """When publish() has something to write; None: nothing to wait for."""
        return self._next if self._writer is not None and (self._changed or self._writer.failing) else None

    def publish(self, domains: Mapping[sync.Key, sync.DomainState], now: float) -> None:
        """Hand the writer the file's new text, if due and different from the
        last (a failed write is tried again once a second)."""
        due = self.next_due()
        if due is None or now < due or self._writer is None:
            return
        self._changed, self._next = False, now + INTERVAL
        data = self.render(domains)
        if data != self._offered or self._writer.failing:
            self._offered = data
            self._writer.offer(data)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.stop()

    def render(self, domains: Mapping[sync.Key, sync.DomainState]) -> bytes:
        keys = sorted((key for key, state in domains.items() if state.skipped is None),  # skipped: not domains
                      key=lambda key: (key[1], key[0].name))
        self.committed_at = {key: at for key, at in self.committed_at.items() if key in domains}
        worst: dict[str, str] = {}
        for key in keys:
            state = domain_state(domains[key])
            worst[key[1]] = min(worst.get(key[1], "ok"), state, key=STATES.index)
        return metrics.render([
            metrics.Family("snapstore_info", "gauge", "The daemon's version (always 1).",
                           [((("version", __version__),), 1)]),
            metrics.Family("snapstore_moments", "gauge",
                           "Snapshots or checkpoints of a domain in its consolidated file, as the daemon last "
                           "committed or found it.", [(_of(key), domains[key].count) for key in keys]),
            metrics.Family("snapstore_last_commit_timestamp_seconds", "gauge",
                           "When the daemon last committed a domain's consolidated file (since it started).",
                           [(_of(key), self.committed_at[key]) for key in keys if key in self.committed_at]),
            metrics.Family("snapstore_commits_total", "counter",
                           "Consolidated files the daemon replaced with a changed one.", [((), self.commits)]),
            metrics.Family("snapstore_commit_failures_total", "counter",
                           "Syncs that failed (lock timeout, I/O error) and are retried; each try counts.",
                           [((), self.failures)]),
            metrics.Family("snapstore_domain_state", "gauge",
                           "1 for the domain's state, 0 for the others; undone counts as guarded.",
                           [((("domain", domain), ("state", state)), int(state == current))
                            for domain, current in worst.items() for state in reversed(STATES)]),
            *self._fleet_families(),
        ])

    def _fleet_families(self) -> list[metrics.Family]:
        if self._fleet is None:
            return []
        return [
            metrics.Family("snapstore_fleet_queued", "gauge",
                           "Generations in the outbox, not yet acknowledged by the fleet database.",
                           [((), self._fleet.queued)]),
            metrics.Family("snapstore_fleet_reachable", "gauge",
                           "1 when the last call to the fleet database succeeded, 0 while it fails.",
                           [((), int(self._fleet.reachable))]),
            metrics.Family("snapstore_fleet_shipped_total", "counter",
                           "Generations the fleet database took from this daemon since it started.",
                           [((), self._fleet.shipped)]),
        ]


def _of(key: sync.Key) -> metrics.Labels:
    kind, domain = key
    return (("domain", domain), ("kind", kind.name))


class _Writer:
    """Writes the newest text it was handed, in its own thread; a failure is
    a warning, logged once until it changes, never the daemon's failure."""

    def __init__(self, path: Path, mode: int) -> None:
        self.path, self.mode = path, mode
        self.failing = False
        self._reported: str | None = None
        self._pending: bytes | None = None
        self._stopping = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="snapstore-metrics", daemon=True)
        self._thread.start()

    def offer(self, data: bytes) -> None:
        with self._wake:
            self._pending = data
            self._wake.notify()

    def stop(self, timeout: float = 2.0) -> None:
        """Write what is pending, then end the thread (waiting ``timeout`` at most)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        with contextlib.suppress(errors.SnapstoreError, OSError):  # no folder yet: nothing to sweep
            fsio.sweep_temps(self.path.parent)  # a temp of a snapstore killed mid-write (never a *.prom)
        while True:
            with self._wake:
                while self._pending is None and not self._stopping:
                    self._wake.wait()
                data, self._pending = self._pending, None
            if data is None:
                return
            self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            metrics.write(self.path, data, self.mode)
        except Exception as e:  # whatever it is, the daemon goes on
            self.failing = True
            reason = errors.one_line(str(e) if isinstance(e, errors.SnapstoreError) else f"{self.path}: {e!r}")
            if reason != self._reported:
                log.warning("metrics file not written: %s", reason, extra=logs.fields(logs.FAILED))
                self._reported = reason
            return
        if self.failing:
            log.info("metrics file %s written again", self.path, extra=logs.fields(logs.RECOVERED))
        self.failing, self._reported = False, None
