"""A derived listing index: what `list` shows, without parsing the whole file.

    <state>/index/<kind>.<escaped domain>.json
    {"format": 1, "identity": [dev, ino, size, mtime_ns], "domain": …,
     "current": …, "rows": [[name, parent, creation_time, state], …],
     "sources": {file name: [dev, ino, size, mtime_ns], …} or null,
     "uuid": the embedded domain uuid or null}

Rows are in the consolidated file's order (topological, canonical). The
index is trusted only while the consolidated file's identity (device, inode,
size, mtime) is the one recorded: every commit renames a new inode into
place, so any change to the file, ours or an operator's, shows. A stale,
missing or unreadable index is rebuilt from the file and never an error.
"sources" records the identity of every entry of the libvirt folder the
file was consolidated from, so an unchanged folder is recognised from one
stat per file instead of a parse.
It holds no secrets, but is written 0600 like everything else.
"""
from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

from snapstore import codes, errors, fsio

FORMAT = 1
Identity = list[int]  # fsio.identity(): [device, inode, size, mtime_ns]
Row = tuple[str, "str | None", "int | None", "str | None"]


Sources = dict[str, Identity]  # file name -> identity ([] when gone meanwhile)


class Entry(typing.NamedTuple):
    """What the index says of one consolidated file."""

    current: str | None
    rows: list[Row]  # topological order
    uuid: str | None
    sources: Sources | None  # the legacy folder's entries it was consolidated from
    digests: dict[str, str] | None = None  # moment name -> digest (kept while history is on)
    sha256: str | None = None  # of the whole file (likewise)


def _entry(data: dict[str, Any]) -> Entry:
    rows = [(row[0], row[1], row[2], row[3]) for row in data["rows"]]
    return Entry(data["current"], rows, data["uuid"], data["sources"], data.get("digests"), data.get("sha256"))


def encode(domain: str, current: str | None, rows: list[Row], of: Identity, sources: Sources | None = None,
           uuid: str | None = None, digests: dict[str, str] | None = None, sha256: str | None = None) -> bytes:
    return json.dumps({"format": FORMAT, "identity": of, "domain": domain, "current": current,
                       "rows": rows, "sources": sources, "uuid": uuid, "digests": digests, "sha256": sha256},
                      ensure_ascii=False, separators=(",", ":")).encode()


def read(index_path: Path, of: Identity, domain: str) -> Entry | None:
    """The index when it describes exactly file ``of``; None when it is
    missing, stale or not an index. An I/O error reading it raises (the
    caller says so and rebuilds)."""
    data = read_json(index_path)
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("identity") != of \
            or data.get("domain") != domain:
        return None
    try:
        return _entry(data)
    except (KeyError, IndexError, TypeError):  # not an index of this format after all: rebuilt over it
        return None


def read_json(path: Path) -> Any:
    """A derived JSON file's content: None when it is missing, something
    else is in its place or it is not JSON (it is then written over). An
    I/O error raises."""
    with fsio.opened_dir_if_present(path.parent) as dir_fd:
        if dir_fd is None:
            return None
        try:
            return json.loads(fsio.read_regular(dir_fd, path.name, 1 << 30, path))
        except errors.FormatError as e:
            if isinstance(e.__cause__, FileNotFoundError) or e.code != codes.UNREADABLE:
                return None
            raise
        except ValueError:
            return None


def write(index_path: Path, data: bytes) -> None:
    """Replace the index (no fsync: it is checked before use); raises
    WriteError or EnvironmentProblem, the caller decides how loud to be."""
    try:
        index_path.parent.mkdir(mode=0o700, exist_ok=True)
    except OSError as e:
        raise errors.WriteError(path=index_path, reason=f"cannot create its folder: {fsio.reason(e)}") from e
    fsio.atomic_write(index_path, data, durable=False)
