"""Settings: defaults, the TOML file, and command-line overrides (in that order).

The file is optional at its default place; a file named with --config must
exist. Unknown keys are an error, so a typo never silently keeps a default.
"""
from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from snapstore import errors, history, kinds, limits

DEFAULT_PATH = Path("/etc/snapstore/snapstore.toml")


class Config(typing.NamedTuple):
    """Every setting; a NamedTuple: every command builds one, and dataclasses cost more to import."""

    # libvirt's system qemu driver roots (DESIGN §1).
    libvirt_dir: Path = Path("/var/lib/libvirt/qemu/snapshot")
    checkpoint_dir: Path = Path("/var/lib/libvirt/qemu/checkpoint")
    # systemd's StateDirectory=snapstore.
    state_dir: Path = Path("/var/lib/snapstore")
    # libvirt skips metadata files over 1 MiB; so do we, by default.
    max_legacy_bytes: int = limits.LIBVIRT_FILE
    # A consolidated file of 10,000 snapshots is ~60 MiB.
    max_store_bytes: int = limits.STORE_FILE
    # Seconds to wait for another snapstore process to release a domain.
    lock_timeout: float = 10.0
    # A live pid in one of these means libvirt has the folders loaded.
    libvirt_pidfiles: tuple[Path, ...] = (Path("/run/libvirt/libvirtd.pid"),
                                          Path("/run/libvirt/virtqemud.pid"))

    # Daemon: quiet period after the last event of a domain before reading it
    # (libvirt writes several files per operation).
    quiet_period: float = 0.25
    # Daemon: how long an inconsistent folder is retried before the domain is
    # reported degraded (the last good file stays).
    settle_timeout: float = 5.0
    # Daemon: full reconcile of every domain, the safety net under inotify.
    reconcile_interval: float = 600.0

    # History: generations kept per domain and kind (0 turns history off),
    # the oldest age kept (seconds, 30 days) and the bytes kept per domain
    # and kind; pruning is oldest first and never takes the newest.
    history_keep: int = 100
    history_max_age: float = 30 * 86400.0
    history_max_bytes: int = 256 * 1024 * 1024

    # Daemon: Prometheus metrics in node_exporter's textfile format, e.g.
    # /var/lib/prometheus/node-exporter/snapstore.prom; None (or ""): off.
    metrics_file: Path | None = None
    # Mode of a metrics file (the daemon's and `check --metrics`'): the
    # collector runs as another user, and the file holds domain names and
    # counts only (README "Metrics"); 0o640 with a setgid folder, 0o600.
    metrics_mode: int = 0o644

    # Fleet ([fleet] in the TOML file, README "Fleet"): replication of every
    # generation to PostgreSQL. dsn: a libpq connection string or URI (a
    # password belongs in a passfile=, never in the DSN); host_id: this
    # host's name in the fleet and its database role ("" reads
    # /etc/machine-id); outbox_max: generations queued before older ones of a
    # domain with newer ones queued are dropped; stale_after: seconds since a
    # host last replicated before `fleet check` calls it stale.
    fleet_enabled: bool = False
    fleet_dsn: str = ""
    fleet_host_id: str = ""
    fleet_outbox_max: int = 10000
    fleet_stale_after: float = 3600.0

    def history_limits(self) -> history.Limits:
        return history.Limits(self.history_keep, self.history_max_age, self.history_max_bytes)

    def root(self, kind: kinds.Kind) -> Path:
        """libvirt's folder of per-moment files for ``kind``."""
        return self.checkpoint_dir if kind is kinds.CHECKPOINT else self.libvirt_dir


def load(path: Path | None) -> Config:
    """Defaults overlaid with ``path`` (or the default file when it exists)."""
    explicit = path is not None
    path = path or DEFAULT_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise errors.ConfigError(path=path, reason="no such file") from None
        return Config()
    except (OSError, UnicodeDecodeError) as e:
        raise errors.ConfigError(path=path, reason=f"cannot be read: {e}") from e
    import tomllib  # only when there is a file: every command starts here

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise errors.ConfigError(path=path, reason=f"not valid TOML: {e}") from e
    return overlay(Config(), _sections(data, str(path)), str(path))


_SECTIONS = ("fleet",)


def _sections(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``[fleet] dsn = …`` as the field ``fleet_dsn``; a section's keys only there."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS and isinstance(value, dict):
            flat.update((f"{key}_{name}", item) for name, item in value.items())
        elif key.split("_", 1)[0] in _SECTIONS or key in _SECTIONS:
            raise errors.ConfigError(path=source, reason=f"unknown setting {key!r} (fleet settings go in [fleet])")
        else:
            flat[key] = value
    return flat


def _shown(key: str) -> str:
    """A field as the file spells it: 'dsn' in [fleet] for fleet_dsn."""
    section, _, name = key.partition("_")
    return f"{name!r} in [{section}]" if section in _SECTIONS else repr(key)


def overlay(config: Config, values: dict[str, Any], source: str) -> Config:
    """A copy of ``config`` with ``values`` converted to each field's type."""
    changes = {}
    for key, value in values.items():
        if key not in Config._fields:
            raise errors.ConfigError(path=source, reason=f"unknown setting {_shown(key)}")
        changes[key] = _convert(key, value, getattr(config, key), source)
    result = config._replace(**changes)
    if result.fleet_enabled and result.history_keep <= 0:
        raise errors.ConfigError(path=source, reason=(
            "[fleet] enabled needs history (history_keep of 1 or more): the fleet replicates generations, "
            "which the history numbers"))
    return result


def _convert(key: str, value: Any, default: Any, source: str) -> Any:
    try:
        if key == "metrics_mode":
            return _metrics_mode(_expect(value, int))
        if Config._field_defaults[key] is None:  # an optional path (metrics_file): "" keeps it off
            return Path(value) if _expect(value, str) else None
        if isinstance(default, Path):
            return Path(_expect(value, str))
        if isinstance(default, tuple):
            return tuple(Path(_expect(item, str)) for item in _expect(value, list))
        if isinstance(default, float):
            return float(_expect(value, (int, float)))
        return _expect(value, type(default))
    except (TypeError, ValueError) as e:
        raise errors.ConfigError(path=source, reason=f"setting {_shown(key)}: {e}") from None


def _metrics_mode(mode: int) -> int:
    """Owner read and write, and read for group or others at most."""
    if mode & 0o600 != 0o600 or mode & ~0o644:
        raise ValueError(f"expected 0o600, 0o640 or 0o644, got {mode:#o}")
    return mode


def _expect(value: Any, types: type | tuple[type, ...]) -> Any:
    if not isinstance(value, types) or isinstance(value, bool) and types is not bool:
        raise TypeError(f"expected {getattr(types, '__name__', 'a number')}, got {type(value).__name__}")
    return value
