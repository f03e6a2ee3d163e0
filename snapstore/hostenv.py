"""Facts about the host that no file of ours tells: is libvirt running?"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def running_libvirt_daemon(pidfiles: Iterable[Path]) -> tuple[Path, int] | None:
    """The first pid file whose process is alive, with its pid, or None.

    libvirtd and virtqemud read the snapshot folders only at start, so while
    one runs, files written into them are unseen and may be overwritten.
    """
    for pidfile in pidfiles:
        pid = _read_pid(pidfile)
        if pid is not None and pid_alive(pid):
            return pidfile, pid
    return None


def _read_pid(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True
