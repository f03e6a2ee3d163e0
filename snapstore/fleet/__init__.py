"""The fleet: every host's generations replicated to PostgreSQL.

    outbox     the local, durable queue of generations to ship (no network)
    database   connections and the schema snapstore creates and migrates
    ship       one idempotent batch into the database
    view       what the fleet holds: list, check (SS6xx), pull

The daemon's threads that fill the outbox and ship it are in
snapstore.daemon.replication; psycopg is imported only where the network is.
"""
from __future__ import annotations

import re
from pathlib import Path

from snapstore import config, errors

MACHINE_ID = Path("/etc/machine-id")
_HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def host_id(settings: config.Config, machine_id: Path = MACHINE_ID) -> str:
    """This host's name in the fleet (and its database role): [fleet]
    host_id, else the machine id."""
    found = settings.fleet_host_id
    if not found:
        try:
            found = machine_id.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise errors.ConfigError(path=machine_id, reason=f"no host_id in [fleet], and the machine id cannot be "
                                                              f"read: {e}") from e
    if not _HOST_ID.fullmatch(found):
        raise errors.ConfigError(path="[fleet] host_id", reason=(
            f"{found!r} cannot be a host id: 1 to 63 letters, digits, '.', '_' or '-', not starting with "
            "'.', '_' or '-' (it is also the host's database role)"))
    return found
