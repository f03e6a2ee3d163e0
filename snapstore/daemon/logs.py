"""Daemon logging: journald with structured fields under systemd, else stderr.

Each event kind has a stable MESSAGE_ID (journalctl MESSAGE_ID=…), and
records carry SNAPSTORE_DOMAIN / SNAPSTORE_SNAPSHOT for filtering.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

STARTED = "5e1f2b4c8a9d4e0fb1c2d3e4f5a60001"
COMMITTED = "5e1f2b4c8a9d4e0fb1c2d3e4f5a60002"
DEGRADED = "5e1f2b4c8a9d4e0fb1c2d3e4f5a60003"
RECOVERED = "5e1f2b4c8a9d4e0fb1c2d3e4f5a60004"
GUARDED = "5e1f2b4c8a9d4e0fb1c2d3e4f5a60005"
ATTIC = "5e1f2b4c8a9d4e0fb1c2d3e4f5a60006"
FAILED = "5e1f2b4c8a9d4e0fb1c2d3e4f5a60007"
RESCAN = "5e1f2b4c8a9d4e0fb1c2d3e4f5a60008"
STOPPED = "5e1f2b4c8a9d4e0fb1c2d3e4f5a60009"
FLEET = "5e1f2b4c8a9d4e0fb1c2d3e4f5a6000a"


def fields(message_id: str, domain: str | None = None, snapshot: str | None = None) -> dict[str, Any]:
    """``extra=`` for a log call: journald fields (upper case, as journald requires)."""
    extra: dict[str, Any] = {"MESSAGE_ID": message_id}
    if domain is not None:
        extra["SNAPSTORE_DOMAIN"] = domain
    if snapshot is not None:
        extra["SNAPSTORE_SNAPSHOT"] = snapshot
    return extra


def under_journald(environ: Mapping[str, str] | None = None, stderr_fd: int = 2) -> bool:
    """True when stderr is the journal stream systemd names in JOURNAL_STREAM
    (a child of a service inherits the variable, not the stream)."""
    stream = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(stderr_fd)
    except OSError:
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def set_up(verbosity: int) -> logging.Handler:
    level = logging.DEBUG if verbosity > 0 else logging.INFO if verbosity == 0 else logging.WARNING
    handler = _journal_handler() if under_journald() else _stderr_handler()
    root = logging.getLogger("snapstore")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    logging.getLogger("watchdog").setLevel(logging.WARNING)  # its overflow warnings become rescans
    return handler


def _journal_handler() -> logging.Handler:
    from systemd import journal  # type: ignore[attr-defined]  # only importable where libsystemd is

    handler: logging.Handler = journal.JournalHandler(SYSLOG_IDENTIFIER="snapstore")
    return handler


def _stderr_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("snapstore: %(levelname)s: %(message)s"))
    return handler
