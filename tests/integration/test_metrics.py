"""Prometheus metrics (issue 15, item 2): the daemon's textfile and `check --metrics`.

The daemon runs as the real console script on synthetic libvirt folders;
every file it writes is read with prometheus_client's own parser (the
format node_exporter's textfile collector reads), and its values are
checked against what the daemon did: the commits its log shows, the
moments per domain, each domain's state. `check --metrics` runs in-process
on a damaged folder and must count what its JSON report lists. The shipped
check service and timer pass systemd's own checks, hardened like the
daemon's unit.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import samples
from daemonproc import Daemon, wait_for
from prometheus_client import parser
from support.cli import in_process as run
from support.folders import Env

from snapstore import __version__, codes, metrics

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
INSTALLED_BINARY = "/usr/local/bin/snapstore"
COLLECTOR = "/var/lib/prometheus/node-exporter"
STATES = ("ok", "degraded", "failing", "guarded")
DAEMON_FAMILIES = {"snapstore_info": "gauge", "snapstore_moments": "gauge",
                   "snapstore_last_commit_timestamp_seconds": "gauge", "snapstore_commits": "counter",
                   "snapstore_commit_failures": "counter", "snapstore_domain_state": "gauge"}

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


# --- helpers ------------------------------------------------------------------------------------


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Samples by name and label set, and each family's type, as the official parser reads them."""
    found: Samples = {}
    types: dict[str, str] = {}
    for family in parser.text_string_to_metric_families(text):
        assert family.documentation, f"{family.name} has no HELP"
        types[family.name] = family.type
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found, types


def read_metrics(path: Path) -> Samples | None:
    try:
        return parse(path.read_text(encoding="utf-8"))[0]
    except FileNotFoundError:
        return None


def by_domain(found: Samples, name: str, kind: str = "snapshot") -> dict[str, float]:
    return {dict(labels)["domain"]: value for labels, value in found.get(name, {}).items()
            if dict(labels).get("kind", kind) == kind}


def states(found: Samples) -> dict[str, str]:
    """Each domain's one state; and exactly one of its four series is 1."""
    result: dict[str, str] = {}
    series: dict[str, dict[str, float]] = {}
    for labels, value in found["snapstore_domain_state"].items():
        series.setdefault(dict(labels)["domain"], {})[dict(labels)["state"]] = value
    for domain, values in series.items():
        assert sorted(values) == sorted(STATES) and sorted(values.values()) == [0, 0, 0, 1], (domain, values)
        result[domain] = next(state for state, value in values.items() if value == 1)
    return result


def committed_in_log(daemon: Daemon) -> int:
    return len(re.findall(r"(?m): committed \d+ ", daemon.stderr()))


def config(path: Path, metrics_file: Path, **settings: float | int) -> Path:
    lines = [f'metrics_file = "{metrics_file}"'] + [f"{key} = {value!r}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.close()


@pytest.fixture
def held_locks() -> Iterator[list[int]]:
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def start(daemons: list[Daemon], tmp_path: Path, config_path: Path) -> Daemon:
    daemon = Daemon(tmp_path / "lv", tmp_path / "ck", tmp_path / "state", config_path,
                    tmp_path / f"daemon{len(daemons)}.err")
    daemons.append(daemon)
    return daemon


def wait_metrics(path: Path, daemon: Daemon, test: Callable[[Samples], bool], what: str,
                 timeout: float = 10.0) -> Samples:
    def ready() -> Samples | None:
        found = read_metrics(path)
        return found if found is not None and test(found) else None
    return wait_for(ready, timeout, lambda: f"{what}; metrics: {read_metrics(path)}; {daemon.describe()}")


# --- the daemon's file --------------------------------------------------------------------------


def test_daemon_metrics_follow_commits_moments_and_states(tmp_path: Path, daemons: list[Daemon],
                                                          held_locks: list[int],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """At start: every domain, its moments and state (a guarded one; a folder
    that cannot be a domain's is none); then a commit, a degraded domain
    (two current markers), a failing one (its lock held), and recovery. The
    counters equal what the log shows, a domain name is escaped as the
    format wants, and the file is 0644 (metrics_mode's default)."""
    libvirt, state, prom = tmp_path / "lv", tmp_path / "state", tmp_path / "prom" / "snapstore.prom"
    prom.parent.mkdir()
    quoted = 'vm"3\\x'  # a quote and a backslash: escaped in a label value
    samples.write_folder(libvirt / "vm1", [("s1", None)], current="s1")
    samples.write_folder(libvirt / "vm2", [("s1", None), ("s2", "s1")], current="s2")
    samples.write_folder(libvirt / quoted, [("q1", None)], current="q1")
    samples.write_folder(libvirt / "vm4", [("s1", None), ("s2", "s1"), ("s3", "s2")], current="s3")
    (tmp_path / "empty.toml").write_text("")
    assert run(capsys, ["--config", str(tmp_path / "empty.toml"), "--libvirt-dir", str(libvirt), "--state-dir",
                        str(state), "consolidate", "vm4"]).code == 0
    for moment in (libvirt / "vm4").iterdir():
        moment.unlink()  # emptied: the daemon starts guarded, keeping vm4's 3 snapshots
    samples.write_folder(libvirt / "bad\x07name", [("b1", None)], current="b1")
    began = time.time()
    daemon = start(daemons, tmp_path, config(tmp_path / "d.toml", prom, quiet_period=0.05, settle_timeout=0.5,
                                             lock_timeout=0.2))
    daemon.wait_ready()
    found = wait_metrics(prom, daemon, lambda m: "snapstore_info" in m, "the file written at start")
    text = prom.read_text(encoding="utf-8")
    assert 'domain="vm\\"3\\\\x"' in text, text  # vm\"3\\x: the exposition format's escapes
    _, types = parse(text)
    assert types == DAEMON_FAMILIES
    assert found["snapstore_info"] == {(("version", __version__),): 1.0}
    assert by_domain(found, "snapstore_moments") == {"vm1": 1, "vm2": 2, quoted: 1, "vm4": 3}
    assert states(found) == {"vm1": "ok", "vm2": "ok", quoted: "ok", "vm4": "guarded"}
    assert found["snapstore_commits_total"][()] == committed_in_log(daemon) == 3
    assert found["snapstore_commit_failures_total"][()] == 0
    stamps = by_domain(found, "snapstore_last_commit_timestamp_seconds")
    assert set(stamps) == {"vm1", "vm2", quoted}  # vm4: not committed by this daemon
    assert all(began <= stamp <= time.time() for stamp in stamps.values()), stamps
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644

    samples.write_folder(libvirt / "vm1", [("s1", None), ("s2", "s1")], current="s2")
    found = wait_metrics(prom, daemon, lambda m: by_domain(m, "snapstore_moments")["vm1"] == 2, "vm1's commit")
    assert found["snapstore_commits_total"][()] == committed_in_log(daemon) == 4
    assert by_domain(found, "snapstore_last_commit_timestamp_seconds")["vm1"] > stamps["vm1"]

    (libvirt / "vm2" / "s1.xml").write_bytes(samples.snapshot_xml("s1", None, active=True))  # s2 is current too
    found = wait_metrics(prom, daemon, lambda m: states(m)["vm2"] == "degraded", "vm2 degraded")
    assert by_domain(found, "snapstore_moments")["vm2"] == 2  # the last good file stays

    fd = os.open(state / "locks" / "snapshots.vm1.lock", os.O_RDONLY)
    held_locks.append(fd)
    fcntl.flock(fd, fcntl.LOCK_EX)
    samples.write_folder(libvirt / "vm1", [("s1", None), ("s2", "s1"), ("s3", "s2")], current="s3")
    found = wait_metrics(prom, daemon, lambda m: states(m)["vm1"] == "failing", "vm1 failing")
    assert found["snapstore_commit_failures_total"][()] >= 1
    assert states(found) == {"vm1": "failing", "vm2": "degraded", quoted: "ok", "vm4": "guarded"}
    fcntl.flock(fd, fcntl.LOCK_UN)
    found = wait_metrics(prom, daemon, lambda m: states(m)["vm1"] == "ok", "vm1 recovered", timeout=20)
    retried = len(re.findall(r"(?m)snapshot vm1: .*\(retrying\)$", daemon.stderr()))
    assert found["snapstore_commit_failures_total"][()] == retried, daemon.stderr()
    assert by_domain(found, "snapstore_moments")["vm1"] == 3
    assert found["snapstore_commits_total"][()] == committed_in_log(daemon) == 5
    assert "metrics file" not in daemon.stderr(), daemon.stderr()  # no warning: every write went through


def test_metrics_file_is_replaced_whole_at_most_once_a_second(tmp_path: Path, daemons: list[Daemon]) -> None:
    """A burst of commits (one every ~50 ms for 4 s): a reader polling the
    file never sees a partial one (each read parses, with every family),
    the content changes at most once a second, the last state arrives, and
    no temp is left in the collector's folder (a dead writer's is swept,
    another collector's file stays). metrics_mode is honoured."""
    libvirt, prom = tmp_path / "lv", tmp_path / "prom" / "snapstore.prom"
    prom.parent.mkdir()
    (prom.parent / "other.prom").write_text("# another collector's file: left alone\n")
    (prom.parent / ".snapstore-tmp-999999999-abc").write_text("half")  # a dead snapstore's: swept at start
    samples.write_folder(libvirt / "vm1", [("s0", None)], current="s0")
    daemon = start(daemons, tmp_path, config(tmp_path / "d.toml", prom, quiet_period=0.01, metrics_mode=0o640))
    daemon.wait_ready()
    wait_metrics(prom, daemon, lambda m: "snapstore_info" in m, "the file written at start")
    assert stat.S_IMODE(prom.stat().st_mode) == 0o640

    changes: list[tuple[float, str]] = []
    stop = threading.Event()
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                text = prom.read_text(encoding="utf-8")
                _, types = parse(text)
            except Exception as e:  # a partial file fails the parse or lacks a family
                problems.append(f"{type(e).__name__}: {e}")
                continue
            if set(types) != set(DAEMON_FAMILIES):
                problems.append(f"families {sorted(types)}")
            if not changes or changes[-1][1] != text:
                changes.append((time.monotonic(), text))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        specs: list[tuple[str, str | None]] = [("s0", None)]
        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            specs.append((f"s{len(specs)}", specs[-1][0]))
            samples.write_folder(libvirt / "vm1", specs, current=specs[-1][0])
            time.sleep(0.05)
        final = len(specs)
        wait_metrics(prom, daemon, lambda m: by_domain(m, "snapstore_moments").get("vm1") == final,
                     "the burst's last state")
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not problems, problems[:5]
    commits = committed_in_log(daemon)
    gaps = [b[0] - a[0] for a, b in zip(changes, changes[1:])]
    assert commits >= 3 * len(changes), f"{commits} commits, {len(changes)} writes: the burst was not a burst"
    assert len(changes) >= 3 and min(gaps) >= 0.9, gaps  # polling and the writer thread add a few ms
    found = read_metrics(prom)
    assert found is not None and found["snapstore_commits_total"][()] == commits
    assert daemon.stop() == 0
    assert sorted(os.listdir(prom.parent)) == ["other.prom", "snapstore.prom"]


def test_metrics_write_failure_is_one_warning_and_never_stops_a_commit(tmp_path: Path,
                                                                        daemons: list[Daemon]) -> None:
    """metrics_file in a folder that does not exist: the daemon starts and
    commits as ever, the log says it once (not every second), and the file
    appears within a second or two of the folder."""
    libvirt, prom = tmp_path / "lv", tmp_path / "prom" / "snapstore.prom"
    samples.write_folder(libvirt / "vm1", [("s1", None)], current="s1")
    daemon = start(daemons, tmp_path, config(tmp_path / "d.toml", prom, quiet_period=0.05))
    daemon.wait_ready()
    for count in range(2, 6):
        specs = [(f"s{index}", f"s{index - 1}" if index > 1 else None) for index in range(1, count + 1)]
        samples.write_folder(libvirt / "vm1", specs, current=f"s{count}")
        wait_for(lambda count=count: committed_in_log(daemon) == count, 5, daemon.describe)
        time.sleep(0.6)
    warnings = [line for line in daemon.stderr().splitlines() if "metrics file not written" in line]
    assert len(warnings) == 1 and str(prom.parent) in warnings[0] and "WARNING" in warnings[0], daemon.stderr()
    assert daemon.alive() and "failing" not in (daemon.notify.last_status() or "")
    prom.parent.mkdir()
    found = wait_metrics(prom, daemon, lambda m: "snapstore_info" in m, "written once the folder exists", 5)
    assert found["snapstore_commits_total"][()] == 5
    wait_for(lambda: "written again" in daemon.stderr(), 5, daemon.describe)


def test_metrics_settings_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """metrics_mode: owner read-write, read for group or others at most; an empty metrics_file is off."""
    for line, error in (("metrics_mode = 0o666", "expected 0o600, 0o640 or 0o644, got 0o666"),
                        ("metrics_mode = 0o400", "got 0o400"), ('metrics_mode = "0644"', "expected int"),
                        ("metrics_file = 1", "expected str")):
        (tmp_path / "bad.toml").write_text(line + "\n")
        result = run(capsys, ["--config", str(tmp_path / "bad.toml"), "--state-dir", str(tmp_path / "s"),
                              "list", "vm1"])
        assert result.code == 2 and error in result.err and "metrics_" in result.err, result
    from snapstore import config

    assert config.overlay(config.Config(), {"metrics_file": ""}, "test").metrics_file is None
    assert config.Config().metrics_file is None and config.Config().metrics_mode == 0o644


def test_label_values_are_escaped_as_the_format_says() -> None:
    labels = (("domain", 'a"b\\c\nd'), ("kind", "snapshot"))
    text = metrics.render([metrics.Family("x_total", "counter", "help with \\ and\nnewline", [(labels, 3)]),
                           metrics.Family("y", "gauge", "a float", [((), 1.5), ((("k", "é"),), 2)])])
    found, types = parse(text.decode())
    assert found["x_total"] == {tuple(sorted(labels)): 3.0} and types == {"x": "counter", "y": "gauge"}
    assert found["y"] == {(): 1.5, (("k", "é"),): 2.0}


# --- snapstore check --metrics ------------------------------------------------------------------


def test_check_metrics_count_what_the_json_report_lists(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder damaged several ways: the findings by code and severity in
    the metrics file equal the JSON report's (every other code 0), and so
    do the domains and moments; the file is replaced, never appended to."""
    (env.folder / "s2.xml").write_bytes(samples.snapshot_xml("s2", "s1", active=True))  # two current: SS207
    (env.folder / "s3.xml").chmod(0o644)  # SS405
    (env.folder / "s9.xml.new").write_bytes(b"<domainsnapshot/>")  # SS401
    (env.folder / "notes.txt").write_text("foreign\n")  # SS406
    prom = env.tmp / "prom" / "snapstore-check.prom"
    prom.parent.mkdir()
    prom.write_text("stale content of an earlier run\n")
    result = run(capsys, env.argv("check", "--no-disks", "--json", "--metrics", str(prom)))
    assert result.code == 3, result
    report = result.data
    found, types = parse(prom.read_text(encoding="utf-8"))
    assert set(types) == {"snapstore_check_findings", "snapstore_check_domains", "snapstore_check_moments",
                          "snapstore_check_repairs", "snapstore_check_duration_seconds",
                          "snapstore_check_last_run_timestamp_seconds"} and set(types.values()) == {"gauge"}
    expected = Counter((f["code"], f["severity"]) for f in report["findings"])
    assert {"SS207", "SS401", "SS405", "SS406"} <= {code for code, _ in expected}, report["findings"]
    counted = {(dict(labels)["code"], dict(labels)["severity"]): value
               for labels, value in found["snapstore_check_findings"].items()}
    assert counted == {(c.code, c.severity): expected.get((c.code, c.severity), 0) for c in codes.CODES.values()}
    assert found["snapstore_check_domains"][()] == report["summary"]["domains"] == 1
    assert found["snapstore_check_moments"] == {(("kind", "snapshot"),): report["summary"]["snapshots"],
                                                (("kind", "checkpoint"),): report["summary"]["checkpoints"]}
    assert abs(found["snapstore_check_last_run_timestamp_seconds"][()] - time.time()) < 60
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    assert sorted(os.listdir(prom.parent)) == ["snapstore-check.prom"]  # no temp left


def test_check_metrics_into_a_missing_folder_fails_before_the_check(env: Env,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, env.argv("check", "--no-disks", "--metrics", str(env.tmp / "nowhere" / "x.prom")))
    assert result.code == 2 and result.out == "", result
    assert result.err == f"snapstore: {env.tmp / 'nowhere'}: no such folder (--metrics)\n", result


# --- the check service and timer ----------------------------------------------------------------


def unit_settings(path: Path, section: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def local_units(tmp_path: Path) -> Path:
    """The check units, ExecStart pointed at this checkout's snapstore (verify wants it to exist)."""
    for name in ("snapstore-check.service", "snapstore-check.timer"):
        text = (UNITS / name).read_text()
        (tmp_path / name).write_text(text.replace(INSTALLED_BINARY, str(Path(sys.executable).with_name("snapstore"))))
    return tmp_path


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
def test_check_units_verify_and_are_rated_safe(tmp_path: Path) -> None:
    folder = local_units(tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", str(folder / "snapstore-check.service"),
                             str(folder / "snapstore-check.timer")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(folder / "snapstore-check.service")],
                            capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for snapstore-check.service: (\d+\.\d+)", result.stdout)
    assert match and float(match.group(1)) <= 1.0, result.stdout + result.stderr


def test_check_service_runs_the_check_for_metrics_hardened_like_the_daemon() -> None:
    """What the timer runs, and the daemon unit's sandbox line for line; the
    differences are the reads the check needs (domain definitions, no
    notify socket) and its being a oneshot as the daemon's dynamic user."""
    check = unit_settings(UNITS / "snapstore-check.service", "Service")
    daemon = unit_settings(UNITS / "snapstore.service", "Service")
    assert check["Type"] == ["oneshot"] and check["User"] == ["snapstore"] and check["DynamicUser"] == ["yes"]
    assert check["ExecStart"] == [f"{INSTALLED_BINARY} check --no-disks --metrics {COLLECTOR}/snapstore-check.prom"]
    assert check["SuccessExitStatus"] == ["1 3"]  # findings are the metrics' to say; exit 2 fails the unit
    assert check["BindPaths"] == daemon["BindPaths"] == [f"-{COLLECTOR}"]
    differ = {"Type", "ExecStart", "TimeoutStartSec", "BindReadOnlyPaths",  # and what only one has:
              "User", "SuccessExitStatus", "Nice", "IOSchedulingClass",
              "NotifyAccess", "ExecReload", "WatchdogSec", "Restart", "RestartSec", "TimeoutStopSec"}
    assert {k: v for k, v in check.items() if k not in differ} == {k: v for k, v in daemon.items() if k not in differ}
    reads = [word for value in check["BindReadOnlyPaths"] for word in value.split()]
    daemon_reads = [word for value in daemon["BindReadOnlyPaths"] for word in value.split()]
    assert set(reads) ^ set(daemon_reads) == {"-/etc/libvirt/qemu", "-/run/systemd/notify"}
    timer = unit_settings(UNITS / "snapstore-check.timer", "Timer")
    assert timer == {"OnCalendar": ["daily"], "Persistent": ["true"], "RandomizedDelaySec": ["1h"]}
    assert unit_settings(UNITS / "snapstore-check.timer", "Install") == {"WantedBy": ["timers.target"]}


# --- both units under systemd, with README "Metrics"' setup ---------------------------------------

RECIPE_GROUP = "snapstore-metrics"


def test_units_write_the_collector_folder_under_systemd(tmp_path: Path) -> None:
    """The shipped units, unchanged but for README "Metrics"' drop-in, under
    this host's systemd (as test_unit_file's confinement test runs them):
    in Debian's root-owned collector folder the daemon cannot write, says
    so once and runs on; given write access through the recipe's group, it
    writes its file within a second or two; then snapstore-check.service,
    as the daemon's dynamic user, reads the state folder and the roots and
    writes its own file (and without the drop-in fails: exit 2). Both 0644,
    so node_exporter's user reads them."""
    import test_unit_file as unit_file  # tests/integration, on the path as every test module's folder

    reason = unit_file.systemd_unavailable()
    if reason:
        pytest.skip(f"systemd cannot be booted in a namespace here: {reason}")
    (tmp_path / "units").mkdir()
    for name in ("snapstore.service", "snapstore-check.service"):
        shutil.copy(UNITS / name, tmp_path / "units" / name)
    for target in ("sdtest", "sysinit", "basic", "shutdown", "local-fs", "multi-user", "sockets"):
        (tmp_path / "units" / f"{target}.target").write_text("[Unit]\nDefaultDependencies=no\n")
    (tmp_path / "probe.conf").write_text(f"[Service]\nSupplementaryGroups={RECIPE_GROUP}\n")  # the drop-in
    (tmp_path / "probe.py").write_text("")  # Booted installs it; this test runs no probe
    (tmp_path / "s1.xml").write_bytes(samples.snapshot_xml("s1", None, True))
    (tmp_path / "c1.xml").write_text("<domaincheckpoint><name>c1</name><creationTime>1700000000</creationTime>"
                                     "</domaincheckpoint>\n")
    booted = unit_file.Booted(tmp_path)
    try:
        booted.run("groupadd", "--system", RECIPE_GROUP)
        booted.run("install", "-d", "-m", "0755", COLLECTOR)  # as Debian's prometheus-node-exporter ships it
        booted.run("sh", "-c", f"mkdir -p /etc/snapstore && echo 'metrics_file = \"{COLLECTOR}/snapstore.prom\"' "
                               "> /etc/snapstore/snapstore.toml")
        booted.run("systemctl", "start", "systemd-journald.service")
        booted.run("systemctl", "start", "snapstore.service")

        def journal() -> str:
            return booted.run("journalctl", "--no-pager", "-o", "cat", "-u", "snapstore.service").stdout

        wait_for(lambda: "metrics file not written" in journal(), 10, journal)
        time.sleep(2.5)  # retried each second meanwhile: still one line
        assert journal().count("metrics file not written") == 1 and "Permission denied" in journal(), journal()
        booted.run("chgrp", RECIPE_GROUP, COLLECTOR)
        booted.run("chmod", "g+w", COLLECTOR)
        wait_for(lambda: "written again" in journal(), 10, journal)
        daemon_file = booted.run("cat", f"{COLLECTOR}/snapstore.prom").stdout
        found, _ = parse(daemon_file)
        assert found["snapstore_commits_total"][()] == 2 and states(found) == {"vm1": "ok"}, daemon_file
        assert booted.run("stat", "-c", "%a", f"{COLLECTOR}/snapstore.prom").stdout.strip() == "644"

        checked = booted.run("systemctl", "start", "snapstore-check.service", check=False)  # no drop-in yet
        log = booted.run("journalctl", "--no-pager", "-o", "cat", "-u", "snapstore-check.service").stdout
        assert checked.returncode != 0 and "snapstore-check.prom: write failed" in log, log  # exit 2 fails it
        assert "summary: 0 errors, 0 warnings in 1 domains (1 snapshots, 1 checkpoints)" in log, log
        booted.run("mkdir", "/run/sdtest/units/snapstore-check.service.d")
        booted.run("cp", "/run/sdtest/units/snapstore.service.d/probe.conf", "/run/sdtest/units/snapstore-check.service.d/")
        booted.run("systemctl", "daemon-reload")
        checked = booted.run("systemctl", "start", "snapstore-check.service", check=False)
        log = booted.run("journalctl", "--no-pager", "-o", "cat", "-u", "snapstore-check.service").stdout
        assert checked.returncode == 0, checked.stderr + log
        found, _ = parse(booted.run("cat", f"{COLLECTOR}/snapstore-check.prom").stdout)
        assert found["snapstore_check_domains"][()] == 1, log
        assert found["snapstore_check_moments"] == {(("kind", "snapshot"),): 1, (("kind", "checkpoint"),): 1}, log
        assert booted.run("stat", "-c", "%a", f"{COLLECTOR}/snapstore-check.prom").stdout.strip() == "644"
        assert sorted(booted.run("ls", "-A", COLLECTOR).stdout.split()) == ["snapstore-check.prom", "snapstore.prom"]
    finally:
        booted.close()
