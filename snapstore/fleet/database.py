"""The fleet database: connections (psycopg 3) and the schema snapstore
creates and migrates itself (`snapstore fleet init`).

Security model (README "Fleet"): every host connects as its own login role,
named as its host_id and a member of ``snapstore_host``. Row-level security
lets a role insert and update only rows whose ``host_id`` is its own name;
every member reads the whole fleet (a new host pulls a lost host's
domains). Content is addressed by its SHA-256, which `fleet pull` checks
after decompressing, so a host cannot pass off other content as another
host's generation. No role but the schema's owner may delete.
"""
from __future__ import annotations

import typing
from typing import Any

from snapstore import errors

if typing.TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION = 1
GROUP_ROLE = "snapstore_host"
_ADVISORY_LOCK = 0x736E6170  # "snap": serialises `fleet init` from several hosts at once
# libpq settings snapstore adds unless the DSN sets them: a dead server must
# fail a call in bounded time (the shipper then backs off and retries).
# A statement waiting on a lock (a migration, an operator's LOCK TABLE) fails too.
_DEFAULTS = {"connect_timeout": "10", "tcp_user_timeout": "30000", "keepalives_idle": "30",
             "application_name": "snapstore", "options": "-c statement_timeout=60000 -c lock_timeout=30000"}

# Each version's statements, applied in one transaction under the advisory lock.
_MIGRATIONS: dict[int, list[str]] = {1: [
    "CREATE SCHEMA IF NOT EXISTS snapstore",
    "CREATE TABLE snapstore.meta (key text PRIMARY KEY, value text NOT NULL)",
    """CREATE TABLE snapstore.hosts (
        host_id text PRIMARY KEY,
        last_seen timestamptz NOT NULL DEFAULT now(),
        version text)""",
    """CREATE TABLE snapstore.contents (
        sha256 text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
        size bigint NOT NULL,
        compressed bytea NOT NULL)""",
    """CREATE TABLE snapstore.generations (
        host_id text NOT NULL REFERENCES snapstore.hosts,
        kind text NOT NULL CHECK (kind IN ('snapshot', 'checkpoint')),
        domain text NOT NULL,
        generation bigint NOT NULL CHECK (generation > 0),
        uuid uuid,
        sha256 text NOT NULL REFERENCES snapstore.contents,
        moments integer NOT NULL,
        current text,
        digests jsonb NOT NULL,
        committed_at timestamptz NOT NULL,
        committed_by text NOT NULL,
        shipped_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (host_id, kind, domain, generation))""",
    # Each domain's newest generation: `fleet list` reads this table alone.
    """CREATE TABLE snapstore.domains (
        host_id text NOT NULL,
        kind text NOT NULL,
        domain text NOT NULL,
        generation bigint NOT NULL,
        uuid uuid,
        moments integer NOT NULL,
        current text,
        committed_at timestamptz NOT NULL,
        PRIMARY KEY (host_id, kind, domain),
        FOREIGN KEY (host_id, kind, domain, generation) REFERENCES snapstore.generations)""",
    "CREATE INDEX domains_uuid ON snapstore.domains (uuid) WHERE uuid IS NOT NULL",
    f"""DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{GROUP_ROLE}') THEN
            CREATE ROLE {GROUP_ROLE} NOLOGIN;
        END IF;
    END $$""",
    f"GRANT USAGE ON SCHEMA snapstore TO {GROUP_ROLE}",
    f"GRANT SELECT ON ALL TABLES IN SCHEMA snapstore TO {GROUP_ROLE}",
    f"GRANT INSERT ON snapstore.contents, snapstore.generations TO {GROUP_ROLE}",
    f"GRANT INSERT, UPDATE ON snapstore.hosts, snapstore.domains TO {GROUP_ROLE}",
    *[statement for table in ("hosts", "generations", "domains") for statement in (
        f"ALTER TABLE snapstore.{table} ENABLE ROW LEVEL SECURITY",
        f"CREATE POLICY fleet_reads ON snapstore.{table} FOR SELECT USING (true)",
        f"CREATE POLICY own_inserts ON snapstore.{table} FOR INSERT WITH CHECK (host_id = current_user)",
        f"CREATE POLICY own_updates ON snapstore.{table} FOR UPDATE USING (host_id = current_user) "
        "WITH CHECK (host_id = current_user)")],
]}
assert max(_MIGRATIONS) == SCHEMA_VERSION


def connect(dsn: str) -> psycopg.Connection[Any]:
    """A connection to the fleet database, its schema checked; FleetError
    (one line, no password) when it cannot be had."""
    pg = _psycopg()
    conn = open_connection(dsn)
    where = describe(dsn)
    try:
        version = schema_version(conn)
        conn.commit()
    except pg.Error as e:
        conn.close()
        raise errors.FleetError(where=where, reason=f"cannot read the schema version: {reason(e)}") from None
    except BaseException:
        conn.close()
        raise
    if version is None:
        conn.close()
        raise errors.FleetError(where=where, reason="holds no snapstore schema: run 'snapstore fleet init' "
                                                    "as the database's owner")
    if version > SCHEMA_VERSION:
        conn.close()
        raise errors.FleetError(where=where, reason=(
            f"schema version {version} is newer than this snapstore knows ({SCHEMA_VERSION}): upgrade snapstore"))
    if version < SCHEMA_VERSION:
        conn.close()
        raise errors.FleetError(where=where, reason=(
            f"schema version {version} is older than this snapstore's ({SCHEMA_VERSION}): run 'snapstore fleet "
            "init' as the database's owner to migrate it"))
    return conn


def open_connection(dsn: str) -> psycopg.Connection[Any]:
    pg = _psycopg()
    params = _params(dsn)
    try:
        conn = pg.connect(**params)
    except pg.Error as e:
        raise errors.FleetError(where=describe(dsn), reason=f"cannot connect: {reason(e)}") from None
    return typing.cast("psycopg.Connection[Any]", conn)


def schema_version(conn: psycopg.Connection[Any]) -> int | None:
    """The schema version the database holds, None when it holds none."""
    found = conn.execute("SELECT to_regclass('snapstore.meta') IS NOT NULL").fetchone()
    if not found or not found[0]:
        return None
    row = conn.execute("SELECT value FROM snapstore.meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else None


def init(dsn: str) -> tuple[int | None, int]:
    """Create or migrate the schema; (version before, version now). Safe to
    run twice, and from several hosts at once (an advisory lock)."""
    psycopg = _psycopg()
    conn = open_connection(dsn)
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK,))
            before = schema_version(conn)
            if before is not None and before > SCHEMA_VERSION:
                raise errors.FleetError(where=describe(dsn), reason=(
                    f"schema version {before} is newer than this snapstore knows ({SCHEMA_VERSION}): "
                    "upgrade snapstore"))
            for version in range(before + 1 if before else 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)  # our own constant SQL
                conn.execute("INSERT INTO snapstore.meta VALUES ('schema_version', %s) "
                             "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(version),))
        return before, SCHEMA_VERSION
    except psycopg.Error as e:
        raise errors.FleetError(where=describe(dsn), reason=f"cannot create the schema: {reason(e)}") from None
    finally:
        conn.close()


def describe(dsn: str) -> str:
    """``user@host:port/dbname`` of a DSN, never its password."""
    try:
        params = _params(dsn)
    except errors.FleetError:
        return "(DSN not valid)"
    user = f"{params['user']}@" if params.get("user") else ""
    port = f":{params['port']}" if params.get("port") else ""
    return f"{user}{params.get('host') or params.get('hostaddr') or 'localhost'}{port}/{params.get('dbname', '')}"


def reason(error: Exception) -> str:
    """psycopg's message, first line, without a password it might quote."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.removeprefix("connection failed: ")


def _params(dsn: str) -> dict[str, str]:
    psycopg = _psycopg()
    if not dsn.strip():
        raise errors.FleetError(where="(no DSN)", reason="no DSN: set dsn in [fleet] of the settings, or pass --dsn")
    try:
        params: dict[str, str] = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as e:
        # libpq's message can quote the DSN, password and all: not shown.
        raise errors.FleetError(where="(DSN not valid)", reason=(
            f"the DSN cannot be read ({_without_dsn(str(e))}); expected 'host=… dbname=… user=…' or "
            "'postgresql://user@host/dbname'")) from None
    # A password with '/', '@' or ':' unescaped in a URI shifts into host,
    # port or database name, which messages show: refused, never shown.
    if _mangled(params):
        raise errors.FleetError(where="(DSN not valid)", reason=(
            "the DSN cannot be read (a password with '@', '/' or ':' must be percent-encoded in a URI, or "
            "kept in a passfile); expected 'host=… dbname=… user=…' or 'postgresql://user@host/dbname'"))
    return {**_DEFAULTS, **params}


def _mangled(params: dict[str, str]) -> bool:
    host = params.get("host", "")
    return (not all(part.isdigit() for part in params.get("port", "").split(",") if part)
            or "@" in host or ("/" in host and not host.startswith("/"))  # a socket folder starts with '/'
            or any(mark in params.get(key, "") for key in ("user", "dbname") for mark in "@/:"))


def _without_dsn(text: str) -> str:
    first = text.splitlines()[0] if text else "not valid"
    return first.split('"')[0].strip().rstrip(":") or "not valid"


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise errors.FleetError(where="(none)", reason="the fleet needs psycopg 3 (Debian: python3-psycopg)") \
            from None
    return psycopg
