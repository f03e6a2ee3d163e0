"""The fleet against a real PostgreSQL (Debian's postgresql-15, started by
the suite): daemons of two "hosts" replicating into one database, the
database stopped and started under a running daemon, a daemon killed
between ship and acknowledgement, `fleet check`, and the errors an operator
meets first."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import samples
from daemonproc import Daemon, wait_for
from lab import Lab
from support import cli
from support.postgres import Fleet, Postgres


@dataclasses.dataclass
class Host:
    """A host's folders and settings: libvirt's roots, the state folder, a
    TOML file whose [fleet] DSN names a passfile (no password in it)."""

    name: str
    base: Path
    fleet: Fleet
    enabled: bool = True
    lab: Lab | None = None  # a real libvirt (embedded root) whose folders the host's are

    def __post_init__(self) -> None:
        self.libvirt = self.lab.snapshot_dir if self.lab else self.base / "snapshot"
        self.checkpoints = self.lab.checkpoint_dir if self.lab else self.base / "checkpoint"
        self.state = self.base / "state"
        for folder in (self.base, self.libvirt, self.checkpoints):
            folder.mkdir(parents=True, exist_ok=True)
        self.passfile = self.base / "pgpass"
        server = self.fleet.server
        self.passfile.write_text(f"127.0.0.1:{server.port}:{self.fleet.dbname}:{self.name}:pw-{self.name}\n")
        self.passfile.chmod(0o600)
        self.config = self.base / "snapstore.toml"
        self.write_config()

    @property
    def dsn(self) -> str:
        return (f"host=127.0.0.1 port={self.fleet.server.port} dbname={self.fleet.dbname} user={self.name} "
                f"passfile={self.passfile} connect_timeout=3")

    def write_config(self, top: str = "", **fleet: Any) -> None:
        settings = {"enabled": self.enabled, "dsn": self.dsn, "host_id": self.name, **fleet}
        lines = ["quiet_period = 0.05", "settle_timeout = 1.0", top, "[fleet]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
        self.config.write_text("\n".join(lines) + "\n")

    def argv(self, *args: str) -> list[str]:
        return ["--config", str(self.config), "--libvirt-dir", str(self.libvirt), "--checkpoint-dir",
                str(self.checkpoints), "--state-dir", str(self.state), *args]

    def run(self, *args: str) -> cli.Result:
        return cli.console(self.argv(*args))

    def daemon(self) -> Daemon:
        return Daemon(self.libvirt, self.checkpoints, self.state, self.config, self.base / "daemon.err")

    def replicate(self) -> None:
        """A daemon run until its outbox is shipped."""
        daemon = self.daemon()
        try:
            daemon.wait_ready()
            shipped(daemon)
        finally:
            daemon.close()

    def folder(self, domain: str, names: list[str], current: str | None = None, uuid: str = samples.UUID) -> None:
        """libvirt's folder of ``domain``: a chain of ``names``."""
        folder = self.libvirt / domain
        folder.mkdir(exist_ok=True)
        for old in folder.iterdir():
            if old.stem not in names:
                old.unlink()
        for index, name in enumerate(names):
            data = samples.snapshot_xml(name, names[index - 1] if index else None, name == (current or names[-1]),
                                        1700000000 + index, uuid=uuid)
            path = folder / f"{name}.xml"
            if not path.exists() or path.read_bytes() != data:
                temp = folder / f"{name}.xml.new"
                temp.write_bytes(data)
                temp.chmod(0o600)
                temp.rename(path)


def make_host(tmp_path: Path, fleet_db: Fleet, name: str, enabled: bool = True) -> Host:
    return Host(name, tmp_path / name, fleet_db, enabled)


def generations(fleet_db: Fleet, host: str, domain: str) -> list[tuple[int, int, str | None]]:
    return [(int(g), int(m), c) for g, m, c in fleet_db.query(
        "SELECT generation, moments, current FROM snapstore.generations WHERE host_id = %s AND domain = %s "
        "ORDER BY generation", host, domain)]


def fleet_list(host: Host, *args: str) -> list[dict[str, Any]]:
    result = host.run("fleet", "list", "--json", *args)
    assert result.code == 0, result
    return list(result.data["domains"])


def shipped(daemon: Daemon, timeout: float = 20.0) -> str:
    return daemon.wait_status(lambda status: "fleet: up to date" in status, timeout, "fleet: up to date")


# --- two hosts, one database --------------------------------------------------------------------------


def test_two_daemons_replicate_into_one_database(tmp_path: Path, fleet_db: Fleet) -> None:
    a, b = make_host(tmp_path, fleet_db, "host-a"), make_host(tmp_path, fleet_db, "host-b")
    a.folder("vm-a", ["s1", "s2"])
    b.folder("vm-b", ["t1"])
    daemons = [a.daemon(), b.daemon()]
    try:
        for daemon in daemons:
            daemon.wait_ready()
            shipped(daemon)
        a.folder("vm-a", ["s1", "s2", "s3"])  # a change while running: a new generation
        daemons[0].wait_status(lambda s: "3 snapshots" in s, 10, "three snapshots")
        wait_for(lambda: len(generations(fleet_db, "host-a", "vm-a")) == 2, 20,
                 lambda: f"{generations(fleet_db, 'host-a', 'vm-a')}; {daemons[0].describe()}")
    finally:
        for daemon in daemons:
            daemon.close()
    assert generations(fleet_db, "host-a", "vm-a") == [(1, 2, "s2"), (2, 3, "s3")]
    assert generations(fleet_db, "host-b", "vm-b") == [(1, 1, "t1")]
    listed = {(row["host"], row["domain"]): row for row in fleet_list(a)}
    assert set(listed) == {("host-a", "vm-a"), ("host-b", "vm-b")}
    assert (listed[("host-a", "vm-a")]["generation"], listed[("host-a", "vm-a")]["moments"],
            listed[("host-a", "vm-a")]["current"]) == (2, 3, "s3")
    assert [row["domain"] for row in fleet_list(b, "--host", "host-b")] == ["vm-b"]
    # The replicated generation is the local history's: generation 1 is kept, byte for byte.
    content = fleet_db.query("SELECT c.compressed FROM snapstore.generations g JOIN snapstore.contents c "
                             "USING (sha256) WHERE host_id = 'host-a' AND domain = 'vm-a' AND generation = 1")
    import zlib

    assert zlib.decompress(bytes(content[0][0])) == (a.state / "history/snapshots/vm-a/1.xml").read_bytes()
    assert not [p for p in (a.state / "outbox").iterdir() if p.name != "shipped"], "the outbox drained"


def test_commands_queue_what_they_commit_and_the_daemon_ships_it(tmp_path: Path, fleet_db: Fleet) -> None:
    host = make_host(tmp_path, fleet_db, "host-a")
    host.folder("vm1", ["s1", "s2"])
    assert host.run("consolidate", "vm1").code == 0
    entries = sorted(p.name for p in (host.state / "outbox").iterdir())
    assert entries == ["snapshots.vm1.1.json", "snapshots.vm1.1.xml"]
    for entry in entries:
        assert (host.state / "outbox" / entry).stat().st_mode & 0o777 == 0o600
    assert (host.state / "outbox/snapshots.vm1.1.xml").stat().st_ino == (host.state / "snapshots/vm1.xml").stat().st_ino
    check = host.run("fleet", "check", "--json")
    assert check.code == 1 and check.codes == {"SS605"}, check  # queued, not yet shipped
    host.replicate()
    assert generations(fleet_db, "host-a", "vm1") == [(1, 2, "s2")]
    check = host.run("fleet", "check")
    assert check.code == 0 and "0 errors, 0 warnings" in check.out, check


def test_daemon_queues_at_start_what_was_committed_with_the_fleet_off(tmp_path: Path, fleet_db: Fleet) -> None:
    """Enabling the fleet on a host with history: the live generations are
    queued at the daemon's start (seed), numbered as the history numbers them."""
    host = make_host(tmp_path, fleet_db, "host-a", enabled=False)
    host.folder("vm1", ["s1"])
    assert host.run("consolidate", "vm1").code == 0
    host.folder("vm1", ["s1", "s2"])
    assert host.run("consolidate", "vm1").code == 0  # generation 1 kept, the live file is generation 2
    assert not (host.state / "outbox").exists()
    host.enabled = True
    host.write_config()
    host.replicate()
    assert generations(fleet_db, "host-a", "vm1") == [(2, 2, "s2")]
    assert (host.state / "outbox/shipped/snapshots.vm1").read_text().split()[0] == "2"
    daemon = host.daemon()  # a second start queues nothing again
    try:
        status = daemon.wait_ready().fields.get("STATUS", "")
        shipped(daemon)
    finally:
        daemon.close()
    assert "fleet: shipped" not in daemon.stderr().split("ready:")[-1], daemon.stderr()
    assert "fleet" in status, status


def test_an_outbox_that_cannot_be_written_is_a_warning_and_the_commit_stands(tmp_path: Path,
                                                                            fleet_db: Fleet) -> None:
    host = make_host(tmp_path, fleet_db, "host-a")
    host.folder("vm1", ["s1"])
    host.state.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (host.state / "outbox").symlink_to(tmp_path / "elsewhere")  # never followed
    result = host.run("consolidate", "vm1")
    assert result.code == 0 and (host.state / "snapshots/vm1.xml").exists(), result
    assert len(result.lines) == 1 and result.warnings, result
    assert "fleet: generation of its snapshots" in result.err and "symlink" in result.err, result
    assert list((tmp_path / "elsewhere").iterdir()) == []


# --- the database away --------------------------------------------------------------------------------


def test_database_stopped_and_started_loses_nothing(tmp_path: Path) -> None:
    server = Postgres()  # its own server: this test stops it
    try:
        fleet = _fleet(server)
        host = make_host(tmp_path, fleet, "host-a")
        prom = tmp_path / "snapstore.prom"
        host.write_config(top=f"metrics_file = {json.dumps(str(prom))}")
        host.folder("vm1", ["s1"])
        daemon = host.daemon()
        try:
            daemon.wait_ready()
            shipped(daemon)
            wait_for(lambda: "snapstore_fleet_shipped_total 1" in prom.read_text(), 10, "metrics: 1 shipped")
            server.stop()
            names = ["s1"]
            for step in range(2, 7):  # five commits while the database is down
                names.append(f"s{step}")
                host.folder("vm1", names)
                expected = f"{len(names)} snapshots"
                daemon.wait_status(lambda s, e=expected: e in s, 10, expected)
            status = daemon.wait_status(lambda s: "fleet: unreachable since" in s, 30, "unreachable")
            assert "queued" in status, status
            assert len(list((host.state / "history/snapshots/vm1").glob("*.xml"))) == 5, "each commit went on"
            wait_for(lambda: "snapstore_fleet_reachable 0" in prom.read_text()
                     and "snapstore_fleet_queued 5" in prom.read_text(), 10, lambda: prom.read_text())
            server.start()
            shipped(daemon, timeout=90)  # the backoff is at most a minute
            wait_for(lambda: "snapstore_fleet_reachable 1" in prom.read_text()
                     and "snapstore_fleet_queued 0" in prom.read_text(), 10, lambda: prom.read_text())
        finally:
            daemon.close()
        assert generations(fleet, "host-a", "vm1") == [(n, n, f"s{n}") for n in range(1, 7)], "no gap"
        said = daemon.stderr()
        # Once per reason (the connection cut, then each refused connect), not at every retry.
        assert 1 <= said.count("fleet: database unreachable, generations stay queued") <= 2, said
        assert "reachable again" in said
        assert "pw-host-a" not in daemon.stderr()
    finally:
        server.close()


def _fleet(server: Postgres) -> Fleet:
    from snapstore.fleet import database

    made = Fleet(server)
    database.init(made.admin_dsn)
    made.add_host("host-a")
    return made


def test_kill_between_ship_and_acknowledgement_sends_again_without_duplicate(tmp_path: Path,
                                                                            fleet_db: Fleet) -> None:
    """SIGKILL (strace injects it) as the shipper removes the entry it has just
    shipped: the database holds the generation, the outbox still does too.
    strace -P on the outbox folder matches the *at calls made through its
    descriptor; the first unlinkat there is the acknowledgement's."""
    host = make_host(tmp_path, fleet_db, "host-a")
    host.folder("vm1", ["s1", "s2"])
    assert host.run("consolidate", "vm1").code == 0
    entry = host.state / "outbox/snapshots.vm1.1.json"
    argv = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(entry.parent), "-e", "trace=unlink,unlinkat",
            "-e", "inject=unlink,unlinkat:signal=KILL", str(cli.SCRIPT), "daemon", *host.argv()]
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          start_new_session=True) as killed:
        try:
            killed.wait(60)
        finally:  # never an orphaned daemon: the whole session goes
            with contextlib.suppress(ProcessLookupError):
                os.killpg(killed.pid, signal.SIGKILL)
    assert killed.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), killed
    assert entry.exists(), "killed before the acknowledgement"
    assert generations(fleet_db, "host-a", "vm1") == [(1, 2, "s2")], "shipped before the kill"
    host.replicate()
    assert not entry.exists()
    rows = fleet_db.query("SELECT count(*) FROM snapstore.generations")
    assert rows == [(1,)], "sent again, not duplicated"
    assert fleet_db.query("SELECT count(*) FROM snapstore.contents") == [(1,)]


# --- fleet check -----------------------------------------------------------------------------------------


def test_fleet_check_finds_one_uuid_on_two_hosts(tmp_path: Path, fleet_db: Fleet) -> None:
    a, b = make_host(tmp_path, fleet_db, "host-a"), make_host(tmp_path, fleet_db, "host-b")
    a.folder("vm1", ["s1", "s2", "s3"])
    b.folder("vm1", ["s1", "s2", "x3"])  # the same domain, moved by hand, diverged since
    c = make_host(tmp_path, fleet_db, "host-c")  # no role of its own: a copy that never replicated
    c.enabled = False
    c.write_config()
    c.folder("vm9", ["z1"])
    assert c.run("consolidate", "vm9").code == 0
    for host in (a, b):
        host.replicate()
    result = b.run("fleet", "check", "--json")
    assert result.code == 3, result
    diverged = [f for f in result.data["findings"] if f["code"] == "SS601"]
    assert len(diverged) == 1, result
    message = diverged[0]["message"]
    assert "only on host-a: s3" in message and "only on host-b: x3" in message and samples.UUID in message, message
    # Stale: any host not seen for a second, after a second.
    time.sleep(1.1)
    result = a.run("fleet", "check", "--json", "--stale-after", "1")
    assert {"SS601", "SS603"} <= result.codes, result
    # The same content on two hosts is a copy left behind: a warning.
    b.folder("vm1", ["s1", "s2", "s3"])
    b.replicate()
    result = a.run("fleet", "check", "--json")
    assert result.code == 1 and result.codes == {"SS602"}, result
    # A local domain that was never queued (committed with the fleet off).
    c.fleet.add_host("host-c")
    result = c.run("fleet", "check", "--json", "--dsn", fleet_db.host_dsn("host-c"))
    assert "SS604" in result.codes and result.code == 3, result
    text = c.run("fleet", "check", "--dsn", fleet_db.host_dsn("host-c"))
    assert "error   SS604 generation 1 is not in the fleet and not queued" in text.out, text


# --- a lost host ------------------------------------------------------------------------------------------


@pytest.fixture
def short_labs() -> Iterator[Callable[[], Lab]]:
    """Labs in short roots: a running domain's monitor socket lives under
    the root, and its path must fit 108 bytes."""
    made: list[Lab] = []

    def make() -> Lab:
        made.append(Lab(Path(tempfile.mkdtemp(prefix="ssfl-"))))
        return made[-1]

    yield make
    for lab in made:
        lab.stop_all()
        shutil.rmtree(lab.root, ignore_errors=True)


def test_pull_of_a_lost_hosts_domain_then_restore_into_real_libvirt(tmp_path: Path, fleet_db: Fleet,
                                                                    short_labs: Callable[[], Lab]) -> None:
    """host-a replicates vm1's snapshots (a branching tree) and checkpoints,
    then is lost; host-b, with vm1 defined and nothing else, pulls them from
    the fleet and restores them into its libvirt: libvirt's API view matches."""
    old_lab, new_lab = short_labs(), short_labs()
    snap = lambda name: {"op": "snapshot", "domain": "vm1", "name": name}  # noqa: E731
    checkpoint = lambda name: {"op": "checkpoint", "domain": "vm1", "name": name}  # noqa: E731
    *_, before, checkpoints = old_lab.run([
        {"op": "define", "domain": "vm1"}, snap("s1"), snap("s2"), {"op": "revert", "domain": "vm1", "name": "s1"},
        snap("b1"), {"op": "start", "domain": "vm1"}, checkpoint("c1"), checkpoint("c2"),
        {"op": "destroy", "domain": "vm1"}, {"op": "view", "domain": "vm1"},
        {"op": "checkpoint_view", "domain": "vm1"}])
    old = Host("host-a", tmp_path / "host-a", fleet_db, lab=old_lab)
    assert old.run("consolidate", "vm1").code == 0
    assert old.run("consolidate", "vm1", "--checkpoints").code == 0
    old.replicate()
    definition = old_lab.domain_xml("vm1")
    shutil.rmtree(old.state)  # the host is gone, its disks with it

    new = Host("host-b", tmp_path / "host-b", fleet_db, lab=new_lab)
    new_lab.define_xml(definition)  # the domain was recreated on its new host, without snapshots
    dry = new.run("fleet", "pull", "vm1", "--dry-run", "--json")
    assert dry.code == 0 and dry.data["added"] == ["b1", "s1", "s2"] and not (new.state / "snapshots").exists(), dry
    pulled = new.run("fleet", "pull", "vm1")
    assert pulled.code == 0, pulled
    assert "pulled generation 1 from host-a into the store" in pulled.out, pulled
    assert "snapstore restore vm1 --connect qemu:///system" in pulled.out, pulled
    restored = new.run("restore", "vm1", "--connect", new_lab.uri)
    assert restored.code == 0, restored
    after = new_lab.view("vm1")
    assert (sorted(after.names), after.parents, after.current) == (
        sorted(before["names"]), before["parents"], before["current"])
    assert [g.split()[0] for g in new.run("history", "vm1").out.splitlines()] == ["live"], \
        "nothing was replaced locally: no generation"
    assert new.run("fleet", "pull", "vm1", "--checkpoints").code == 0
    restored = new.run("restore", "vm1", "--checkpoints", "--connect", new_lab.uri)
    assert restored.code == 0, restored
    after_checkpoints = new_lab.checkpoint_view("vm1")
    assert (sorted(after_checkpoints.names), after_checkpoints.parents) == (
        sorted(checkpoints["names"]), checkpoints["parents"]) and checkpoints["parents"] == {"c1": None, "c2": "c1"}
    again = new.run("fleet", "pull", "vm1", "--from-host", "host-a", "--generation", "7")
    cli.assert_clean_failure(again, 2, [("vm1", "host host-a has no generation 7")])


# --- what an operator meets first -------------------------------------------------------------------------


def test_bad_dsn_wrong_password_and_newer_schema_are_one_line(tmp_path: Path, fleet_db: Fleet) -> None:
    host = make_host(tmp_path, fleet_db, "host-a")
    bad = host.run("fleet", "list", "--dsn", "host=127.0.0.1 nonsense=1 password=hunter2")
    cli.assert_clean_failure(bad, 2, [("fleet database", "DSN", "cannot be read")])
    assert "hunter2" not in bad.err
    wrong = host.run("fleet", "list", "--dsn", fleet_db.host_dsn("host-a", password="hunter2"))
    cli.assert_clean_failure(wrong, 2, [("host-a@127.0.0.1", "password authentication failed")])
    assert "hunter2" not in wrong.err
    empty = host.run("fleet", "list", "--dsn", fleet_db.server.dsn("postgres"))
    cli.assert_clean_failure(empty, 2, [("holds no snapstore schema", "fleet init")])
    fleet_db.query("UPDATE snapstore.meta SET value = '99' WHERE key = 'schema_version' RETURNING key")
    newer = host.run("fleet", "list")
    cli.assert_clean_failure(newer, 2, [("schema version 99 is newer", "upgrade snapstore")])
    init = host.run("fleet", "init", "--dsn", fleet_db.admin_dsn)
    cli.assert_clean_failure(init, 2, [("schema version 99 is newer",)])
    no_dsn = make_host(tmp_path, fleet_db, "host-b")
    no_dsn.config.write_text("")
    cli.assert_clean_failure(no_dsn.run("fleet", "list"), 2, [("no DSN", "[fleet]")])


def test_init_is_safe_twice_and_from_two_hosts_at_once(postgres: Postgres) -> None:
    dbname = postgres.new_database()
    dsn = postgres.dsn(dbname)
    runs = [subprocess.Popen([str(cli.SCRIPT), "--config", "/dev/null", "fleet", "init", "--dsn", dsn, "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(run.wait(60), json.loads(run.stdout.read() if run.stdout else "")) for run in runs]
    assert sorted(str(data["schema_version_before"]) for _, data in outcomes) == ["1", "None"], outcomes
    assert all(code == 0 for code, _ in outcomes)
    again = cli.console(["--config", "/dev/null", "fleet", "init", "--dsn", dsn])
    assert again.code == 0 and "already current" in again.out, again


def test_a_host_role_writes_only_its_own_rows(fleet_db: Fleet) -> None:
    import psycopg

    with psycopg.connect(fleet_db.host_dsn("host-a"), autocommit=True) as conn:
        conn.execute("INSERT INTO snapstore.hosts (host_id) VALUES ('host-a')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute("INSERT INTO snapstore.hosts (host_id) VALUES ('host-b')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM snapstore.hosts")
    with psycopg.connect(fleet_db.host_dsn("host-b"), autocommit=True) as conn:
        conn.execute("INSERT INTO snapstore.hosts (host_id) VALUES ('host-b')")
        touched = conn.execute("UPDATE snapstore.hosts SET version = 'x' WHERE host_id = 'host-a'").rowcount
        assert touched == 0, "another host's row is not its to update"
        assert len(conn.execute("SELECT * FROM snapstore.hosts").fetchall()) == 2, "but every host reads the fleet"


def test_an_entry_that_cannot_be_shipped_is_dropped_and_said_and_the_rest_ships(tmp_path: Path,
                                                                             fleet_db: Fleet) -> None:
    """A record that does not parse, and a file that is not the one its record
    describes (SHA-256), never reach the database nor block the outbox."""
    host = make_host(tmp_path, fleet_db, "host-a")
    for domain in ("vm1", "vm2", "vm3"):
        host.folder(domain, ["s1"])
        assert host.run("consolidate", domain).code == 0
    outbox = host.state / "outbox"
    (outbox / "snapshots.vm1.1.json").write_text("{not json")
    swapped = outbox / "snapshots.vm2.1.xml"
    swapped.unlink()
    swapped.write_bytes((host.state / "snapshots/vm3.xml").read_bytes())  # another file under vm2's record
    daemon = host.daemon()
    try:
        daemon.wait_ready()
        wait_for(lambda: generations(fleet_db, "host-a", "vm3"), 20, daemon.describe)
        wait_for(lambda: not list(outbox.glob("*.json")), 20, daemon.describe)
    finally:
        daemon.close()
    said = daemon.stderr()
    assert "snapshots.vm1.1.json: cannot be shipped, dropped" in said, said
    assert "SHA-256 differs" in said, said
    assert fleet_db.query("SELECT domain FROM snapstore.generations") == [("vm3",)], "nothing bad reached it"
    host.replicate()  # the next start queues the live generations that were dropped
    assert fleet_db.query("SELECT domain, generation FROM snapstore.generations ORDER BY domain") == [
        ("vm1", 1), ("vm2", 1), ("vm3", 1)]


def test_outbox_is_bounded_and_never_drops_a_domains_newest(tmp_path: Path, fleet_db: Fleet) -> None:
    host = make_host(tmp_path, fleet_db, "host-a")
    host.write_config(outbox_max=3)
    host.folder("vm1", ["s1"])
    host.folder("vm2", ["t1"])
    for args in (("vm1",), ("vm2",)):
        assert host.run("consolidate", *args).code == 0
    names = ["s1"]
    warnings = []
    for step in range(2, 5):
        names.append(f"s{step}")
        host.folder("vm1", names)
        result = host.run("consolidate", "vm1")
        assert result.code == 0, result
        warnings += result.warnings
    queued = sorted(p.name for p in (host.state / "outbox").glob("*.json"))
    assert queued == ["snapshots.vm1.3.json", "snapshots.vm1.4.json", "snapshots.vm2.1.json"], queued
    assert any("dropped generation 1 of vm1's snapshots" in w for w in warnings), warnings
    assert not any("vm2" in w for w in warnings), warnings
    host.write_config(outbox_max=1)
    host.folder("vm2", ["t1", "t2"])
    result = host.run("consolidate", "vm2")
    assert any("each the newest of its domain: none dropped" in w for w in result.warnings), result
    assert sorted(p.name for p in (host.state / "outbox").glob("*.json")) == [
        "snapshots.vm1.4.json", "snapshots.vm2.2.json"]
