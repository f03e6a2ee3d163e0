"""What the last check of one domain and kind found in its two files, and
of exactly which inputs: a derived cache that lets `check --no-disks` of an
unchanged domain skip reading and validating every file.

    <state>/index/check.<kind>.<escaped domain>.json
    {"format": 1, "version": snapstore's, "inputs": Inputs,
     "findings": [[code, message, moment, path, hint], …], "notes": […],
     "counted": bool, "moments": int, "uuids": [[name, source, [uuid, …]], …]}

The inputs are everything those findings are a function of: the folder and
every entry in it (device, inode, size, mtime, ctime and mode, from one
lstat each, taken before the check reads anything), the store file the
same way, the schema files, the limits and paths that words of a finding
name. A file whose inode, size, mtime and ctime are unchanged holds the
same bytes: a write moves the mtime and the ctime, and no call sets the
ctime back (git's index trusts the same rule). The rule fails only within
one tick of the clock that stamps them, so a memo whose inputs include a
file changed less than RECENT ago is not written ("racy git"): a change
made while the check ran then shows as a new ctime.

What the memo does not hold is checked at every run: the history, the uuid
of the domain's definition against each moment's (the uuids are kept),
the disks (a replay needs --no-disks: the disk check reads every moment),
and leftovers of dead writers. A memo of other inputs, another version of
snapstore or another format is not used, and the next full check replaces
it; reading or writing it fails loudly (the caller warns) but never fails
the check.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from snapstore import __version__, fsio, index

FORMAT = 1
RECENT_NS = 2_000_000_000  # over the coarsest timestamp granularity a host's filesystem may have (1 s)
Inputs = dict[str, Any]
Recorded = list[Any]  # [code, message, moment, path, hint]
Uuids = tuple[str, str, list[str]]  # moment, its source, the uuids it embeds


def _stat(path: Path | str, dir_fd: int | None = None) -> list[int] | None:
    try:
        info = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return [*fsio.identity(info), info.st_ctime_ns, info.st_mode]


def _folder_entries(folder: Path) -> dict[str, list[int] | None] | None:
    """Every entry of the folder, stat-ed; None when it is not a real folder."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # absent, a symlink, not a folder: the full check says what
        return None
    try:
        return {name: _stat(name, fd) for name in os.listdir(fd)}
    finally:
        os.close(fd)


def inputs(folder: Path, store_file: Path, schema_dir: Path, limits: list[int]) -> Inputs:
    """The inputs of a domain's check as they are now (lstat only, nothing
    read); OSError when one cannot be stat-ed (the full check says why)."""
    schemas = _folder_entries(schema_dir)
    return {"folder": str(folder), "entries": _folder_entries(folder), "folder_id": _stat(folder),
            "store": str(store_file), "store_file": _stat(store_file),
            "schemas": None if schemas is None else {k: v for k, v in schemas.items() if k.endswith(".rng")},
            "schema_dir": str(schema_dir), "limits": limits}


def settled(of: Inputs, now_ns: int) -> bool:
    """Whether no file among the inputs changed within RECENT of ``now_ns``
    (so that a change the check overlapped shows as another ctime)."""
    files = [of["folder_id"], of["store_file"], *(of["entries"] or {}).values(), *(of["schemas"] or {}).values()]
    return all(info is None or info[4] < now_ns - RECENT_NS for info in files)


@dataclasses.dataclass
class Memo:
    findings: list[Recorded]
    notes: list[str]
    counted: bool  # whether the domain counts (it has moment files or a store file)
    moments: int
    uuids: list[Uuids]

    def encode(self, of: Inputs) -> bytes:
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}  # asdict copies deep
        return json.dumps({"format": FORMAT, "version": __version__, "inputs": of, **fields},
                          ensure_ascii=False, separators=(",", ":")).encode()


def read(path: Path, of: Inputs) -> Memo | None:
    """The memo of exactly these inputs, or None; an I/O error raises."""
    data = index.read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != __version__ \
            or data.get("inputs") != of:
        return None
    try:
        return Memo([list(f) for f in data["findings"]], list(data["notes"]), bool(data["counted"]),
                    int(data["moments"]), [(u[0], u[1], list(u[2])) for u in data["uuids"]])
    except (KeyError, IndexError, TypeError, ValueError):  # not a memo of this format after all
        return None


def write(path: Path, of: Inputs, memo: Memo) -> None:
    """Replace the memo; raises WriteError or EnvironmentProblem."""
    fsio.atomic_write(path, memo.encode(of), durable=False)
