"""systemd's notify protocol: READY, STATUS, WATCHDOG, STOPPING.

systemd.daemon.notify() is a no-op without NOTIFY_SOCKET, so the daemon
runs the same way under systemd, in a test, or in a terminal.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from systemd import daemon as sd_daemon  # type: ignore[attr-defined]  # no type information shipped


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.watchdog_interval = _watchdog_interval(os.environ if environ is None else environ)
        self._status = ""

    def ready(self, status: str) -> None:
        self._status = status
        sd_daemon.notify(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        if status != self._status:
            self._status = status
            sd_daemon.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        sd_daemon.notify("WATCHDOG=1")

    def extend_start(self, seconds: float) -> None:
        """Still starting, and making progress: systemd waits ``seconds`` more."""
        sd_daemon.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def reloading(self) -> None:
        sd_daemon.notify("RELOADING=1")

    def stopping(self) -> None:
        sd_daemon.notify("STOPPING=1\nSTATUS=stopping")


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC, as sd_watchdog_enabled() advises; None when off."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
