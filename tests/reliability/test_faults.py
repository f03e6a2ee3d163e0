"""Syscall faults on the real binary (issue 8 §2), injected by Debian's strace.

A tracing run lists every call of the write path (openat, write, fsync,
rename/renameat/renameat2; the folder fsync is an fsync of a folder's fd)
that touches the test's folders; then each of them, in turn, fails with
EIO, ENOSPC, EACCES and EXDEV (quick mode: one errno per call, in
rotation). After each run: exit 0 with the new state, or one clear error
line with the old state intact (the new one only when the commit had
renamed and the folder fsync failed, which the message says); no temp and
no half-written file; a plain rerun recovers. The daemon is faulted the
same way while it runs: it logs one line, keeps serving and retries.

The order of a normal commit is pinned here too: temp created, written,
fsynced, renamed over the target, folder fsynced.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import campaign
import pytest
import straced
from campaign import Sandbox
from daemonproc import Daemon, wait_for, write_config
from scenarios import SCENARIOS, Scenario, fresh


def check_faulted_run(scenario: Scenario, sandbox: Sandbox, site: straced.Site, errno: str,
                      result: campaign.Result) -> None:
    state, old, new = scenario.observe(sandbox), scenario.old(), scenario.new()
    problems = []
    if result.code == 0:
        problems += [] if state == new else ["exit 0 but the new state is not on disk"]
    else:
        problems += campaign.error_problems(result)
        problems += [] if state in (old, new) else ["data: the disk holds neither the old nor the new state"]
        if state == new and "fsync failed" not in result.err:
            problems.append("it failed after the rename without saying so")
    if campaign.temps_under(sandbox.state):
        problems.append(f"temps left in the state folder: {campaign.temps_under(sandbox.state)}")
    if state == old and campaign.temps_under(sandbox.base / "out"):
        problems.append("a temp folder left beside the domain folder")
    half = campaign.half_attic_copies(sandbox.state, lambda files: files == campaign.expanded_files(1))
    if half:
        problems.append(f"a half-written copy of the replaced folder left in the attic, never cleaned up: {half}")
    assert not problems, (f"{scenario.name} with {site.label} ({site.call}) failing with {errno}: "
                          f"{'; '.join(problems)}\n{result}")


def check_recovery(scenario: Scenario, sandbox: Sandbox, what: str) -> None:
    result = campaign.run_script(scenario.argv(sandbox))
    assert result.code == 0, f"{what}: a rerun without the fault did not recover\n{result}"
    assert scenario.observe(sandbox) == scenario.new(), f"{what}: the rerun did not commit"
    assert campaign.temps_under(sandbox.base) == [], f"{what}: temps still there after the rerun"


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_each_write_path_call_fails_in_turn(name: str, tmp_path: Path) -> None:
    scenario = SCENARIOS[name]
    template = Sandbox(tmp_path / "template")
    scenario.setup(template)
    probe = fresh(template.base, tmp_path / "run")
    result, calls = straced.trace(scenario.argv(probe), tmp_path / "trace.log")
    assert result.code == 0 and scenario.observe(probe) == scenario.new(), result
    targets = straced.sites(calls, probe.base)
    assert {site.name for site in targets} >= {"openat", "write", "fsync"}, targets
    assert any(site.on_folder for site in targets), "no folder fsync traced"

    def one(site: straced.Site, errno: str) -> None:
        sandbox = fresh(template.base, tmp_path / "run")
        result, hit = straced.inject(scenario.argv(sandbox), tmp_path / "inject.log", site, error=errno)
        if hit is None or not hit.touches(sandbox.base):
            raise RuntimeError(f"{site.label} {errno}: the injection hit {hit}: the run is not deterministic")
        check_faulted_run(scenario, sandbox, site, errno, result)
        check_recovery(scenario, sandbox, f"{scenario.name} after {site.label} failed with {errno}")

    straced.run_plan(straced.plan(targets, campaign.FULL), one, "faults injected (strace, command line)")
    campaign.NOTES[f"fault sites ({name})"] = ", ".join(site.label for site in targets)


def test_each_index_call_fails_in_turn_and_is_said(tmp_path: Path) -> None:
    """The listing index is derived: a fault on it leaves the commit standing
    (exit 0) but must be one warning line naming the index, with no temp
    left (issue 11 §18). Every call on the index path fails, in both modes."""
    scenario = SCENARIOS["consolidate"]
    template = Sandbox(tmp_path / "template")
    scenario.setup(template)
    probe = fresh(template.base, tmp_path / "run")
    result, calls = straced.trace(scenario.argv(probe), tmp_path / "trace.log")
    assert result.code == 0, result
    index = probe.state / "index"
    # Every call but the read-only open that holds the old index across the rename (harmless when it fails).
    targets = [site for site in straced.sites(calls, index)
               if "O_RDONLY" not in site.call.args or "O_DIRECTORY" in site.call.args]
    campaign.NOTES["fault sites (listing index)"] = ", ".join(site.label for site in targets)
    assert {site.name for site in targets} >= {"openat", "write"} and any(
        site.name.startswith("rename") for site in targets), targets

    def one(site: straced.Site, errno: str) -> None:
        sandbox = fresh(template.base, tmp_path / "run")
        result, hit = straced.inject(scenario.argv(sandbox), tmp_path / "inject.log", site, error=errno)
        if hit is None or str(sandbox.state / "index") not in str(hit):
            raise RuntimeError(f"{site.label} {errno}: the injection hit {hit}: the run is not deterministic")
        what = f"index {site.label} ({site.call}) failing with {errno}"
        if result.code != 0:  # the state folder checked before the commit: a clear refusal is fine
            assert not campaign.error_problems(result) and len(result.lines) == 1, f"{what}\n{result}"
            assert scenario.observe(sandbox) == scenario.old(), f"{what}: refused, yet the store changed"
        else:
            assert scenario.observe(sandbox) == scenario.new(), f"{what}: exit 0 without the commit\n{result}"
            warned = [line for line in result.lines if line.startswith(f"{campaign.PREFIX}warning: ")
                      and "listing index" in line]
            assert len(warned) == 1 and len(result.lines) == 1, f"{what}: not said in one warning line\n{result}"
        assert campaign.temps_under(sandbox.state) == [], f"{what}: temps left"

    runs = [(site, straced.ERRNOS[i % len(straced.ERRNOS)]) for i, site in enumerate(targets)]
    straced.run_plan(straced.plan(targets, True) if campaign.FULL else runs, one,
                     "faults injected (strace, listing index)")


def trace_side_path(tmp_path: Path, part: str, names: tuple[str, ...],
                    config: Path | None = None) -> tuple[Sandbox, Sandbox, list[straced.Site]]:
    """The consolidate scenario set up in a template, then run once in a copy
    under strace with the settings in ``config``: the template, the copy, and
    the calls of ``names`` on ``<state>/<part>``, a side path of the commit.
    mkdirat counts only where it makes ``<state>/<part>`` itself: on an
    existing folder, mkdir's EEXIST is expected."""
    scenario = SCENARIOS["consolidate"]
    template = Sandbox(tmp_path / "template")
    scenario.setup(template)
    probe = fresh(template.base, tmp_path / "run")
    result, calls = straced.trace(scenario.argv(probe, config), tmp_path / "trace.log", names)
    assert result.code == 0, result
    folder = probe.state / part
    targets = [site for site in straced.sites(calls, folder, names) if site.name != "mkdirat" or (
        site.call.result == "0" and straced.fd_path(site.call) == str(folder.parent))]
    campaign.NOTES[f"fault sites ({part})"] = ", ".join(site.label for site in targets)
    return template, probe, targets


def fault_side_path(tmp_path: Path, template: Sandbox, targets: list[straced.Site], part: str, said: str,
                    problems: Callable[[Path], list[str]], config: Path | None = None) -> None:
    """Each site of ``trace_side_path`` failing in turn (every errno in full
    mode, one each in rotation in quick mode): the commit stands (exit 0, the
    new state), every stderr line is a warning naming ``said``, no temp is
    left, and ``problems`` finds nothing wrong in the state folder."""
    scenario = SCENARIOS["consolidate"]

    def one(site: straced.Site, errno: str) -> None:
        sandbox = fresh(template.base, tmp_path / "run")
        result, hit = straced.inject(scenario.argv(sandbox, config), tmp_path / "inject.log", site, error=errno)
        if hit is None or not hit.touches(sandbox.state / part):
            raise RuntimeError(f"{site.label} {errno}: the injection hit {hit}: the run is not deterministic")
        what = f"{part} {site.label} ({site.call}) failing with {errno}"
        assert result.code == 0 and scenario.observe(sandbox) == scenario.new(), f"{what}: the commit\n{result}"
        assert result.lines and all(line.startswith(f"{campaign.PREFIX}warning: ") and said in line
                                    for line in result.lines), f"{what}: not said as a warning\n{result}"
        assert campaign.temps_under(sandbox.state) == [], f"{what}: temps left"
        assert problems(sandbox.state) == [], what

    runs = [(site, straced.ERRNOS[i % len(straced.ERRNOS)]) for i, site in enumerate(targets)]
    straced.run_plan(straced.plan(targets, True) if campaign.FULL else runs, one,
                     f"faults injected (strace, {part})")


def test_each_history_call_fails_in_turn_and_is_said(tmp_path: Path) -> None:
    """History never blocks a commit (issue 13): a fault on any call of the
    history path (the link of the replaced file, the record, the folder
    fsync, pruning) leaves the commit standing with a warning naming the
    history, no temp, and every generation kept valid."""
    template, _, targets = trace_side_path(tmp_path, "history", straced.HISTORY_CALLS)
    fault_side_path(tmp_path, template, targets, "history", "history", campaign.history_problems)


FLEET = """[fleet]
enabled = true
dsn = "host=127.0.0.1 port=1 dbname=x user=y"
host_id = "host-a"
"""


def outbox_problems(state: Path) -> list[str]:
    """The outbox holds nothing or whole entries: a generation's file and its
    record, the record JSON, never one without the other."""
    outbox = state / "outbox"
    names = {path.name for path in outbox.iterdir()} if outbox.exists() else set()
    problems = []
    for name in sorted(names):
        stem, _, suffix = name.rpartition(".")
        twin = f"{stem}.{'json' if suffix == 'xml' else 'xml'}"
        if suffix not in ("xml", "json"):
            problems.append(f"{outbox / name}: not an entry of the outbox")
        elif twin not in names:
            problems.append(f"half an entry: {outbox / name} without {twin}")
        elif suffix == "json":
            try:
                json.loads((outbox / name).read_bytes())
            except ValueError as e:
                problems.append(f"{outbox / name}: a record that is not JSON: {e}")
    return problems


def test_each_outbox_call_fails_in_turn_and_is_said(tmp_path: Path) -> None:
    """The fleet never blocks a commit: with [fleet] enabled, a fault on any
    call queueing the commit in the outbox (making its folder, the link of the
    committed file, the record, the folder fsync) leaves the commit standing
    with a warning naming the fleet, no temp, and the outbox empty or holding
    the whole entry, never half of one."""
    config = tmp_path / "fleet.toml"
    config.write_text(FLEET)
    template, probe, targets = trace_side_path(tmp_path, "outbox", straced.OUTBOX_CALLS, config)
    outbox = probe.state / "outbox"
    entry = sorted(path.name for path in outbox.iterdir())
    assert entry == ["snapshots.vm1.2.json", "snapshots.vm1.2.xml"] and outbox_problems(probe.state) == [], entry
    assert all((outbox / name).stat().st_mode & 0o7777 == 0o600 for name in entry), "outbox files not 0600"
    assert {site.name for site in targets} >= {"mkdirat", "linkat", "openat", "write", "fsync"} and any(
        site.name.startswith("rename") for site in targets) and any(site.on_folder for site in targets), targets
    fault_side_path(tmp_path, template, targets, "outbox", "fleet", outbox_problems, config)


def test_each_check_memo_call_fails_in_turn_and_is_said(tmp_path: Path) -> None:
    """The memo `check` keeps of each domain (check/memo.py) is derived: a
    fault on any call on its folder (the memo written, the listing index
    read, the folder searched for temps) leaves the report as it is (exit 0,
    no findings) with one warning line naming the folder, and no temp. The
    files must be settled (over 2 s old) for a memo to be written at all,
    so one sandbox serves every run, its memo removed before each."""
    sandbox = Sandbox(tmp_path / "run")
    SCENARIOS["consolidate"].setup(sandbox)
    assert campaign.run_script(sandbox.argv("consolidate", "vm1")).code == 0
    memo_file = sandbox.state / "index" / "check.snapshots.vm1.json"
    argv = sandbox.argv("check", "vm1", "--no-disks", "--json")
    time.sleep(2.1)
    result, calls = straced.trace(argv, tmp_path / "trace.log")
    assert result.code == 0 and json.loads(memo_file.read_bytes())["findings"] == [], result
    targets = [site for site in straced.sites(calls, sandbox.state / "index")
               if "O_RDONLY" not in site.call.args or "O_DIRECTORY" in site.call.args]
    campaign.NOTES["fault sites (check memo)"] = ", ".join(site.label for site in targets)
    assert {site.name for site in targets} >= {"openat", "write"} and any(
        site.name.startswith("rename") for site in targets), targets

    def one(site: straced.Site, errno: str) -> None:
        memo_file.unlink(missing_ok=True)
        result, hit = straced.inject(argv, tmp_path / "inject.log", site, error=errno)
        if hit is None or not hit.touches(sandbox.state / "index"):
            raise RuntimeError(f"{site.label} {errno}: the injection hit {hit}: the run is not deterministic")
        what = f"check memo {site.label} ({site.call}) failing with {errno}"
        assert result.code == 0 and json.loads(result.out)["findings"] == [], f"{what}: the report\n{result}"
        assert len(result.lines) == 1 and result.lines[0].startswith(f"{campaign.PREFIX}warning: ") \
            and str(memo_file.parent) in result.err, f"{what}: not said in one warning line\n{result}"
        assert campaign.temps_under(sandbox.state) == [], f"{what}: temps left"

    runs = [(site, straced.ERRNOS[i % len(straced.ERRNOS)]) for i, site in enumerate(targets)]
    straced.run_plan(straced.plan(targets, True) if campaign.FULL else runs, one,
                     "faults injected (strace, check memo)")


def test_commit_order_is_fsync_rename_folder_fsync(sandbox: Sandbox, tmp_path: Path) -> None:
    SCENARIOS["consolidate"].setup(sandbox)
    result, calls = straced.trace(sandbox.argv("consolidate", "vm1"), tmp_path / "trace.log")
    assert result.code == 0, result
    folder = str(sandbox.store_file().parent)
    create = next(i for i, c in enumerate(calls) if c.name == "openat" and folder in c.args and "O_CREAT" in c.args
                  and "lock" not in c.args)
    temp = calls[create].result.partition("<")[2].rstrip(">")
    on = {i: straced.fd_path(c) for i, c in enumerate(calls)}
    writes = [i for i, c in enumerate(calls) if c.name == "write" and on[i] == temp]
    file_sync = [i for i, c in enumerate(calls) if c.name == "fsync" and on[i] == temp]
    rename = [i for i, c in enumerate(calls) if c.name.startswith("rename") and temp.rsplit("/", 1)[1] in c.args]
    folder_sync = [i for i, c in enumerate(calls) if c.name == "fsync" and on[i] == folder]
    order = [str(calls[i]) for i in (create, *writes, *file_sync, *rename, *folder_sync)]
    assert writes and len(file_sync) == 1 and len(rename) == 1 and folder_sync, order
    assert create < max(writes) < file_sync[0] < rename[0] < folder_sync[0], (
        f"a commit must create the temp, write it, fsync it, rename it, then fsync the folder: {order}")
    assert "vm1.xml" in calls[rename[0]].args and "O_EXCL" in calls[create].args, order


# --------------------------------------------------------------------------- the daemon's commit


@pytest.fixture
def daemon(sandbox: Sandbox, tmp_path: Path):
    campaign.write_legacy(sandbox.libvirt / "vm1", {"s0.xml": campaign.samples.snapshot_xml("s0", None, True)})
    config = write_config(tmp_path / "daemon.toml", quiet_period=0.05, settle_timeout=30.0)
    running = Daemon(sandbox.libvirt, sandbox.checkpoints, sandbox.state, config, tmp_path / "daemon.stderr")
    running.wait_ready()
    yield running
    running.close()


def _add_leaf(sandbox: Sandbox, k: int) -> bytes:
    campaign.plant(sandbox.libvirt / "vm1", f"leaf{k}.xml",
                   campaign.samples.snapshot_xml(f"leaf{k}", "s0", created=1700000000 + k))
    return f"<name>leaf{k}</name>".encode()


def test_daemon_commit_faults_are_logged_and_retried(daemon: Daemon, sandbox: Sandbox, tmp_path: Path) -> None:
    path = sandbox.store_file()
    wait_for(path.exists, 5, daemon.describe)
    with straced.attach(daemon.pid, tmp_path / "trace.log", straced.WRITE_PATH) as calls:
        _add_leaf(sandbox, 0)  # one ordinary commit, traced to find its call sites
        wait_for(lambda: any(c.name.startswith("rename") and ".json" in c.args for c in calls()), 10,
                 lambda: f"no commit traced; {daemon.describe()}")
    targets = straced.sites(calls(), sandbox.base)
    assert any(site.on_folder for site in targets), targets
    rounds = iter(range(1, 1 << 20))

    def one(site: straced.Site, errno: str) -> None:
        k = next(rounds)
        what = f"daemon commit with {site.label} ({site.call}) failing with {errno}"
        old, versions = path.read_bytes(), campaign.Versions(path).start()
        log_before = len(daemon.stderr().splitlines())
        try:
            with straced.attach(daemon.pid, tmp_path / f"inject{k}.log", (site.name,),
                                straced.inject_option(site, errno)) as calls:
                marker = _add_leaf(sandbox, k)
                wait_for(lambda: marker in path.read_bytes() and any(c.injected for c in calls()), 10,
                         lambda: f"{what}: not committed after the fault; {daemon.describe()}")
                hit = next(c for c in calls() if c.injected)
        finally:
            seen = versions.stop()[path]
        if not hit.touches(sandbox.base):
            raise RuntimeError(f"{what}: the injection hit {hit}: the run is not deterministic")
        assert daemon.alive(), f"{what}: the daemon died; {daemon.describe()}"
        for data in seen:
            campaign.parse_store(data, what)
            assert data == old or marker in data, f"data: {what}: a version that is neither old nor new"
        new_lines = daemon.stderr().splitlines()[log_before:]
        assert all(line.startswith("snapstore: ") and "Traceback" not in line for line in new_lines), new_lines
        # The history's record is written after the rename the test waited for: give it its moment.
        wait_for(lambda: campaign.temps_under(sandbox.state) == [], 5, lambda: f"{what}: temps left: "
                 f"{campaign.temps_under(sandbox.state)}")

    straced.run_plan(straced.plan(targets, campaign.FULL), one, "faults injected (strace, daemon commit)")
    campaign.NOTES["fault sites (daemon)"] = ", ".join(site.label for site in targets)
