"""inotify (through watchdog) on libvirt's snapshot and checkpoint roots.

Events become messages.Changed on the daemon's queue; the daemon decides
when to read, and reads the named files again. An inotify queue overflow
(watchdog only logs it, then rebuilds its watches) becomes messages.Rescan.
"""
from __future__ import annotations

import logging
import os
import queue
from pathlib import Path

from watchdog import events, observers
from watchdog.observers.api import BaseObserver

from snapstore import fsio, kinds
from snapstore.daemon import messages

log = logging.getLogger("snapstore.daemon")


class Watcher:
    def __init__(self, roots: dict[kinds.Kind, Path], sink: queue.SimpleQueue[messages.Message]) -> None:
        self.roots = roots
        self.sink = sink
        self.watched: set[kinds.Kind] = set()
        self._observer: BaseObserver | None = None
        self._overflow = _OverflowSignal(sink)

    def start(self) -> None:
        """Watch every root that exists now; call again to pick up new roots."""
        if self._observer is None:
            self._observer = observers.Observer()
            logging.getLogger("watchdog").addHandler(self._overflow)
            self._observer.start()
        for kind, root in self.roots.items():
            if kind not in self.watched and root.is_dir():
                self._observer.schedule(_Handler(kind, root, self.sink), str(root), recursive=True)
                self.watched.add(kind)

    def missing_roots(self) -> bool:
        return any(kind not in self.watched and root.is_dir() for kind, root in self.roots.items())

    def alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def stop(self) -> None:
        if self._observer is not None:
            logging.getLogger("watchdog").removeHandler(self._overflow)
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
            self.watched.clear()


class _Handler(events.FileSystemEventHandler):
    def __init__(self, kind: kinds.Kind, root: Path, sink: queue.SimpleQueue[messages.Message]) -> None:
        self.kind, self.root, self.sink = kind, os.fsdecode(root), sink

    def on_any_event(self, event: events.FileSystemEvent) -> None:
        if event.event_type in (events.EVENT_TYPE_OPENED, events.EVENT_TYPE_CLOSED_NO_WRITE):
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        for found in {self._entry_of(os.fsdecode(path)) for path in paths if path}:
            if found is not None:
                self.sink.put(messages.Changed(self.kind, *found))

    def _entry_of(self, path: str) -> tuple[str, str | None] | None:
        """(domain, file name, or None for the domain folder itself) of a
        path, or None for what we ignore."""
        relative = os.path.relpath(path, self.root)
        parts = relative.split(os.sep)
        if relative.startswith("..") or parts[0] in (".", "") or fsio.is_temp(parts[0], foreign=True):
            return None
        if len(parts) == 2 and not parts[1].endswith(".xml"):
            return None  # libvirt's <name>.xml.new temps and foreign files
        if len(parts) > 2:
            return None
        return parts[0], parts[1] if len(parts) == 2 else None


class _OverflowSignal(logging.Handler):
    """watchdog logs lost events (from its child loggers) but does not report
    them: a handler on its logger turns that record into a rescan."""

    def __init__(self, sink: queue.SimpleQueue[messages.Message]) -> None:
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.sink.put(messages.Rescan("inotify queue overflow"))
