"""What reaches the daemon's queue: from the watcher's thread and from
signal handlers (SimpleQueue.put is safe in both); the main loop acts on them."""
from __future__ import annotations

import typing

from snapstore import kinds


class Changed(typing.NamedTuple):
    """libvirt changed a domain's folder: ``name`` is the file, None for the folder itself."""

    kind: kinds.Kind
    domain: str
    name: str | None


class Rescan(typing.NamedTuple):
    """Events may have been lost (inotify overflow): read every domain again."""

    why: str


class Reload(typing.NamedTuple):
    """SIGHUP: read the settings again and rescan."""


class Stop(typing.NamedTuple):
    """SIGTERM or SIGINT: finish the commit in flight, then exit."""


class Wake(typing.NamedTuple):
    """The fleet's replication changed state: STATUS= and the metrics follow."""


Message = Changed | Rescan | Reload | Stop | Wake
