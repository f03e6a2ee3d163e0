"""A real PostgreSQL server for the fleet tests: Debian's postgresql-15,
initdb'd in a temp folder as the unprivileged ``postgres`` user, listening
on 127.0.0.1 on a free port (scram-sha-256 passwords over TCP), stopped at
the end. ``fsync=off``: the tests stop and start the server, they do not
pull its power.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

BIN = Path("/usr/lib/postgresql/15/bin")
ADMIN = "fleet_admin"
ADMIN_PASSWORD = "admin-secret-42"
_databases = itertools.count(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="snapstore-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = free_port()
        self.user = pwd.getpwnam("postgres")
        os.chown(self.base, self.user.pw_uid, self.user.pw_gid)
        password_file = self.base / "pw"
        password_file.write_text(ADMIN_PASSWORD + "\n")
        os.chown(password_file, self.user.pw_uid, self.user.pw_gid)
        self._run(BIN / "initdb", "-D", str(self.data), "-U", ADMIN, "--pwfile", str(password_file),
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions")
        self.start()

    def _run(self, *argv: str | Path) -> None:
        subprocess.run([str(a) for a in argv], check=True, capture_output=True, cwd=self.base,
                       user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[], timeout=120)

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.base} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._run(BIN / "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run(BIN / "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def dsn(self, dbname: str = "postgres", user: str = ADMIN, password: str | None = ADMIN_PASSWORD) -> str:
        secret = f" password={password}" if password is not None else ""
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}{secret} connect_timeout=5"

    @contextlib.contextmanager
    def admin(self, dbname: str = "postgres") -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            yield conn

    def new_database(self) -> str:
        name = f"fleet_{os.getpid()}_{next(_databases)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return name

    def add_host_role(self, dbname: str, role: str, password: str) -> None:
        """A host's login role, a member of snapstore_host (after `fleet init`);
        roles belong to the server, not to one database: made once."""
        with self.admin(dbname) as conn:
            if not conn.execute("SELECT FROM pg_roles WHERE rolname = %s", (role,)).fetchall():
                conn.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")  # type: ignore[arg-type]
            conn.execute(f'GRANT snapstore_host TO "{role}"')  # type: ignore[arg-type]


class Fleet:
    """One database, `fleet init`ed, with a login role per host."""

    def __init__(self, server: Postgres) -> None:
        self.server = server
        self.dbname = server.new_database()
        self.admin_dsn = server.dsn(self.dbname)

    def host_dsn(self, host: str, password: str | None = None) -> str:
        return self.server.dsn(self.dbname, host, password if password is not None else f"pw-{host}")

    def add_host(self, host: str) -> None:
        self.server.add_host_role(self.dbname, host, f"pw-{host}")

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.server.admin(self.dbname) as conn:
            return conn.execute(sql, params or None).fetchall()  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = Postgres()
    yield server
    server.close()


@pytest.fixture
def fleet_db(postgres: Postgres) -> Fleet:
    from snapstore.fleet import database

    made = Fleet(postgres)
    database.init(made.admin_dsn)
    for host in ("host-a", "host-b"):
        made.add_host(host)
    return made
