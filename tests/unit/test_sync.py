"""The daemon's sync rules on a real folder, with the clock faked."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import samples
from support.clock import Clock

from snapstore import config, errors, fsio, kinds, store
from snapstore.daemon import sync
from snapstore.formats import legacy, mapping

KEY = (kinds.SNAPSHOT, "vm1")


@pytest.fixture
def env(tmp_path: Path):
    settings = config.Config(libvirt_dir=tmp_path / "snap", checkpoint_dir=tmp_path / "ckpt",
                             state_dir=tmp_path / "state", settle_timeout=5.0)
    settings.libvirt_dir.mkdir()
    state = store.Store(settings.state_dir)
    state.prepare()
    clock = Clock()
    return sync.Synchronizer(settings, state, clock), settings.libvirt_dir / "vm1", clock


def test_consistent_folder_is_committed_once(env) -> None:
    synchronizer, folder, _ = env
    samples.write_folder(folder, [("a", None), ("b", "a")], current="b")
    assert synchronizer.sync(KEY, at_start=True) is sync.Outcome.COMMITTED
    assert synchronizer.sync(KEY) is sync.Outcome.UNCHANGED
    assert synchronizer.store.read_tree(*KEY).current == "b"
    assert synchronizer.status() == "1 domains, 2 snapshots, 0 checkpoints"


def test_inconsistent_folder_waits_then_degrades_and_recovers(env) -> None:
    synchronizer, folder, clock = env
    samples.write_folder(folder, [("a", None), ("b", "a")], current="b")
    synchronizer.sync(KEY)
    good = synchronizer.store.path(*KEY).read_bytes()
    (folder / "a.xml").write_bytes(samples.snapshot_xml("a", None, active=True))  # two current
    assert synchronizer.sync(KEY) is sync.Outcome.UNSETTLED
    clock.now += 4.9
    assert synchronizer.sync(KEY) is sync.Outcome.UNSETTLED
    clock.now += 0.2
    assert synchronizer.sync(KEY) is sync.Outcome.DEGRADED
    assert "degraded: vm1" in synchronizer.status()
    assert synchronizer.store.path(*KEY).read_bytes() == good
    (folder / "a.xml").write_bytes(samples.snapshot_xml("a", None, active=False))
    assert synchronizer.sync(KEY) is sync.Outcome.UNCHANGED and "degraded" not in synchronizer.status()


def test_a_libvirt_temp_in_the_folder_holds_the_commit(env) -> None:
    synchronizer, folder, _ = env
    samples.write_folder(folder, [("a", None)], current="a")
    (folder / "b.xml.new").write_bytes(samples.snapshot_xml("b", "a"))
    assert synchronizer.sync(KEY) is sync.Outcome.UNSETTLED
    assert synchronizer.store.read_bytes(*KEY) is None


def test_only_changed_files_are_parsed_again(env, monkeypatch) -> None:
    synchronizer, folder, _ = env
    samples.write_folder(folder, [(f"s{i}", f"s{i - 1}" if i else None) for i in range(20)], current="s19")
    parsed: list[str] = []
    real = legacy.parse_legacy
    monkeypatch.setattr(legacy, "parse_legacy", lambda data, kind, source, limit, inspect=None: (
        parsed.append(Path(source).name), real(data, kind, source, limit, inspect))[1])
    synchronizer.sync(KEY)
    assert len(parsed) == 20
    parsed.clear()
    shutil.copy(folder / "s3.xml", folder / "tmp")
    (folder / "tmp").rename(folder / "s3.xml")  # libvirt's way: a new inode renamed over
    synchronizer.sync(KEY)
    assert parsed == ["s3.xml"]


def plant(folder: Path, name: str, data: bytes) -> None:
    (folder / "planting").write_bytes(data)
    (folder / "planting").rename(folder / name)  # libvirt's way: one rename


def test_a_folder_changed_while_read_is_read_again(env, monkeypatch) -> None:
    """libvirt makes b current (b.xml, then a.xml unmarked) between listing and reading a.xml:
    the first read saw {a, not current}, a state the folder never held; the second read is settled."""
    synchronizer, folder, _ = env
    samples.write_folder(folder, [("a", None)], current="a")
    synchronizer.sync(KEY)
    real = fsio.read_identified

    def libvirt_writes_first(dir_fd, name, *args):
        if name == "a.xml" and not (folder / "b.xml").exists():
            plant(folder, "b.xml", samples.snapshot_xml("b", "a", active=True, created=1700000009))
            plant(folder, "a.xml", samples.snapshot_xml("a", None, active=False))
        return real(dir_fd, name, *args)
    monkeypatch.setattr(fsio, "read_identified", libvirt_writes_first)
    plant(folder, "a.xml", samples.snapshot_xml("a", None, active=True, description="touched"))
    synchronizer.forget(KEY, "a.xml")  # what the daemon does on the event
    assert synchronizer.sync(KEY) is sync.Outcome.COMMITTED
    tree = synchronizer.store.read_tree(*KEY)
    assert (sorted(tree.by_name), tree.current) == (["a", "b"], "b")


def test_a_folder_changing_during_every_read_is_not_committed(env, monkeypatch) -> None:
    synchronizer, folder, _ = env
    samples.write_folder(folder, [("a", None)], current="a")
    synchronizer.sync(KEY)
    committed = synchronizer.store.path(*KEY).read_bytes()
    real, count = fsio.read_identified, iter(range(100))

    def libvirt_writes_each_time(dir_fd, name, *args):  # a new file during every read
        number = next(count)
        plant(folder, f"x{number}.xml", samples.snapshot_xml(f"x{number}", "a"))
        return real(dir_fd, name, *args)
    monkeypatch.setattr(fsio, "read_identified", libvirt_writes_each_time)
    synchronizer.forget(KEY, "a.xml")
    assert synchronizer.sync(KEY) is sync.Outcome.UNSETTLED
    assert synchronizer.store.path(*KEY).read_bytes() == committed


def test_a_change_whose_event_has_not_arrived_is_still_read(env) -> None:
    """The cache is only a shortcut: a file changed without forget() is found by the check after the read."""
    synchronizer, folder, _ = env
    samples.write_folder(folder, [("a", None)], current="a")
    synchronizer.sync(KEY)
    plant(folder, "a.xml", samples.snapshot_xml("a", None, active=True, description="no event yet"))
    assert synchronizer.sync(KEY) is sync.Outcome.COMMITTED
    assert mapping.element(synchronizer.store.read_tree(*KEY).by_name["a"]).findtext("description") == "no event yet"


def test_start_guard_keeps_a_store_file_libvirt_lost(env) -> None:
    synchronizer, folder, _ = env
    samples.write_folder(folder, [("a", None)], current="a")
    synchronizer.sync(KEY)
    kept = synchronizer.store.path(*KEY).read_bytes()
    for file in folder.iterdir():
        file.unlink()
    fresh = sync.Synchronizer(synchronizer.settings, synchronizer.store, Clock())
    assert fresh.sync(KEY, at_start=True) is sync.Outcome.GUARDED
    folder.rmdir()
    assert fresh.sync(KEY, at_start=True) is sync.Outcome.GUARDED
    assert synchronizer.store.path(*KEY).read_bytes() == kept
    assert "guarded" in fresh.status() and "vm1" in fresh.status()
    samples.write_folder(folder, [("new", None)], current="new")  # libvirt starts afresh
    assert fresh.sync(KEY) is sync.Outcome.COMMITTED
    assert [p.read_bytes() for p in (synchronizer.store.root / "attic").iterdir()] == [kept]


def test_folder_removed_while_running_moves_the_file_to_the_attic(env) -> None:
    synchronizer, folder, _ = env
    samples.write_folder(folder, [("a", None)], current="a")
    synchronizer.sync(KEY, at_start=True)
    shutil.rmtree(folder)
    assert synchronizer.sync(KEY) is sync.Outcome.ATTIC
    assert synchronizer.store.read_bytes(*KEY) is None
    assert len(list((synchronizer.store.root / "attic").iterdir())) == 1
    assert synchronizer.sync(KEY) is sync.Outcome.ABSENT


def test_emptied_while_running_is_committed_empty(env) -> None:
    synchronizer, folder, _ = env
    samples.write_folder(folder, [("a", None)], current="a")
    synchronizer.sync(KEY, at_start=True)
    (folder / "a.xml").unlink()
    assert synchronizer.sync(KEY) is sync.Outcome.COMMITTED
    assert len(synchronizer.store.read_tree(*KEY)) == 0


def test_missing_libvirt_root_never_sends_files_to_the_attic(env) -> None:
    synchronizer, folder, _ = env
    samples.write_folder(folder, [("a", None)], current="a")
    synchronizer.sync(KEY, at_start=True)
    shutil.rmtree(folder.parent)
    assert synchronizer.sync(KEY) is sync.Outcome.GUARDED
    assert synchronizer.store.read_bytes(*KEY) is not None


def test_foreign_file_in_the_root_is_not_a_domain(env) -> None:
    synchronizer, folder, _ = env
    (folder.parent / "stray.txt").write_text("x")
    assert synchronizer.sync((kinds.SNAPSHOT, "stray.txt")) is sync.Outcome.ABSENT
    assert synchronizer.domains == {}


def test_a_failed_commit_is_retried_with_backoff_and_shown(env) -> None:
    synchronizer, folder, _ = env
    samples.write_folder(folder, [("a", None)], current="a")
    blocker = synchronizer.store.root / "snapshots" / "vm1.xml"
    blocker.mkdir()  # even root cannot rename a file over a folder
    delays = []
    for _ in range(3):
        outcome = synchronizer.sync(KEY)
        delays.append(synchronizer.retry_after(KEY, outcome))
    assert outcome is sync.Outcome.FAILED and delays == sorted(delays) and delays[0] < delays[-1]
    assert "failing: vm1" in synchronizer.status()
    blocker.rmdir()
    assert synchronizer.sync(KEY) is sync.Outcome.COMMITTED and "failing" not in synchronizer.status()


@pytest.mark.parametrize("same_uuid", [False, True])
def test_a_recreated_folder_sets_the_old_file_aside(env, same_uuid: bool) -> None:
    """Undefine + define within one quiet period: another uuid, or (same
    uuid) a new folder inode, sets the old file aside before the commit."""
    synchronizer, folder, _ = env
    samples.write_folder(folder, [("a", None), ("b", "a")], current="b")
    synchronizer.sync(KEY, at_start=True)
    old = synchronizer.store.path(*KEY).read_bytes()
    if same_uuid:
        folder.rename(folder.with_name("gone"))  # keeps the old inode busy, as a new one is made
        samples.write_folder(folder, [("z", None)], current="z")
    else:
        shutil.rmtree(folder)  # ext4 may hand the same inode number to the new folder
        folder.mkdir()
        (folder / "z.xml").write_bytes(samples.snapshot_xml("z", active=True, uuid="0" * 32))
    assert synchronizer.sync(KEY) is sync.Outcome.COMMITTED
    assert [p.read_bytes() for p in (synchronizer.store.root / "attic").iterdir()] == [old]
    assert sorted(synchronizer.store.read_tree(*KEY).by_name) == ["z"]


# --------------------------------------------------------------------------- writing ahead

def description_of(synchronizer: sync.Synchronizer, name: str) -> str | None:
    return mapping.element(synchronizer.store.read_tree(*KEY).by_name[name]).findtext("description")


def temps(synchronizer: sync.Synchronizer) -> list[str]:
    return [p.name for p in synchronizer.store.path(*KEY).parent.iterdir() if fsio.is_temp(p.name)]


def lock_is_free(synchronizer: sync.Synchronizer) -> bool:
    """Whether another process's Store (its own flock) gets the domain's lock at once."""
    other = store.Store(synchronizer.store.root, lock_timeout=0.05)
    try:
        with other.lock(*KEY):
            return True
    except errors.LockTimeout:
        return False


def test_a_staged_commit_is_the_commit_a_sync_makes(env) -> None:
    """Written ahead: the temp durable, the lock held, the live file untouched
    until published; then exactly what sync() commits, history and index included."""
    synchronizer, folder, _ = env
    samples.write_folder(folder, [("a", None), ("b", "a")], current="b")
    assert synchronizer.sync(KEY, at_start=True) is sync.Outcome.COMMITTED
    before = synchronizer.store.path(*KEY).read_bytes()
    plant(folder, "a.xml", samples.snapshot_xml("a", None, description="staged"))
    synchronizer.forget(KEY, "a.xml")
    staged = synchronizer.stage(KEY)
    assert staged is not None and len(temps(synchronizer)) == 1
    assert synchronizer.store.path(*KEY).read_bytes() == before and not lock_is_free(synchronizer)
    assert synchronizer.publish(staged) is sync.Outcome.COMMITTED
    assert description_of(synchronizer, "a") == "staged" and temps(synchronizer) == [] and lock_is_free(synchronizer)
    assert synchronizer.store.history.folder(*KEY).joinpath("1.xml").read_bytes() == before
    assert synchronizer.store.listing(*KEY) == ("b", [("a", None, 1700000000, "shutoff"),
                                                      ("b", "a", 1700000001, "shutoff")])
    assert synchronizer.sync(KEY) is sync.Outcome.UNCHANGED


def test_a_discarded_staged_commit_leaves_nothing(env) -> None:
    synchronizer, folder, _ = env
    samples.write_folder(folder, [("a", None)], current="a")
    synchronizer.sync(KEY, at_start=True)
    before = synchronizer.store.path(*KEY).read_bytes()
    plant(folder, "a.xml", samples.snapshot_xml("a", None, active=True, description="dropped"))
    synchronizer.forget(KEY, "a.xml")
    staged = synchronizer.stage(KEY)
    assert staged is not None
    synchronizer.discard(staged)
    assert synchronizer.store.path(*KEY).read_bytes() == before and temps(synchronizer) == []
    assert lock_is_free(synchronizer) and not synchronizer.store.history.folder(*KEY).exists()


def test_only_a_plain_change_is_staged(env) -> None:
    """Anything the sync at the deadline must judge is left to it: a first
    sync, an unchanged tree, an inconsistent folder, an emptied one, a
    folder re-created under another uuid; nothing is written and the lock is free."""
    synchronizer, folder, _ = env
    samples.write_folder(folder, [("a", None), ("b", "a")], current="b")
    assert synchronizer.stage(KEY) is None  # never synced
    assert synchronizer.sync(KEY, at_start=True) is sync.Outcome.COMMITTED
    assert synchronizer.stage(KEY) is None  # the store holds the folder's tree
    original = {path.name: path.read_bytes() for path in folder.iterdir()}
    rounds = iter(range(10))

    def restored() -> None:
        k = next(rounds)
        for path in folder.iterdir():
            path.unlink()
        for name, data in original.items():
            plant(folder, name, data)
        for name in original:
            synchronizer.forget(KEY, name)
        plant(folder, "a.xml", samples.snapshot_xml("a", None, description=f"plain {k}"))
        assert synchronizer.sync(KEY) is sync.Outcome.COMMITTED
        plant(folder, "a.xml", samples.snapshot_xml("a", None, description=f"plain {k} again"))
        synchronizer.forget(KEY, "a.xml")
        staged = synchronizer.stage(KEY)
        assert staged is not None, "a plain change was not staged"
        synchronizer.discard(staged)

    restored()
    plant(folder, "a.xml", samples.snapshot_xml("a", None, active=True))  # two current
    synchronizer.forget(KEY, "a.xml")
    assert synchronizer.stage(KEY) is None
    restored()
    for path in folder.iterdir():
        path.unlink()
    assert synchronizer.stage(KEY) is None  # emptied
    restored()
    plant(folder, "x.xml", samples.snapshot_xml("x", "b", uuid="99999999-2222-4333-8444-555555555555"))
    assert synchronizer.stage(KEY) is None  # another domain's uuid in the folder
    assert temps(synchronizer) == [] and lock_is_free(synchronizer)


def staged_change(synchronizer: sync.Synchronizer, folder: Path, description: str) -> None:
    plant(folder, "a.xml", samples.snapshot_xml("a", None, active=True, description=description))
    synchronizer.forget(KEY, "a.xml")


def test_a_publication_failing_before_the_rename_leaves_no_temp(env, monkeypatch) -> None:
    """The commit fails (FAILED, retried with backoff), its temp is removed
    and the lock released at once: a live daemon's temps are not swept."""
    synchronizer, folder, _ = env
    samples.write_folder(folder, [("a", None)], current="a")
    synchronizer.sync(KEY, at_start=True)
    before = synchronizer.store.path(*KEY).read_bytes()
    staged_change(synchronizer, folder, "fails")
    staged = synchronizer.stage(KEY)
    assert staged is not None

    def stat_fails(path: Path) -> None:
        raise errors.EnvironmentProblem(path=path, reason="Input/output error")
    monkeypatch.setattr(synchronizer.store, "_identity", stat_fails)
    assert synchronizer.publish(staged) is sync.Outcome.FAILED
    assert synchronizer.store.path(*KEY).read_bytes() == before and temps(synchronizer) == []
    assert lock_is_free(synchronizer) and synchronizer.status().endswith("failing: vm1")


def test_a_domain_locked_by_a_command_is_not_written_ahead(env) -> None:
    """Writing ahead never waits for a lock (the sync at the deadline does)."""
    synchronizer, folder, _ = env
    samples.write_folder(folder, [("a", None)], current="a")
    synchronizer.sync(KEY, at_start=True)
    staged_change(synchronizer, folder, "locked")
    synchronizer.store.lock_timeout = 5.0
    with store.Store(synchronizer.store.root).lock(*KEY):  # a command's own flock
        began = time.monotonic()
        assert synchronizer.stage(KEY) is None
        assert time.monotonic() - began < 1.0
    assert temps(synchronizer) == []


def test_a_domain_under_an_undo_guard_is_not_written_ahead(env) -> None:
    """The guard is the deadline's sync to judge (staging would lift it)."""
    synchronizer, folder, _ = env
    samples.write_folder(folder, [("a", None)], current="a")
    synchronizer.sync(KEY, at_start=True)
    synchronizer.store.history.guard(*KEY, ["a"], "undo to generation 1")
    staged_change(synchronizer, folder, "guarded")
    assert synchronizer.stage(KEY) is None
    assert synchronizer.store.history.guarded(*KEY) is not None and temps(synchronizer) == []
