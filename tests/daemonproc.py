"""Run the real `snapstore daemon` as a subprocess and listen to it as systemd would.

A NotifySocket is an AF_UNIX SOCK_DGRAM socket bound at a short temp path,
passed as NOTIFY_SOCKET; a thread collects every datagram with its arrival
time.  A Daemon owns its process and its stderr file; tests stop it in a
finally or fixture teardown (SIGTERM, then SIGKILL).  Nothing here sleeps
blindly: wait_for() polls a predicate up to a deadline.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from snapstore import kinds
from snapstore.formats import consolidated

SNAPSTORE = Path(sys.executable).with_name("snapstore")
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, message: str | Callable[[], str] = "",
             interval: float = 0.01) -> T:
    """The first truthy value of predicate() within timeout seconds, else AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"not within {timeout} s: {text}")
        time.sleep(interval)


# --- systemd's notify socket --------------------------------------------------------------------


@dataclasses.dataclass
class Datagram:
    at: float  # time.monotonic() on arrival
    fields: dict[str, str]
    raw: str


class NotifySocket:
    """Collects the daemon's sd_notify datagrams; on_ready runs in the reader thread."""

    def __init__(self, on_ready: Callable[[], Any] | None = None) -> None:
        # sun_path holds 108 bytes: pytest's tmp_path can be longer.
        self._dir = Path(tempfile.mkdtemp(prefix="sn-"))
        self.path = self._dir / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.05)
        self.on_ready = on_ready
        self.ready_snapshots: list[Any] = []  # what on_ready returned, one per READY=1
        self.messages: list[Datagram] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            at = time.monotonic()
            raw = data.decode("utf-8", "replace")
            fields = dict(line.split("=", 1) for line in raw.splitlines() if "=" in line)
            if fields.get("READY") == "1" and self.on_ready is not None:
                self.ready_snapshots.append(self.on_ready())
            with self._lock:
                self.messages.append(Datagram(at, fields, raw))

    def all(self) -> list[Datagram]:
        with self._lock:
            return list(self.messages)

    def with_key(self, key: str, value: str | None = None) -> list[Datagram]:
        return [m for m in self.all() if key in m.fields and (value is None or m.fields[key] == value)]

    def statuses(self) -> list[str]:
        return [m.fields["STATUS"] for m in self.all() if "STATUS" in m.fields]

    def last_status(self) -> str | None:
        statuses = self.statuses()
        return statuses[-1] if statuses else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


# --- the daemon process ------------------------------------------------------------------------


def write_config(path: Path, **settings: float) -> Path:
    """A TOML config with the given daemon settings (empty file when none)."""
    path.write_text("".join(f"{key} = {float(value)!r}\n" for key, value in settings.items()))
    return path


class Daemon:
    def __init__(self, libvirt_dir: Path, checkpoint_dir: Path, state_dir: Path, config: Path,
                 stderr_path: Path, *, watchdog_usec: int | None = None,
                 on_ready: Callable[[], Any] | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.state_dir = state_dir
        self.stderr_path = stderr_path
        self.notify = NotifySocket(on_ready)
        env = {key: value for key, value in os.environ.items()
               if key not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")}
        env["NOTIFY_SOCKET"] = str(self.notify.path)
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        self.argv = [str(SNAPSTORE), "daemon", "--libvirt-dir", str(libvirt_dir),
                     "--checkpoint-dir", str(checkpoint_dir), "--state-dir", str(state_dir),
                     "--config", str(config), *extra_args]
        with open(stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=stderr)
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        return (f"daemon {'running' if self.alive() else f'exited {self.proc.returncode}'}; "
                f"notify: {[m.raw for m in self.notify.all()][-8:]}; stderr:\n{self.stderr()[-3000:]}")

    def wait_ready(self, count: int = 1, timeout: float = 15.0) -> Datagram:
        def ready() -> Datagram | None:
            if not self.alive():
                raise AssertionError(f"daemon died before READY=1: {self.describe()}")
            found = self.notify.with_key("READY", "1")
            return found[count - 1] if len(found) >= count else None
        return wait_for(ready, timeout, self.describe)

    def wait_status(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        """The latest STATUS= once it satisfies predicate."""
        def latest() -> str | None:
            status = self.notify.last_status()
            return status if status is not None and predicate(status) else None
        return wait_for(latest, timeout, lambda: f"STATUS= {what}; {self.describe()}")

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; the exit status."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def kill(self) -> int:
        if self.alive():
            self.proc.kill()
        return self.proc.wait(timeout=10)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.notify.close()


# --- the store ----------------------------------------------------------------------------------


def store_path(state_dir: Path, domain: str, kind: kinds.Kind = kinds.SNAPSHOT) -> Path:
    from snapstore.store import Store
    return Store(state_dir).path(kind, domain)


def read_store(state_dir: Path, domain: str, kind: kinds.Kind = kinds.SNAPSHOT) -> bytes | None:
    try:
        return store_path(state_dir, domain, kind).read_bytes()
    except FileNotFoundError:
        return None


@dataclasses.dataclass(frozen=True)
class Summary:
    """Names, parents and current: what must equal libvirt's view."""

    parents: tuple[tuple[str, str | None], ...]
    current: str | None

    @classmethod
    def of(cls, parents: dict[str, str | None], current: str | None) -> Summary:
        return cls(tuple(sorted(parents.items())), current)


def summary_of_bytes(data: bytes, kind: kinds.Kind = kinds.SNAPSHOT) -> Summary:
    tree = consolidated.parse_consolidated(data, kind, "store")
    return Summary.of({m.name: m.parent for m in tree.moments}, tree.current)


def store_summary(state_dir: Path, domain: str) -> Summary | None:
    data = read_store(state_dir, domain)
    return None if data is None else summary_of_bytes(data)


def view_summary(view: Any) -> Summary:
    return Summary.of(view.parents, view.current)
