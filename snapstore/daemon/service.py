"""The daemon's main loop: watch, debounce, sync, notify systemd.

Signal handlers only put an item on the queue (SimpleQueue.put is safe
there), so a commit in flight always finishes before a signal is acted on.
"""
from __future__ import annotations

import logging
import queue
import signal
import time
from collections.abc import Callable

from snapstore import config, errors, fleet, kinds, store
from snapstore.daemon import debounce, logs, messages, metrics, notify, replication, sync, watcher

log = logging.getLogger("snapstore.daemon")
_WAKE_AT_LEAST = 1.0  # seconds: bounds the wait, so watcher health is checked often
# While starting, each sign of progress extends systemd's start timeout by
# this much (EXTEND_TIMEOUT_USEC): a large host's first reconcile may take
# minutes, a stuck one is still caught.
_START_EXTENSION = 60.0
_MIN_LEAD = 0.01  # seconds: the least a write-ahead starts before its deadline
_MAX_LEAD = 1.0  # and the most: the domain's lock is held from then on (commands wait for it)
_MAX_STAGED = 8  # commits written ahead at once (each holds a lock and a folder open)


class Service:
    def __init__(self, settings: config.Config, reload: Callable[[], config.Config],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.reload_settings = reload
        self.clock = clock
        self.queue: queue.SimpleQueue[messages.Message] = queue.SimpleQueue()
        self.notifier = notify.Notifier()
        self._next_ping = self.clock() if self.notifier.watchdog_interval else float("inf")
        self._ready = False
        self._next_extension = self.clock()
        self.metrics = metrics.Exporter(settings)
        self._build()

    def _build(self) -> None:
        state = store.Store(self.settings.state_dir, self._lock_timeout(), self.settings.max_store_bytes,
                            warn=lambda text: log.warning("%s", text, extra=logs.fields(logs.FAILED)),
                            keep=self.settings.history_limits())
        state.prepare()
        self.replication: replication.Replicator | None = None
        if self.settings.fleet_enabled:
            self.replication = replication.Replicator(self.settings, state, fleet.host_id(self.settings),
                                                      changed=lambda: self.queue.put(messages.Wake()))
            state.on_commit = self.replication.committed
        self.sync = sync.Synchronizer(self.settings, state, self.clock)
        self.debouncer: debounce.Debouncer[sync.Key] = debounce.Debouncer(self.settings.quiet_period)
        self._staged: dict[sync.Key, sync.Staged | None] = {}  # written ahead (None: tried, synced at the deadline)
        self._stage_cost: dict[sync.Key, float] = {}  # seconds the key's last write-ahead took
        self._once_not_ahead: set[sync.Key] = set()
        roots = {kind: self.sync.root(kind) for kind in kinds.ALL}
        self.watcher = watcher.Watcher(roots, self.queue)

    def run(self) -> int:
        self._install_signals()
        self.watcher.start()  # before the first scan: no change can fall in between
        self._start_replication()
        self.reconcile(at_start=True)
        self.metrics.publish(self.sync.domains, self.clock())
        self.notifier.ready(self.status())
        self._ready = True
        log.info("ready: %s", self.status(), extra=logs.fields(logs.STARTED))
        next_reconcile = self.clock() + self.settings.reconcile_interval
        while True:
            now = self.clock()
            self._keep_alive()
            if now >= next_reconcile:
                self.reconcile()
                next_reconcile = now + self.settings.reconcile_interval
            # No watchdog: no ping deadline (_next_ping is infinite; a past one would make the loop spin).
            deadline = min(d for d in (self._next_stage(), self.debouncer.next_due(), next_reconcile,
                                       self._next_ping, self.metrics.next_due(), now + _WAKE_AT_LEAST)
                           if d is not None)
            if not self._handle(self._wait(deadline - now)):
                break
            if self._stage_due():
                continue  # what came while writing ahead is handled before anything is published
            self._sync_due()
            self._check_watcher()
            self.metrics.fleet(self.replication.gauges() if self.replication is not None else None)
            self.metrics.publish(self.sync.domains, self.clock())  # after the commits due: never before one
            self.notifier.status(self.status())
        self.notifier.stopping()
        self._discard_staged()
        self.watcher.stop()
        self._stop_replication()
        self.metrics.close()
        log.info("stopped", extra=logs.fields(logs.STOPPED))
        return 0

    def status(self) -> str:
        """STATUS=: the domains' state, and the fleet's when it replicates."""
        text = self.sync.status()
        return f"{text}; {self.replication.status()}" if self.replication is not None else text

    def _start_replication(self) -> None:
        if self.replication is not None:
            self.replication.start()

    def _stop_replication(self) -> None:
        """What was committed is queued in the outbox before the threads stop."""
        if self.replication is not None:
            self.replication.stop(timeout=min(10.0, (self.notifier.watchdog_interval or 20.0) / 2))

    def _wait(self, timeout: float) -> list[messages.Message]:
        """Everything queued, waiting up to ``timeout`` for the first item."""
        try:
            items = [self.queue.get(timeout=max(timeout, 0.0))]
        except queue.Empty:
            return []
        while True:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                return items

    def _handle(self, items: list[messages.Message]) -> bool:
        """Act on queued messages; False when the daemon must stop."""
        now = self.clock()
        for item in items:
            if isinstance(item, messages.Changed):
                self.debouncer.touch((item.kind, item.domain), now)
                self._drop_staged((item.kind, item.domain))
                if item.name is not None:
                    self.sync.forget((item.kind, item.domain), item.name)
            elif isinstance(item, messages.Reload):
                self._reload()
            elif isinstance(item, messages.Stop):
                return False
        rescans = [item for item in items if isinstance(item, messages.Rescan)]
        if rescans:  # once per batch, however many overflows were queued
            log.warning("events may have been lost (%s); full rescan", rescans[0].why,
                        extra=logs.fields(logs.RESCAN))
            self.reconcile()
        return True

    def _sync_due(self) -> None:
        for key in self.debouncer.pop_due(self.clock()):
            self._keep_alive()
            staged = self._staged.pop(key, None)
            if staged is not None and self.watcher.alive():
                self._record(key, self.sync.publish(staged))
            else:  # not written ahead, or events may have been missed since: read now
                if staged is not None:
                    self.sync.discard(staged)
                self._sync_one(key)

    # Writing ahead: in the last part of a domain's quiet period its folder is
    # read and its commit written (durable, under a temp name, the domain's
    # lock held); at the period's end the commit is published (the history's
    # link, the rename, the folder fsync) unless an event came meanwhile,
    # which discards it. What is committed is what a read at the deadline
    # would have found: no change came after the read began. The part is
    # twice what the domain's last write-ahead took (at least _MIN_LEAD, at
    # most half the quiet period or _MAX_LEAD; a quarter of it before the first).

    def _lead(self, key: sync.Key) -> float:
        quiet = self.settings.quiet_period
        cost = self._stage_cost.get(key)
        lead = quiet / 4 if cost is None else max(_MIN_LEAD, 2 * cost)
        return min(lead, quiet / 2, _MAX_LEAD)

    def _next_stage(self) -> float | None:
        return min((due - self._lead(key) for key, due in self.debouncer.items() if key not in self._staged),
                   default=None)

    def _stage_due(self) -> bool:
        """Write ahead the domains whose deadline is within their lead,
        soonest first; True when any was. A pass ends once a commit written
        ahead is due (it is published first) or _MAX_STAGED wait, so a burst
        of changes never holds many locks past their deadlines."""
        waiting = sorted(((key, due) for key, due in self.debouncer.items() if key not in self._staged),
                         key=lambda item: item[1])
        done = False
        for key, due in waiting:
            now = self.clock()
            held = [self.debouncer.due(k) for k, staged in self._staged.items() if staged is not None]
            if due - self._lead(key) > now or any(at is not None and at <= now for at in held) \
                    or len(held) >= _MAX_STAGED:
                break
            self._keep_alive()
            if key in self._once_not_ahead:  # its last write-ahead was discarded: one sync at the deadline
                self._once_not_ahead.discard(key)
                self._staged[key] = None
                continue
            began = time.perf_counter()
            staged = self._staged[key] = self.sync.stage(key)  # None: not plain, synced at the deadline
            if staged is not None:
                self._stage_cost[key] = time.perf_counter() - began
            done = True
        return done

    def _drop_staged(self, key: sync.Key) -> None:
        """An event for ``key``: its write-ahead is discarded (and the next
        one skipped, so that events spaced about the quiet period apart do not
        write the file at each one for nothing)."""
        staged = self._staged.pop(key, None)
        if staged is not None:
            self.sync.discard(staged)
            self._once_not_ahead.add(key)

    def _discard_staged(self) -> None:
        for key in list(self._staged):
            staged = self._staged.pop(key)
            if staged is not None:
                self.sync.discard(staged)

    def _keep_alive(self) -> None:
        """WATCHDOG=1 when due, and while starting an extension of the start
        timeout: called between domains too, so a long reconcile or waits
        for locks never starve systemd's watchdog."""
        now = self.clock()
        interval = self.notifier.watchdog_interval
        if interval is not None and now >= self._next_ping:  # without a watchdog, _next_ping is infinite
            self.notifier.watchdog()
            self._next_ping = now + interval
        if not self._ready and now >= self._next_extension:
            self.notifier.extend_start(_START_EXTENSION)
            self._next_extension = now + _START_EXTENSION / 4

    def _lock_timeout(self) -> float:
        """A domain lock is waited for at most a quarter of the ping interval
        (an eighth of WATCHDOG_USEC): a domain whose lock is held is retried
        with backoff, the loop goes on."""
        interval = self.notifier.watchdog_interval
        return min(self.settings.lock_timeout, interval / 4) if interval else self.settings.lock_timeout

    def _sync_one(self, key: sync.Key, at_start: bool = False) -> None:
        """Sync a domain; an unsettled or failed one is retried through the debouncer."""
        self._record(key, self.sync.sync(key, at_start))

    def _record(self, key: sync.Key, outcome: sync.Outcome) -> None:
        self.metrics.record(key, outcome)
        delay = self.sync.retry_after(key, outcome)
        if delay is not None:
            self.debouncer.retry(key, self.clock() + delay)

    def reconcile(self, at_start: bool = False) -> None:
        """Every domain, now."""
        self._discard_staged()  # each is read again, and committed, now
        try:
            keys = self.sync.all_keys()
        except (OSError, errors.SnapstoreError) as e:
            log.error("cannot list domains: %s", e, extra=logs.fields(logs.FAILED))
            return
        for key in keys:
            self._keep_alive()
            self._sync_one(key, at_start)

    def _check_watcher(self) -> None:
        if not self.watcher.alive():
            log.error("file watcher stopped; restarting it and rescanning", extra=logs.fields(logs.RESCAN))
            self.watcher.stop()
            self.watcher.start()
            self.reconcile()
        elif self.watcher.missing_roots():
            self.watcher.start()
            self.reconcile()

    def _reload(self) -> None:
        self.notifier.reloading()
        self._discard_staged()
        try:
            self.settings = self.reload_settings()
        except errors.SnapstoreError as e:
            log.error("reload failed, keeping the old settings: %s", e, extra=logs.fields(logs.FAILED))
        self.metrics.configure(self.settings)
        self.watcher.stop()
        self._stop_replication()
        self._build()
        self.watcher.start()
        self._start_replication()
        self.reconcile(at_start=True)  # fresh state: the start-up guards apply again
        self.notifier.ready(self.status())
        log.info("reloaded: %s", self.status(), extra=logs.fields(logs.STARTED))

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.queue.put(messages.Stop()))
        signal.signal(signal.SIGINT, lambda *_: self.queue.put(messages.Stop()))
        signal.signal(signal.SIGHUP, lambda *_: self.queue.put(messages.Reload()))
