"""The two kinds of moment libvirt keeps per domain: snapshots and checkpoints.

libvirt calls both "moments" (virDomainMomentObj) and stores them the same
way; only these few facts differ, so everything else is shared code.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Kind:
    name: str            # "snapshot": used in messages
    plural: str          # store subfolder and consolidated root tag
    root_tag: str        # root element of one legacy file
    edit_command: str    # named in libvirt's header comment
    stores_current: bool  # snapshots carry <active>; checkpoints compute it


SNAPSHOT = Kind("snapshot", "snapshots", "domainsnapshot", "snapshot-edit", True)
CHECKPOINT = Kind("checkpoint", "checkpoints", "domaincheckpoint", "checkpoint-edit", False)

BY_PLURAL = {kind.plural: kind for kind in (SNAPSHOT, CHECKPOINT)}
ALL = (SNAPSHOT, CHECKPOINT)
