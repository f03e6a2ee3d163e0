"""What the fleet holds: the domain list, the fleet check, a generation to pull."""
from __future__ import annotations

import collections
import hashlib
import typing
import zlib
from datetime import datetime
from typing import Any

from snapstore import codes, errors, fsio, history, kinds, store
from snapstore.check import findings
from snapstore.fleet import outbox, ship

if typing.TYPE_CHECKING:
    import psycopg

class Row(typing.NamedTuple):
    host: str
    kind: str
    domain: str
    uuid: str | None
    generation: int
    moments: int
    current: str | None
    committed_at: datetime
    last_seen: datetime

    def as_json(self) -> dict[str, Any]:
        return {**self._asdict(), "committed_at": self.committed_at.isoformat(),
                "last_seen": self.last_seen.isoformat()}


def domains(conn: psycopg.Connection[Any], host: str | None = None, domain: str | None = None) -> list[Row]:
    """Every domain's newest generation on every host: one query on the domains table."""
    rows = conn.execute(
        "SELECT d.host_id, d.kind, d.domain, d.uuid::text, d.generation, d.moments, d.current, d.committed_at, "
        "h.last_seen FROM snapstore.domains d JOIN snapstore.hosts h USING (host_id) "
        "WHERE (%(host)s::text IS NULL OR d.host_id = %(host)s) "
        "AND (%(domain)s::text IS NULL OR d.domain = %(domain)s) "
        "ORDER BY d.domain, d.kind, d.host_id", {"host": host, "domain": domain}).fetchall()
    return [Row(*row) for row in rows]


# --- fleet check -----------------------------------------------------------------------------------


def check(conn: psycopg.Connection[Any], report: findings.Report, stale_after: float,
          local: tuple[store.Store, outbox.Outbox, str] | None) -> None:
    """SS601/SS602 (one uuid on several hosts), SS603 (stale hosts), and with
    ``local`` (this host's store, outbox and host id) SS604/SS605."""
    _shared_uuids(conn, report)
    _stale_hosts(conn, report, stale_after)
    if local is not None:
        _local(conn, report, *local)


def _shared_uuids(conn: psycopg.Connection[Any], report: findings.Report) -> None:
    rows = conn.execute(
        "SELECT d.uuid::text, d.kind, d.host_id, d.domain, d.generation, g.sha256, g.digests "
        "FROM snapstore.domains d JOIN snapstore.generations g USING (host_id, kind, domain, generation) "
        "WHERE d.moments > 0 AND (d.uuid, d.kind) IN (SELECT uuid, kind FROM snapstore.domains "
        "WHERE moments > 0 AND uuid IS NOT NULL GROUP BY uuid, kind HAVING count(DISTINCT host_id) > 1) "
        "ORDER BY d.uuid, d.kind, d.host_id").fetchall()
    groups: dict[tuple[str, str], list[Any]] = collections.defaultdict(list)
    for row in rows:
        groups[(row[0], row[1])].append(row)
    for (uuid, kind_name), held in groups.items():
        kind = kinds.by_name(kind_name)
        first = held[0]
        for other in held[1:]:
            _compare(report, uuid, kind, first, other)


def _compare(report: findings.Report, uuid: str, kind: kinds.Kind, first: Any, other: Any) -> None:
    _, _, host_a, domain_a, number_a, sha_a, digests_a = first
    _, _, host_b, domain_b, number_b, sha_b, digests_b = other
    where = f"uuid {uuid}: {host_a} (generation {number_a}) and {host_b} (generation {number_b})"
    if sha_a == sha_b:
        report.add(codes.FLEET_DUPLICATE, f"{where} hold the same {kind.plural}", domain_a, kind,
                   hint="a copy left behind by a move? Undefine the domain on the host that no longer runs it "
                        "(its daemon then moves the metadata to the attic)")
        return
    change = history.change(history.snapshot_of(digests_a, None), history.snapshot_of(digests_b, None))
    parts = [f"only on {host_a}: {_names(change.removed)}" if change.removed else "",
             f"only on {host_b}: {_names(change.added)}" if change.added else "",
             f"different on both: {_names(change.changed)}" if change.changed else ""]
    report.add(codes.FLEET_DIVERGED, f"{where} hold diverged {kind.plural}: " + "; ".join(p for p in parts if p),
               domain_a if domain_a == domain_b else f"{domain_a} / {domain_b}", kind,
               hint="decide which host owns the domain; 'snapstore fleet pull --from-host' brings that one's "
                    "metadata to the other")


def _names(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _stale_hosts(conn: psycopg.Connection[Any], report: findings.Report, stale_after: float) -> None:
    rows = conn.execute("SELECT host_id, last_seen, extract(epoch FROM now() - last_seen) FROM snapstore.hosts "
                        "WHERE last_seen < now() - make_interval(secs => %s) ORDER BY host_id",
                        (stale_after,)).fetchall()
    for host, last_seen, age in rows:
        report.add(codes.FLEET_STALE_HOST, f"host {host} last replicated {_age(float(age))} ago "
                                           f"({last_seen:%Y-%m-%d %H:%M:%S %Z}), over stale_after "
                                           f"({_age(stale_after)})",
                   hint="is its snapstore daemon running, with [fleet] enabled, and can it reach the database? "
                        "A host that is gone: 'snapstore fleet pull' its domains on their new host")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _local(conn: psycopg.Connection[Any], report: findings.Report, state: store.Store, box: outbox.Outbox,
           host: str) -> None:
    queued = {entry.name for entry in box.entries()}
    live = [committed for kind in kinds.ALL for domain in state.domains(kind)
            if (committed := _live(state, kind, domain)) is not None]
    there = ship.present(conn, host, live)
    for committed in live:
        report.domains.add(committed.domain)
        if there.get(ship.key(committed)) == committed.sha256:
            continue
        name = outbox.entry_name(committed.kind, committed.domain, committed.number)
        if name in queued:
            report.add(codes.FLEET_QUEUED, f"generation {committed.number} is queued in the outbox, not yet in "
                                           "the fleet", committed.domain, committed.kind,
                       hint="the daemon ships it; STATUS= says whether the database is reachable")
        else:
            report.add(codes.FLEET_NOT_REPLICATED, f"generation {committed.number} is not in the fleet and not "
                                                   "queued", committed.domain, committed.kind,
                       hint="restart the snapstore daemon with [fleet] enabled: it queues every live generation "
                            "at its start")


def _live(state: store.Store, kind: kinds.Kind, domain: str) -> history.Committed | None:
    """The live generation's number and SHA-256 (from the index when it has
    it: the file is read only when it does not)."""
    path = state.path(kind, domain)
    summary = state.summary(kind, domain)
    with fsio.opened_dir_if_present(path.parent) as fd:
        if fd is None or summary is None:
            return None
        number = state.history.live_number(fd, path.name, kind, domain)
        sha = summary.sha256 or hashlib.sha256(fsio.read_regular(fd, path.name, state.read_limit, path)).hexdigest()
    return history.Committed(kind, domain, number, 0.0, "", sha, 0, None, {}, None, [])


# --- fleet pull ------------------------------------------------------------------------------------


class Pulled(typing.NamedTuple):
    host: str
    generation: int
    data: bytes


def fetch(conn: psycopg.Connection[Any], kind: kinds.Kind, domain: str, host: str | None,
          generation: int | None, limit: int) -> Pulled:
    """Generation ``generation`` (default: the newest) of ``domain`` from ``host``
    (default: the one host holding it), its SHA-256 checked."""
    holders = [row[0] for row in conn.execute(
        "SELECT host_id FROM snapstore.domains WHERE kind = %s AND domain = %s ORDER BY host_id",
        (kind.name, domain)).fetchall()]
    if host is None:
        if not holders:
            raise errors.UnknownDomain(domain=domain, reason=f"no host of the fleet holds its {kind.plural}")
        if len(holders) > 1:
            raise errors.UsageError(reason=f"{domain}: {len(holders)} hosts hold its {kind.plural} "
                                           f"({', '.join(holders)}): pick one with --from-host")
        host = holders[0]
    row = conn.execute(
        "SELECT g.generation, g.sha256, c.size, c.compressed FROM snapstore.generations g "
        "JOIN snapstore.contents c USING (sha256) WHERE g.host_id = %s AND g.kind = %s AND g.domain = %s "
        "AND (%s::bigint IS NULL OR g.generation = %s) ORDER BY g.generation DESC LIMIT 1",
        (host, kind.name, domain, generation, generation)).fetchone()
    if row is None:
        what = f"generation {generation} of its {kind.plural}" if generation is not None else f"its {kind.plural}"
        raise errors.UnknownDomain(domain=domain, reason=f"host {host} has no {what} in the fleet "
                                                         f"(snapstore fleet list --domain shows what it has)")
    number, sha, size, compressed = row
    try:
        data = zlib.decompressobj().decompress(bytes(compressed), limit + 1)  # never more than a store file
    except zlib.error as e:
        raise errors.Refused(domain=domain, reason=f"generation {number} from {host} cannot be decompressed "
                                                   f"({e}); nothing written") from e
    if len(data) > limit:
        raise errors.Refused(domain=domain, reason=f"generation {number} from {host} is over the {limit}-byte "
                                                   "limit snapstore reads (max_store_bytes); nothing written")
    if hashlib.sha256(data).hexdigest() != sha:
        raise errors.Refused(domain=domain, reason=f"generation {number} from {host} does not match its SHA-256 "
                                                   "in the fleet; nothing written")
    return Pulled(host, int(number), data)

