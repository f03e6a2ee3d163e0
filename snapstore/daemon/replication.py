"""The daemon's replication: a recorder thread queues each commit in the
outbox, a shipper thread sends the outbox to the fleet database.

The commit only puts a record on an in-memory queue (Store.on_commit): it
never waits on the outbox's fsyncs, let alone the network. A database that
is down, slow or refusing only delays shipping: the shipper backs off (1 s
doubling to a minute) and the outbox keeps everything meanwhile. At its
start the shipper queues every live generation that was committed while no
daemon was shipping (seed), before it ships.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import threading
import time
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from snapstore import config, errors, fsio, history, kinds, store
from snapstore.daemon import logs, metrics
from snapstore.fleet import database, outbox, ship

if typing.TYPE_CHECKING:
    import psycopg

log = logging.getLogger("snapstore.daemon")
_BACKOFF = (1.0, 60.0)
_IDLE_POLL = 5.0      # seconds between looks at the outbox when nothing woke the shipper
_HEARTBEAT = 60.0     # seconds between host rows touched while idle (fleet check's staleness)
T = TypeVar("T")


class Rejected(Exception):
    """The database refused a batch's data (not the connection)."""


class Replicator:
    def __init__(self, settings: config.Config, state: store.Store, host_id: str,
                 changed: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.store = state
        self.host_id = host_id
        self.changed = changed  # wakes the main loop: STATUS= and the metrics follow at once
        self.outbox = outbox.Outbox(settings.state_dir, settings.fleet_outbox_max, self._warn)
        self._records: queue.SimpleQueue[history.Committed | None] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._queued = 0
        self._unrecorded = 0  # commits handed over, not yet in the outbox
        self._shipped = 0
        self._seeded = False
        self._unreachable_since: float | None = None
        self._last_error: str | None = None
        self._threads = [threading.Thread(target=self._record_loop, name="fleet-recorder", daemon=True),
                         threading.Thread(target=self._ship_loop, name="fleet-shipper", daemon=True)]

    # --- the commit's side ---------------------------------------------------------------------

    def committed(self, committed: history.Committed) -> None:
        """Store.on_commit: a queue put, nothing else."""
        with self._lock:
            self._unrecorded += 1
        self._records.put(committed)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Queue what was committed (the recorder drains first), then stop shipping."""
        self._records.put(None)
        self._threads[0].join(timeout)
        self._stopping.set()
        self._wake.set()
        self._threads[1].join(timeout)  # the shipper closes its own connection as it ends

    def status(self) -> str:
        """For STATUS=: ``fleet: 3 queued`` or ``fleet: unreachable since …``."""
        with self._lock:
            queued, since = self._queued + self._unrecorded, self._unreachable_since
            if not self._seeded:
                return "fleet: starting"
        if since is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
            return f"fleet: unreachable since {stamp}, {queued} queued"
        return f"fleet: {queued} queued" if queued else "fleet: up to date"

    def gauges(self) -> metrics.Fleet:
        with self._lock:
            return metrics.Fleet(self._queued + self._unrecorded, self._unreachable_since is None, self._shipped)

    # --- recorder --------------------------------------------------------------------------------

    def _record_loop(self) -> None:
        while (committed := self._records.get()) is not None:
            try:
                self._queue(committed)
            except Exception as e:  # the thread must outlive anything: said
                self._warn(f"{committed.domain}: fleet: generation {committed.number} not queued: "
                           f"{type(e).__name__}: {e} (the daemon's next start queues the live one)")
            finally:
                with self._lock:
                    self._unrecorded -= 1

    def _queue(self, committed: history.Committed) -> None:
        try:
            self.outbox.put(committed, self.store.generation_files(committed.kind, committed.domain, committed.number))
        except outbox.Superseded as e:  # not in the fleet, ever: said as a warning
            self._warn(f"fleet: {e}")
        except (OSError, errors.SnapstoreError) as e:
            self._warn(f"{committed.domain}: fleet: generation {committed.number} of its {committed.kind.plural}: "
                       f"{e} (the commit itself stands; the daemon's next start queues it)")
        self._wake.set()

    # --- shipper ---------------------------------------------------------------------------------

    def _ship_loop(self) -> None:
        try:
            self._shipping()
        finally:
            self._drop_connection()

    def _shipping(self) -> None:
        try:
            self._seed()
        except Exception as e:  # the thread must outlive anything: said, shipping goes on
            self._warn(f"fleet: live generations not queued at start: {type(e).__name__}: {e}")
        self._entries()  # counted before "starting" ends: never "up to date" over a full outbox
        with self._lock:
            self._seeded = True
        self.changed()
        delay = _BACKOFF[0]
        last_touch = 0.0
        while not self._stopping.is_set():
            entries = self._entries()
            try:
                if entries:
                    self._ship(entries[:ship.BATCH])
                elif time.monotonic() - last_touch >= _HEARTBEAT:
                    self._database(lambda conn: ship.touch_host(conn, self.host_id))
                    last_touch = time.monotonic()
                self._reachable()
                delay = _BACKOFF[0]
            except errors.FleetError as e:
                self._unreachable(str(e))
            except (OSError, errors.SnapstoreError) as e:  # the outbox itself: said, retried
                self._warn(f"fleet outbox: {e} (retrying)")
            except Exception as e:  # the thread must outlive anything: said, retried
                self._drop_connection()
                self._warn(f"fleet: shipping failed: {type(e).__name__}: {e} (retrying)")
            else:
                if not entries:
                    self._wake.wait(_IDLE_POLL)
                    self._wake.clear()
                continue
            self._stopping.wait(delay)
            delay = min(delay * 2, _BACKOFF[1])

    def _entries(self) -> list[outbox.Entry]:
        try:
            entries = self.outbox.entries()
        except (OSError, errors.SnapstoreError) as e:
            self._warn(f"fleet outbox cannot be read: {e}")
            entries = []
        with self._lock:
            changed, self._queued = self._queued != len(entries), len(entries)
        if changed:
            self.changed()
        return entries

    def _ship(self, entries: list[outbox.Entry]) -> None:
        batch = [(entry, found) for entry in entries
                 if (found := self.outbox.read(entry, self.store.read_limit)) is not None]
        try:
            shipped = self._database(lambda conn: ship.ship(conn, self.host_id, [found for _, found in batch]))
        except Rejected as e:
            if len(batch) == 1:  # this one entry: dropped, so that the rest can go
                self._warn(f"fleet: {batch[0][0].name}: the database refuses it ({e}); dropped from the outbox")
                self.outbox.done([batch[0][0]])
                return
            for one in batch:  # which entry is it: one at a time
                self._ship([one[0]])
            return
        for committed in shipped.conflicting:
            self._warn(f"{committed.domain}: generation {committed.number} of its {committed.kind.plural} is in "
                       "the fleet already with other content (was the local history renumbered?); not overwritten")
        # A conflicting one is marked too: the fleet holds that number, and the
        # next start must not queue it again (and warn again).
        self.outbox.done([entry for entry, _ in batch], shipped.sent + shipped.present + shipped.conflicting)
        with self._lock:
            self._shipped += len(shipped.sent)
        if shipped.sent:
            log.info("fleet: shipped %d generations", len(shipped.sent), extra=logs.fields(logs.FLEET))

    def _database(self, call: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``call`` on the connection (made when there is none); a failure is
        a FleetError (retried with backoff), or Rejected when the database
        refused the data itself (a constraint, a type): retrying would not help."""
        import psycopg

        try:
            if self._conn is None or self._conn.closed:
                self._conn = database.connect(self.settings.fleet_dsn)
            result = call(self._conn)
            self._conn.commit()
            return result
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as e:
            self._drop_connection()
            raise Rejected(database.reason(e)) from None
        except psycopg.Error as e:
            self._drop_connection()
            raise errors.FleetError(where=database.describe(self.settings.fleet_dsn),
                                    reason=database.reason(e)) from None

    def _drop_connection(self) -> None:
        with contextlib.suppress(Exception):
            if self._conn is not None:
                self._conn.close()
        self._conn = None

    def _reachable(self) -> None:
        with self._lock:
            was, self._unreachable_since, self._last_error = self._unreachable_since, None, None
        if was is not None:
            log.info("fleet: database reachable again", extra=logs.fields(logs.FLEET))
            self.changed()

    def _unreachable(self, why: str) -> None:
        self._drop_connection()
        with self._lock:
            first = self._unreachable_since is None
            self._unreachable_since = self._unreachable_since or time.time()
            changed, self._last_error = why != self._last_error, why
        if first or changed:  # said once per kind of failure, not at every retry
            self._warn(f"fleet: database unreachable, generations stay queued (retrying): {why}")
        if first:
            self.changed()

    # --- seed --------------------------------------------------------------------------------------

    def _seed(self) -> None:
        """Queue each live generation the outbox neither holds nor marks shipped."""
        try:
            queued = {entry.name for entry in self.outbox.entries()}
            self.outbox.sweep()
            keys = [(kind, domain) for kind in kinds.ALL for domain in self.store.domains(kind)]
        except (OSError, errors.SnapstoreError) as e:
            self._warn(f"fleet: live generations not queued at start: {e}")
            return
        for kind, domain in keys:
            if self._stopping.is_set():
                return
            try:
                self._seed_one(kind, domain, queued)
            except (OSError, errors.SnapstoreError) as e:
                self._warn(f"{domain}: fleet: the live generation of its {kind.plural} not queued at start: {e}")

    def _seed_one(self, kind: kinds.Kind, domain: str, queued: set[str]) -> None:
        with self.store.lock(kind, domain):
            path = self.store.path(kind, domain)
            with fsio.opened_dir(path.parent) as fd:
                number = self.store.history.live_number(fd, path.name, kind, domain)
            if outbox.entry_name(kind, domain, number) in queued:
                return
            shipped = self.outbox.shipped(kind, domain)
            if shipped is not None and shipped[0] == number:
                return
            committed = live_generation(self.store, kind, domain, number, "fleet: queued at daemon start")
            if committed is not None:
                self._queue(committed)

    def _warn(self, text: str) -> None:
        log.warning("%s", text, extra=logs.fields(logs.FAILED))


def live_generation(state: store.Store, kind: kinds.Kind, domain: str, number: int,
                    by: str) -> history.Committed | None:
    """The live store file as generation ``number`` (read and parsed)."""
    from snapstore.formats import consolidated

    path = state.path(kind, domain)
    with fsio.opened_dir(path.parent) as fd:
        data, identity = fsio.read_identified(fd, path.name, state.read_limit, path)
    tree = consolidated.parse_consolidated(data, kind, str(path), state.read_limit)
    return history.Committed(kind, domain, number, identity[3] / 1e9, by, hashlib.sha256(data).hexdigest(),
                             len(data), tree.current, {m.name: m.digest for m in tree.moments}, tree.uuid(),
                             identity)
