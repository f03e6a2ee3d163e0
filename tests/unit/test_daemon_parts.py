"""The daemon's parts: debounce (clock passed in), notify, logs, event mapping, the loop's write-ahead."""
from __future__ import annotations

import os
import queue
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import samples
from support.clock import Clock
from watchdog import events

from snapstore import config, errors, fsio, kinds, store
from snapstore.daemon import debounce, logs, messages, notify, service, watcher


def test_a_key_is_due_after_a_quiet_period_since_its_last_touch() -> None:
    bouncer = debounce.Debouncer(0.25)
    bouncer.touch("vm1", now=0.0)
    bouncer.touch("vm1", now=0.2)
    assert bouncer.pop_due(0.4) == [] and bouncer.next_due() == 0.45
    assert bouncer.pop_due(0.45) == ["vm1"] and len(bouncer) == 0 and bouncer.next_due() is None


def test_keys_are_independent_and_retry_never_hastens() -> None:
    bouncer = debounce.Debouncer(1.0)
    bouncer.touch("a", now=0.0)
    bouncer.touch("b", now=0.5)
    bouncer.retry("b", at=0.1)  # an earlier retry must not cut b's quiet period
    assert bouncer.pop_due(1.0) == ["a"]
    bouncer.retry("c", at=2.0)
    assert bouncer.pop_due(1.6) == ["b"] and bouncer.pop_due(2.0) == ["c"]


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert notify.Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    assert notify.Notifier({}).watchdog_interval is None
    assert notify.Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval is None
    assert notify.Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    mine = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert notify.Notifier(mine).watchdog_interval == 0.5


def test_notifications_reach_the_notify_socket(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "notify"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    notifier = notify.Notifier({})
    notifier.ready("1 domains")
    notifier.status("1 domains")  # unchanged: not sent again
    notifier.status("2 domains")
    notifier.stopping()
    received = [server.recv(4096).decode() for _ in range(3)]
    assert received == ["READY=1\nSTATUS=1 domains", "STATUS=2 domains", "STOPPING=1\nSTATUS=stopping"]


def test_journald_is_used_only_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as stream:
        info = os.fstat(stream.fileno())
        assert logs.under_journald({"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}, stream.fileno())
        assert not logs.under_journald({"JOURNAL_STREAM": "1:2"}, stream.fileno())
        assert not logs.under_journald({}, stream.fileno())


def test_log_fields_are_journald_names() -> None:
    assert logs.fields(logs.COMMITTED, "vm1", "s1") == {
        "MESSAGE_ID": logs.COMMITTED, "SNAPSTORE_DOMAIN": "vm1", "SNAPSTORE_SNAPSHOT": "s1"}
    ids = [value for name, value in vars(logs).items() if name.isupper()]
    assert len(ids) == len(set(ids)) and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def events_for(*raw: events.FileSystemEvent) -> list[messages.Message]:
    sink: queue.SimpleQueue[messages.Message] = queue.SimpleQueue()
    handler = watcher._Handler(kinds.SNAPSHOT, Path("/r"), sink)
    for event in raw:
        handler.dispatch(event)
    found = []
    while not sink.empty():
        found.append(sink.get())
    return found


def test_libvirt_writes_map_to_their_domain_and_temps_are_ignored() -> None:
    key = (kinds.SNAPSHOT, "vm1")
    assert events_for(events.FileCreatedEvent("/r/vm1/s1.xml.new"),
                      events.FileModifiedEvent("/r/vm1/s1.xml.new")) == []
    assert events_for(events.FileMovedEvent("/r/vm1/s1.xml.new", "/r/vm1/s1.xml")) == [messages.Changed(*key, "s1.xml")]
    assert events_for(events.FileDeletedEvent("/r/vm1/s1.xml")) == [messages.Changed(*key, "s1.xml")]
    assert events_for(events.DirDeletedEvent("/r/vm1")) == [messages.Changed(*key, None)]
    assert events_for(events.FileCreatedEvent("/r/vm1/notes.txt"),
                      events.DirCreatedEvent("/r/.snapstore-tmp-1-ab\x01"),
                      events.FileCreatedEvent("/r/vm1/sub/deep.xml"),
                      events.DirModifiedEvent("/r")) == []
    # Without the mark no XML can carry, the name is a domain's (libvirt accepts it).
    assert events_for(events.DirCreatedEvent("/r/.snapstore-tmp-1-ab")) == [
        messages.Changed(kinds.SNAPSHOT, ".snapstore-tmp-1-ab", None)]


@pytest.fixture
def looped(tmp_path: Path, monkeypatch) -> Iterator[tuple[service.Service, Clock, Path]]:
    """A daemon's loop state on a fake clock (its steps called one by one;
    the watcher runs, its events are not read), vm1 (a <- b, current b)
    committed at start; daemon.published counts the write-aheads published."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    settings = config.Config(libvirt_dir=tmp_path / "snap", checkpoint_dir=tmp_path / "ckpt",
                             state_dir=tmp_path / "state", quiet_period=0.25)
    folder = samples.write_folder(settings.libvirt_dir / "vm1", [("a", None), ("b", "a")], current="b")
    clock = Clock()
    daemon = service.Service(settings, reload=lambda: settings, clock=clock)
    published, real = [], daemon.sync.publish
    monkeypatch.setattr(daemon.sync, "publish", lambda staged: (published.append(staged.key), real(staged))[1])
    daemon.published = published  # type: ignore[attr-defined]
    daemon.watcher.start()
    daemon.reconcile(at_start=True)
    yield daemon, clock, folder
    daemon.watcher.stop()


KEY = (kinds.SNAPSHOT, "vm1")


def libvirt_writes(daemon: service.Service, folder: Path, description: str) -> None:
    (folder / "a.xml.new").write_bytes(samples.snapshot_xml("a", None, description=description))
    (folder / "a.xml.new").rename(folder / "a.xml")
    assert daemon._handle([messages.Changed(kinds.SNAPSHOT, "vm1", "a.xml")])


def store_temps(daemon: service.Service) -> list[str]:
    return [p.name for p in daemon.sync.store.path(*KEY).parent.iterdir() if fsio.is_temp(p.name)]


def lock_is_free(daemon: service.Service) -> bool:
    try:
        with store.Store(daemon.settings.state_dir, lock_timeout=0.05).lock(*KEY):
            return True
    except errors.LockTimeout:
        return False


def live(daemon: service.Service) -> bytes:
    return daemon.sync.store.path(*KEY).read_bytes()


def test_a_change_after_the_write_ahead_discards_it(looped) -> None:
    """The loop's own steps: the commit written ahead in the last part of the
    quiet period is published at its end, unless a change came meanwhile;
    then it is discarded (no temp, the lock free), the quiet period starts
    again and ends in a sync at its deadline; only states that were still
    the folder's at a deadline are ever committed."""
    daemon, clock, folder = looped
    libvirt_writes(daemon, folder, "first")
    due = clock.now + 0.25
    clock.now = due - daemon._lead(KEY) - 0.001
    assert not daemon._stage_due() and not daemon._staged  # not yet within the lead
    clock.now = due - daemon._lead(KEY)
    assert daemon._stage_due() and daemon._staged[KEY] is not None and len(store_temps(daemon)) == 1
    assert not lock_is_free(daemon)
    libvirt_writes(daemon, folder, "second")  # before the deadline: the staged commit is dropped
    assert KEY not in daemon._staged and store_temps(daemon) == [] and lock_is_free(daemon)
    clock.now = due
    daemon._sync_due()
    assert b"first" not in live(daemon) and b"second" not in live(daemon)  # its deadline moved
    clock.now += 0.25
    assert not daemon._stage_due() and daemon._staged == {KEY: None}  # once discarded: not written ahead
    daemon._sync_due()
    assert b"second" in live(daemon) and daemon._staged == {}
    libvirt_writes(daemon, folder, "third")
    clock.now += 0.25
    assert daemon._stage_due() and daemon._staged[KEY] is not None
    daemon._sync_due()
    assert b"third" in live(daemon) and store_temps(daemon) == [] and lock_is_free(daemon)
    assert daemon.published == [KEY], "only the third change is published from its write-ahead"
    kept = [p.read_bytes() for p in sorted(daemon.sync.store.history.folder(*KEY).glob("*.xml"))]
    assert [b"first" in data for data in kept] == [False, False], "a discarded state reached the history"


def test_a_reconcile_discards_what_was_written_ahead(looped) -> None:
    """A rescan reads every domain now: a commit written ahead is dropped
    (no temp left, the lock free) and the rescan commits the folder."""
    daemon, clock, folder = looped
    libvirt_writes(daemon, folder, "rescanned")
    clock.now += 0.25
    assert daemon._stage_due() and daemon._staged[KEY] is not None
    daemon.reconcile()
    assert daemon._staged == {} and store_temps(daemon) == [] and b"rescanned" in live(daemon)
    assert lock_is_free(daemon) and daemon.published == []


def test_a_libvirt_temp_after_the_read_sends_the_commit_back_to_the_deadline(looped) -> None:
    """libvirt's <name>.xml.new raises no event (the watcher ignores it), but
    it moves the folder: the commit written ahead is not published; the sync
    finds libvirt mid-write and waits, as it would have at the deadline."""
    daemon, clock, folder = looped
    before = live(daemon)
    libvirt_writes(daemon, folder, "ahead")
    clock.now += 0.25
    assert daemon._stage_due() and daemon._staged[KEY] is not None
    (folder / "b.xml.new").write_bytes(samples.snapshot_xml("b", "a", active=True, description="in flight"))
    daemon._sync_due()
    assert live(daemon) == before and store_temps(daemon) == [] and lock_is_free(daemon)
    assert daemon.sync.domains[KEY].unsettled_since is not None and daemon.published == [KEY]
