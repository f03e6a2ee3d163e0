"""Stable finding codes, shared by the formats, the tree rules and `check`.

Codes are never reused or renumbered. Groups: SS1xx file and parse, SS2xx
tree, SS3xx store vs folder, SS4xx leftovers and permissions, SS5xx disk
images, SS6xx the fleet, SS7xx history. Each has a severity
(its title is the comment beside it); hints live with the checks that know
the domain and path they name.
"""
from __future__ import annotations

import typing

ERROR = "error"
WARNING = "warning"

UNREADABLE = "SS101"
UNPARSABLE = "SS102"
WRONG_ROOT = "SS103"
OVER_LIBVIRT_LIMIT = "SS104"
OVER_RPC_LIMIT = "SS105"
FILE_NAME_MISMATCH = "SS106"
UNSTORABLE_NAME = "SS107"
SCHEMA_INVALID = "SS108"
BAD_INTERNAL_ELEMENT = "SS109"

EMPTY_NAME = "SS201"
DUPLICATE = "SS202"
MISSING_PARENT = "SS203"
CYCLE = "SS204"
CURRENT_MISSING = "SS205"
UUID_MISMATCH = "SS206"
SEVERAL_CURRENT = "SS207"
NO_CURRENT = "SS208"
UUID_VS_DEFINITION = "SS209"
NAME_PATTERN = "SS210"

STORE_MISSING = "SS301"
FOLDER_MISSING = "SS302"
ONLY_IN_FOLDER = "SS303"
ONLY_IN_STORE = "SS304"
CONTENT_DIFFERS = "SS305"
CURRENT_DIFFERS = "SS306"

LIBVIRT_TEMP = "SS401"
SNAPSTORE_TEMP = "SS402"
SYMLINK = "SS403"
NOT_REGULAR = "SS404"
MODE_TOO_WIDE = "SS405"
FOREIGN_FILE = "SS406"

IMAGE_LACKS_SNAPSHOT = "SS501"
IMAGE_ORPHAN_SNAPSHOT = "SS502"
IMAGE_UNREADABLE = "SS503"
IMAGE_LACKS_BITMAP = "SS504"
IMAGE_ORPHAN_BITMAP = "SS505"
BITMAP_QEMU_DIED = "SS506"
BITMAP_INCONSISTENT = "SS507"

FLEET_DIVERGED = "SS601"
FLEET_DUPLICATE = "SS602"
FLEET_STALE_HOST = "SS603"
FLEET_NOT_REPLICATED = "SS604"
FLEET_QUEUED = "SS605"

HISTORY_DAMAGED = "SS701"
HISTORY_GAP = "SS702"
HISTORY_MODE = "SS703"
HISTORY_OVERSIZE = "SS704"
HISTORY_RECORD = "SS705"


class Problem(typing.NamedTuple):
    """A problem with a stable code: what the model's rules, the formats, the
    folder reader, `check` and the daemon all report (a NamedTuple: every
    command imports this module, and dataclasses cost more to import)."""

    code: str
    message: str
    moment: str | None = None
    path: str | None = None  # the file it is about, when there is one

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{where}{self.message} ({self.code})"


class Code(typing.NamedTuple):
    code: str
    severity: str


CODES: dict[str, Code] = {c.code: c for c in [
    Code(UNREADABLE, ERROR),  # file cannot be read
    # file snapstore cannot parse (not well-formed: libvirt skips it; or a DOCTYPE, entities, too deep)
    Code(UNPARSABLE, ERROR),
    Code(WRONG_ROOT, ERROR),  # file has the wrong root element (libvirt skips it)
    Code(OVER_LIBVIRT_LIMIT, ERROR),  # file is over libvirt's 1 MiB limit (libvirt skips it)
    Code(OVER_RPC_LIMIT, ERROR),  # file is over 4 MiB and cannot cross libvirt's RPC
    Code(FILE_NAME_MISMATCH, WARNING),  # file name differs from the <name> it holds
    Code(UNSTORABLE_NAME, ERROR),  # name cannot be a libvirt metadata file name
    Code(SCHEMA_INVALID, WARNING),  # does not validate against libvirt's RNG schema
    Code(BAD_INTERNAL_ELEMENT, ERROR),  # missing or invalid <name>/<active> (libvirt skips it)
    Code(EMPTY_NAME, ERROR),  # moment without a name
    Code(DUPLICATE, ERROR),  # name defined more than once
    Code(MISSING_PARENT, ERROR),  # parent does not exist
    Code(CYCLE, ERROR),  # parent cycle
    Code(CURRENT_MISSING, ERROR),  # current names a moment that does not exist
    Code(UUID_MISMATCH, ERROR),  # embedded domain uuids differ
    Code(SEVERAL_CURRENT, ERROR),  # more than one snapshot marked current
    Code(NO_CURRENT, WARNING),  # snapshots exist but none is marked current
    Code(UUID_VS_DEFINITION, ERROR),  # embedded uuid differs from the domain's definition
    Code(NAME_PATTERN, ERROR),  # name outside the pattern libvirt's schema allows for this kind
    Code(STORE_MISSING, WARNING),  # libvirt folder has no consolidated file
    Code(FOLDER_MISSING, ERROR),  # consolidated file holds moments libvirt's folder lacks entirely
    Code(ONLY_IN_FOLDER, ERROR),  # moment in libvirt's folder, not in the store
    Code(ONLY_IN_STORE, ERROR),  # moment in the store, not in libvirt's folder
    Code(CONTENT_DIFFERS, ERROR),  # store and folder hold different content (C14N)
    Code(CURRENT_DIFFERS, ERROR),  # store and folder name different current moments
    Code(LIBVIRT_TEMP, WARNING),  # libvirt temp (*.new) left in a domain folder
    Code(SNAPSTORE_TEMP, WARNING),  # temp left by a dead snapstore process
    Code(SYMLINK, ERROR),  # symlink (never followed)
    Code(NOT_REGULAR, ERROR),  # not a regular file
    Code(MODE_TOO_WIDE, WARNING),  # permissions wider than 0600 (files hold secrets)
    Code(FOREIGN_FILE, WARNING),  # foreign file in a domain folder (libvirtd parses it at start)
    Code(IMAGE_LACKS_SNAPSHOT, ERROR),  # internal snapshot missing from its disk image
    Code(IMAGE_ORPHAN_SNAPSHOT, WARNING),  # disk image holds a snapshot without metadata
    Code(IMAGE_UNREADABLE, WARNING),  # disk image cannot be inspected
    Code(IMAGE_LACKS_BITMAP, ERROR),  # a checkpoint's disk image lacks its bitmap (the backup chain is broken)
    Code(IMAGE_ORPHAN_BITMAP, WARNING),  # disk image holds a persistent bitmap no checkpoint names
    # bitmap in-use while libvirt's status file names a qemu that is gone (qemu died without closing the image)
    Code(BITMAP_QEMU_DIED, ERROR),
    # bitmap in-use in the image of a shut-off domain: qemu takes it as inconsistent and refuses it
    Code(BITMAP_INCONSISTENT, ERROR),
    Code(FLEET_DIVERGED, ERROR),  # one domain uuid holds different metadata on two hosts
    Code(FLEET_DUPLICATE, WARNING),  # one domain uuid holds the same metadata on two hosts (a copy left behind)
    Code(FLEET_STALE_HOST, WARNING),  # a host has not replicated for longer than fleet.stale_after
    Code(FLEET_NOT_REPLICATED, ERROR),  # a local domain's newest generation is neither in the fleet nor queued
    Code(FLEET_QUEUED, WARNING),  # a local domain's newest generation is queued in the outbox, not yet in the fleet
    Code(HISTORY_DAMAGED, WARNING),  # a generation's file does not match its record, or cannot be parsed
    Code(HISTORY_GAP, WARNING),  # a number missing between the oldest and newest generation
    Code(HISTORY_MODE, WARNING),  # a history file wider than 0600
    Code(HISTORY_OVERSIZE, WARNING),  # a generation over max_store_bytes (undo could not read it)
    Code(HISTORY_RECORD, WARNING),  # a generation without a readable record
]}
