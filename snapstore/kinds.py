"""The two kinds of moment libvirt keeps per domain: snapshots and checkpoints.

libvirt calls both "moments" (virDomainMomentObj) and stores them the same
way; only these few facts differ, so everything else is shared code.
"""
from __future__ import annotations

import re
import typing


class Kind(typing.NamedTuple):
    name: str            # "snapshot": used in messages
    plural: str          # store subfolder and consolidated root tag
    root_tag: str        # root element of one legacy file
    edit_command: str    # named in libvirt's header comment
    stores_current: bool  # snapshots carry <active>; checkpoints compute it
    name_pattern: re.Pattern[str] | None = None  # what libvirt's schema allows, if it says


SNAPSHOT = Kind("snapshot", "snapshots", "domainsnapshot", "snapshot-edit", True)
# domaincheckpoint.rng's checkpointName: "no leading '.' and no embedded '/' or newline".
CHECKPOINT = Kind("checkpoint", "checkpoints", "domaincheckpoint", "checkpoint-edit", False,
                  re.compile(r"[a-zA-Z0-9_\-][a-zA-Z0-9_\-.]*"))

ALL = (SNAPSHOT, CHECKPOINT)


def by_name(name: str) -> Kind:
    """"snapshot" or "checkpoint" (ValueError otherwise)."""
    for kind in ALL:
        if kind.name == name:
            return kind
    raise ValueError(f"unknown kind {name!r}")
