"""Shipping queued generations to the fleet database, idempotently.

One transaction per batch: the host's row (last_seen), the contents
(deduplicated by SHA-256), the generations (keyed on host, kind, domain,
number) and each domain's newest. A batch sent twice (a crash between the
commit and the acknowledgement) changes nothing the second time: keys
already there are skipped, so there is no duplicate and no gap. A key
already there with other content (the local history was renumbered, e.g.
its folder emptied) is never overwritten: it is reported and dropped.
"""
from __future__ import annotations

import json
import typing
import zlib
from datetime import UTC, datetime
from typing import Any

from snapstore import __version__, history

if typing.TYPE_CHECKING:
    import psycopg

BATCH = 100  # generations per transaction


class Shipped(typing.NamedTuple):
    sent: list[history.Committed]      # new in the database
    present: list[history.Committed]   # already there, same content (a re-send)
    conflicting: list[history.Committed]  # already there with other content: not overwritten


def ship(conn: psycopg.Connection[Any], host_id: str, batch: list[tuple[history.Committed, bytes]]) -> Shipped:
    """Send ``batch`` in one transaction; what was new, already there, or in conflict."""
    with conn.transaction():
        touch_host(conn, host_id)
        there = present(conn, host_id, [committed for committed, _ in batch])
        new = [(committed, data) for committed, data in batch if key(committed) not in there]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO snapstore.contents (sha256, size, compressed) VALUES (%s, %s, %s) "
                            "ON CONFLICT (sha256) DO NOTHING",
                            [(c.sha256, len(data), zlib.compress(data, 6)) for c, data in new])
            cur.executemany(
                "INSERT INTO snapstore.generations (host_id, kind, domain, generation, uuid, sha256, moments, "
                "current, digests, committed_at, committed_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (host_id, kind, domain, generation) DO NOTHING",  # a second shipper (a reload)
                [(host_id, c.kind.name, c.domain, c.number, c.uuid, c.sha256, len(c.digests), c.current,
                  json.dumps(c.digests, ensure_ascii=False), _when(c.committed_at), c.committed_by)
                 for c, _ in new])
            cur.executemany(
                "INSERT INTO snapstore.domains (host_id, kind, domain, generation, uuid, moments, current, "
                "committed_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (host_id, kind, domain) DO UPDATE SET generation = excluded.generation, "
                "uuid = excluded.uuid, moments = excluded.moments, current = excluded.current, "
                "committed_at = excluded.committed_at WHERE domains.generation < excluded.generation",
                [(host_id, c.kind.name, c.domain, c.number, c.uuid, len(c.digests), c.current,
                  _when(c.committed_at)) for c, _ in new])
    old = [committed for committed, _ in batch if key(committed) in there]
    return Shipped([c for c, _ in new], [c for c in old if there[key(c)] == c.sha256],
                   [c for c in old if there[key(c)] != c.sha256])


def touch_host(conn: psycopg.Connection[Any], host_id: str) -> None:
    """The host's row, seen now: `fleet check` calls a host stale by it."""
    conn.execute("INSERT INTO snapstore.hosts (host_id, last_seen, version) VALUES (%s, now(), %s) "
                 "ON CONFLICT (host_id) DO UPDATE SET last_seen = now(), version = excluded.version",
                 (host_id, __version__))


def present(conn: psycopg.Connection[Any], host_id: str,
            batch: list[history.Committed]) -> dict[tuple[str, str, int], str]:
    """Which of ``batch`` the database holds for ``host_id``: key -> SHA-256."""
    rows = conn.execute(
        "SELECT kind, domain, generation, sha256 FROM snapstore.generations WHERE host_id = %s AND "
        "(kind, domain, generation) IN (SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[]))",
        (host_id, [c.kind.name for c in batch], [c.domain for c in batch], [c.number for c in batch])).fetchall()
    return {(kind, domain, int(number)): sha for kind, domain, number, sha in rows}


def key(committed: history.Committed) -> tuple[str, str, int]:
    return committed.kind.name, committed.domain, committed.number


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
