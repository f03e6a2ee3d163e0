"""The fixed corpus of hostile input (issue 8 §4), through the real binary and the daemon.

Each case damages one thing: a file in a libvirt folder, the state folder,
or libvirt's root. ``consolidate`` (and ``list``/``expand`` for the state
folder) must refuse with clear lines, or accept what is legitimate, within
a time bound, never blocking, never following a link, never reaching the
network, never reading a 100 MB file; the committed file stays
byte-identical. One daemon then meets every folder case at once and must
stay up, commit none of the damaged folders and say which are degraded.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import campaign
import pytest
import straced
from campaign import Sandbox
from daemonproc import Daemon, wait_for, write_config

from snapstore import cli, fsio, legacydir
from snapstore.formats import mapping

SECRET = "SNAPSTORE-CORPUS-SECRET-4711"
TIME_BOUND = 20.0  # seconds: a refusal is quick; a blow-up would not be
GOOD = campaign.samples.snapshot_xml


def _doctype(entities: str, reference: str) -> bytes:
    body = GOOD("PLACEHOLDER", "s1").decode().replace("PLACEHOLDER", reference)
    return f'<?xml version="1.0"?>\n<!DOCTYPE domainsnapshot [{entities}]>\n{body}'.encode()


def _with_name(name: bytes) -> bytes:
    return GOOD("PLACEHOLDER", "s1").replace(b"PLACEHOLDER", name)


def _deep(depth: int) -> bytes:
    return GOOD("s2", "s1", extra="  " + "<n>" * depth + "x" + "</n>" * depth + "\n")


def _many_attributes() -> bytes:
    attributes = " ".join(f"a{i}='{i}'" for i in range(60_000))
    return GOOD("s2", "s1", extra=f"  <future {attributes}/>\n")


# name -> (bytes of <folder>/s2.xml, or a maker of an entry, expected: "refused" | "accepted", needles)
FILES: dict[str, tuple[bytes | Callable[[Path], None], str, tuple[str, ...]]] = {
    "xxe-file": (_doctype('<!ENTITY x SYSTEM "file://SECRET_FILE">', "&x;"), "refused", ("DOCTYPE",)),
    "xxe-network": (_doctype('<!ENTITY x SYSTEM "http://127.0.0.1:9/x">', "&x;"), "refused", ("DOCTYPE",)),
    "xxe-parameter": (_doctype('<!ENTITY % p SYSTEM "file://SECRET_FILE"> %p;', "s2"), "refused", ()),
    "billion-laughs": (_doctype('<!ENTITY a "lol">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9)), "&j;"), "refused", ()),
    "quadratic-blowup": (_doctype(f'<!ENTITY a "{"A" * 50_000}">', "&a;" * 2_000), "refused", ()),
    "many-attributes": (_many_attributes(), "accepted", ()),
    "deep-10000": (_deep(10_000), "refused", ("not well-formed",)),
    "deep-200": (_deep(200), "accepted", ()),
    # libxml2 reads 256 levels; in a consolidated file a moment sits one level lower (issue 11 §6).
    "deep-254": (_deep(254), "accepted", ()),
    "deep-255": (_deep(255), "refused", ("254 levels", "SS102")),
    # libvirt reads string(name): the comment splits nothing (issue 11 §11).
    "name-split-by-comment": (_with_name(b"s<!-- -->2"), "accepted", ()),
    "invalid-utf8": (_with_name(b"s2\xc3\x28\xff"), "refused", ("not well-formed",)),
    "nul-bytes": (_with_name(b"s2\x00x"), "refused", ("not well-formed",)),
    "char-ref-control": (_with_name(b"s2&#1;"), "refused", ("not well-formed",)),
    "utf16-document": (GOOD("s2", "s1").replace(b"<!--", b"<?xml version='1.0' encoding='UTF-16'?><!--", 1)
                       .decode().encode("utf-16"), "accepted", ()),
    "100MB-file": (lambda path: _sparse_xml(path, 100 << 20), "refused", ("over the 1048576-byte limit",)),
    "symlink-loop": (lambda path: path.symlink_to(path.name), "refused", ("symlink",)),
    "symlink-to-secret": (lambda path: path.symlink_to(path.parents[2] / "secret"), "refused", ("symlink",)),
    "fifo": (lambda path: os.mkfifo(path, 0o600), "refused", ("FIFO",)),
    "socket": (lambda path: _bind_socket(path), "refused", ("socket",)),
    "directory": (lambda path: path.mkdir(), "refused", ("directory",)),
    "char-device": (lambda path: os.mknod(path, 0o600 | 0o020000, os.makedev(1, 3)), "refused", ("character device",)),
}


def _sparse_xml(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        out.write(GOOD("s2", "s1"))
        out.truncate(size)


_sockets: list[socket.socket] = []


def _bind_socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    _sockets.append(sock)


def plant_case(sandbox: Sandbox, domain: str, case: str) -> Path:
    (sandbox.base / "secret").write_text(SECRET)
    folder = campaign.write_legacy(sandbox.libvirt / domain, {"s1.xml": GOOD("s1", None, True)})
    content = FILES[case][0]
    target = folder / "s2.xml"
    if callable(content):
        content(target)
    else:
        target.write_bytes(content.replace(b"SECRET_FILE", str(sandbox.base / "secret").encode()))
    return target


@pytest.fixture
def committed(sandbox: Sandbox) -> bytes:
    campaign.write_legacy(sandbox.libvirt / "vm1", {"s1.xml": GOOD("s1", None, True)})
    assert cli.main(["-q", *sandbox.argv("consolidate", "vm1")]) == 0
    return sandbox.store_file().read_bytes()


@pytest.mark.parametrize("case", list(FILES))
def test_hostile_file_in_a_libvirt_folder(case: str, sandbox: Sandbox, committed: bytes, tmp_path: Path) -> None:
    target = plant_case(sandbox, "vm1", case)
    began = time.monotonic()
    result, calls = straced.trace(sandbox.argv("consolidate", "vm1"), tmp_path / "trace.log",
                                  ("socket", "connect", "read", "openat"))
    took = time.monotonic() - began
    campaign.count("inputs tried (fixed corpus)")
    assert took < TIME_BOUND, f"{case}: {took:.1f} s"
    assert SECRET not in result.out + result.err
    assert not [c for c in calls if c.name in ("socket", "connect")], f"{case}: the network was reached"
    assert not [c for c in calls if c.name == "openat" and "secret" in c.args], f"{case}: the secret was opened"
    if case == "100MB-file":
        assert not [c for c in calls if c.name == "read" and str(target) in c.args], "the 100 MB file was read"
    expected, needles = FILES[case][1:]
    if expected == "accepted":
        assert result.code == 0, f"{case}: a legitimate file was refused\n{result}"
        assert campaign.parse_store(sandbox.store_file().read_bytes()).by_name.keys() == {"s1", "s2"}
    else:
        campaign.assert_clear_error(result, "s2.xml", *needles, codes=(1,))
        assert sandbox.store_file().read_bytes() == committed, f"data: {case}: the store changed"


# --------------------------------------------------------------------------- the state folder


def _store_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path, 0o600)


def _store_huge(path: Path) -> None:
    with open(path, "wb") as out:
        out.write(b"<?xml version='1.0'?><snapshots domain='vm1' format='1'><domainsnapshot><name>a</name>"
                  b"<description>")
        for _ in range(100):
            out.write(b"A" * (1 << 20))
        out.write(b"</description></domainsnapshot></snapshots>")


def _replace_with(kind: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        path.unlink() if path.is_file() else path.rmdir()
        {"socket": _bind_socket, "loop": lambda p: p.symlink_to(p.name), "dir": Path.mkdir,
         "fifo": lambda p: os.mkfifo(p, 0o600)}[kind](path)
    return damage


# name -> (path in the state folder, damage, commands that must fail clearly or work, "ok" when they must work)
STATE = {
    "store-fifo": ("snapshots/vm1.xml", _store_fifo, ("list", "expand"), "fail"),
    "store-socket": ("snapshots/vm1.xml", _replace_with("socket"), ("list", "expand"), "fail"),
    "store-symlink-loop": ("snapshots/vm1.xml", _replace_with("loop"), ("list", "expand"), "fail"),
    "store-100MB": ("snapshots/vm1.xml", _store_huge, ("list", "expand"), "fail"),
    "snapshots-folder-loop": ("snapshots", lambda p: (os.rename(p, p.with_name("moved")), p.symlink_to(p.name)),
                              ("list", "consolidate"), "fail"),
    "lock-is-a-folder": ("locks/snapshots.vm1.lock", _replace_with("dir"), ("consolidate",), "fail"),
    "lock-is-a-fifo": ("locks/snapshots.vm1.lock", _replace_with("fifo"), ("consolidate",), "fail"),
    "index-is-a-fifo": ("index/snapshots.vm1.json", _replace_with("fifo"), ("list",), "ok"),
    "index-is-garbage": ("index/snapshots.vm1.json", lambda p: p.write_bytes(b"\xff{[" * 1000), ("list",), "ok"),
    "fifo-in-attic": ("attic/x.xml", _replace_with("fifo"), ("consolidate",), "ok"),
}
COMMANDS = {"list": ("list", "vm1"), "expand": ("expand", "vm1", "--into", "OUT"),
            "consolidate": ("consolidate", "vm1")}


@pytest.mark.parametrize("case", list(STATE))
def test_hostile_entry_in_the_state_folder(case: str, sandbox: Sandbox, committed: bytes) -> None:
    relative, damage, commands, outcome = STATE[case]
    campaign.write_legacy(sandbox.libvirt / "vm1", {"s1.xml": GOOD("s1", None), "s2.xml": GOOD("s2", "s1", True)})
    assert cli.main(["-q", *sandbox.argv("list", "vm1")]) == 0  # writes the index
    path = sandbox.state / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() and not path.is_symlink():
        path.touch()
    damage(path)
    for command in commands:
        argv = [str(sandbox.base / "out") if arg == "OUT" else arg for arg in COMMANDS[command]]
        try:
            result = campaign.run_script(sandbox.argv(*argv), timeout=5)
        except AssertionError as e:
            raise AssertionError(f"BUG: {case}: '{command}' blocked: {e} (store._flocked opens the lock file "
                                 "without O_NONBLOCK, and open() of a FIFO waits for a writer)") from None
        campaign.count("inputs tried (fixed corpus)")
        if outcome == "ok":
            assert result.code == 0 and "Traceback" not in result.err, f"{case}: {command}\n{result}"
        else:
            campaign.assert_clear_error(result)


# --------------------------------------------------------------------------- libvirt's root


ROOT_ENTRIES = {"fifo": lambda p: os.mkfifo(p), "socket": _bind_socket, "file": lambda p: p.write_text("x"),
                "symlink-loop": lambda p: p.symlink_to(p.name), "symlink-to-folder": lambda p: p.symlink_to("vm1")}


def test_hostile_entries_in_libvirt_root(sandbox: Sandbox, committed: bytes) -> None:
    for name, make in ROOT_ENTRIES.items():
        make(sandbox.libvirt / f"odd-{name}")
    result = campaign.run_script(sandbox.argv("consolidate", "--all"), timeout=TIME_BOUND)
    campaign.count("inputs tried (fixed corpus)", len(ROOT_ENTRIES))
    assert result.code == 0 and "vm1" in result.out, result
    for name in ROOT_ENTRIES:
        single = campaign.run_script(sandbox.argv("consolidate", f"odd-{name}"), timeout=TIME_BOUND)
        campaign.assert_clear_error(single)
    assert sandbox.store_file().read_bytes() == committed


def test_domain_folder_named_with_control_characters(sandbox: Sandbox, committed: bytes, tmp_path: Path) -> None:
    """A folder in libvirt's root whose name XML cannot hold (a control character, bytes that are
    not UTF-8): one domain refused with a clear line; the others go on; the daemon stays up."""
    for name in ("bad\x01name", os.fsdecode(b"bad\xffutf8")):
        campaign.write_legacy(sandbox.libvirt / name, {"s1.xml": GOOD("s1", None, True)})
    campaign.write_legacy(sandbox.libvirt / "vm1", {"s1.xml": GOOD("s1", None), "s2.xml": GOOD("s2", "s1", True)})
    result = campaign.run_script(sandbox.argv("consolidate", "--all"))
    campaign.count("inputs tried (fixed corpus)", 2)
    config = write_config(tmp_path / "daemon.toml", quiet_period=0.05)
    daemon = Daemon(sandbox.libvirt, sandbox.checkpoints, sandbox.state, config, tmp_path / "daemon.stderr")
    try:
        wait_for(lambda: not daemon.alive() or daemon.notify.with_key("READY"), 15, daemon.describe)
        survived, story = daemon.alive(), daemon.describe()
    finally:
        daemon.close()
    problems = campaign.error_problems(result) + ([] if "vm1" in result.out else ["vm1 was not consolidated"])
    problems += [] if survived else [f"the daemon died at start: {story[-400:]}"]
    assert not problems, (
        "BUG: a domain folder named with a control character or non-UTF-8 bytes crashes the commit: "
        "formats/consolidated.format_consolidated puts the name in the domain attribute, lxml raises "
        "ValueError/UnicodeEncodeError, which neither cli/consolidate (_DOMAIN_ERRORS) nor "
        f"daemon/sync.Synchronizer.sync catch: {problems}\n{result}")


def test_domain_named_like_a_snapstore_temp(sandbox: Sandbox, committed: bytes) -> None:
    """libvirt accepts a domain named ".snapstore-tmp-1-x": snapstore's own temps in libvirt's
    root carry a mark no domain name can hold, so that folder is a domain, never swept (issue 11 §5)."""
    name = f"{fsio.TEMP_PREFIX}999999999-x"
    folder = campaign.write_legacy(sandbox.libvirt / name, {"t1.xml": GOOD("t1", None, True)})
    before = (folder / "t1.xml").read_bytes()
    runs = [sandbox.argv("consolidate", "--all"), sandbox.argv("expand", "vm1", "--force", "--prune"),
            sandbox.argv("check", "--repair", "--no-disks")]
    for argv in runs:
        result = campaign.run_script(argv, timeout=TIME_BOUND)
        assert result.code in (0, 1), result
        assert (folder / "t1.xml").read_bytes() == before, f"{argv[-3:]} removed a domain's folder"
    campaign.count("inputs tried (fixed corpus)")
    assert campaign.parse_store(sandbox.store_file().parent.joinpath("%2Esnapstore-tmp-999999999-x.xml")
                                .read_bytes()).current == "t1"


def test_long_non_ascii_domain_name(sandbox: Sandbox) -> None:
    """60 Cyrillic letters are 120 bytes, a valid folder name; escaped (%D0%B4 per letter) the store,
    lock and index names are over 360 bytes, past NAME_MAX (255)."""
    domain = "д" * 60
    campaign.write_legacy(sandbox.libvirt / domain, {"s1.xml": GOOD("s1", None, True)})
    result = campaign.run_script(sandbox.argv("consolidate", domain))
    campaign.count("inputs tried (fixed corpus)")
    if result.code:
        campaign.assert_clear_error(result)
    assert result.code == 0 and sandbox.store_file(domain).exists(), (
        "BUG: a domain whose name is 120 bytes of UTF-8 cannot be stored at all: naming.escape_domain "
        "turns each non-ASCII byte into 3 characters, so <state>/locks/snapshots.<escaped>.lock (and the "
        "store and index names) exceed NAME_MAX: 'File name too long'; the daemon retries it forever\n"
        f"{result}")


# --------------------------------------------------------------------------- permission denied


NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--inh-caps=-all", "--"]


@pytest.mark.parametrize("where, mode, needles", [
    ("libvirt/vm1/s1.xml", 0o000, ("s1.xml", "Permission denied")),
    ("libvirt/vm1", 0o000, ("Permission denied",)),
    ("state/snapshots", 0o500, ("Permission denied",)),
    ("state/locks", 0o000, ("Permission denied",)),
], ids=["legacy-file", "legacy-folder", "store-folder-read-only", "locks-folder"])
def test_permission_denied(where: str, mode: int, needles: tuple[str, ...], sandbox: Sandbox, committed: bytes) -> None:
    """As root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, modes bind as for anyone."""
    (sandbox.libvirt / "vm1" / "s2.xml").write_bytes(GOOD("s2", "s1", True))
    (sandbox.libvirt / "vm1" / "s1.xml").write_bytes(GOOD("s1", None))
    os.chmod(sandbox.base / where, mode)
    try:
        result = campaign.run_script(sandbox.argv("consolidate", "vm1"), prefix=NO_DAC)
    finally:
        os.chmod(sandbox.base / where, 0o700)
    campaign.count("inputs tried (fixed corpus)")
    campaign.assert_clear_error(result, *needles)
    assert sandbox.store_file().read_bytes() == committed
    assert campaign.temps_under(sandbox.state) == []


# --------------------------------------------------------------------------- files that change while read


def test_file_removed_between_listing_and_reading(sandbox: Sandbox, committed: bytes, monkeypatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """libvirt deletes a snapshot while consolidate reads the folder: the folder as it is then
    is committed, or the run is refused with clear lines; never an internal error."""
    folder = campaign.write_legacy(sandbox.libvirt / "vm1", {"s1.xml": GOOD("s1", None, True),
                                                             "s2.xml": GOOD("s2", "s1")})
    real = legacydir.os.listdir

    def listdir_then_remove(fd):
        names = real(fd)
        (folder / "s2.xml").unlink(missing_ok=True)
        return names
    monkeypatch.setattr(legacydir.os, "listdir", listdir_then_remove)
    code = cli.main(sandbox.argv("consolidate", "vm1"))
    err = capsys.readouterr().err
    campaign.count("inputs tried (fixed corpus)")
    if code == 0:
        assert sandbox.store_file().read_bytes() == campaign.consolidated_of(folder, "vm1"), "data: not the folder"
        return
    assert code in (1, 2) and "internal error" not in err, (
        "BUG: a snapshot file removed while consolidate reads the folder (libvirt deleting a snapshot) "
        f"ends in an internal error (legacydir.sources() or read_folder): {err.strip()!r}")
    assert sandbox.store_file().read_bytes() == committed, "data: the store changed although the run failed"


def test_file_replaced_while_being_read(sandbox: Sandbox, committed: bytes, monkeypatch) -> None:
    """Opened, then replaced by a rename (as libvirt writes): the open file is read whole, the
    change is seen (the folder's entries differ after the read) and the folder read again."""
    folder = campaign.write_legacy(sandbox.libvirt / "vm1", {"s1.xml": GOOD("s1", None, True)})
    real = fsio._read_up_to
    replaced = []

    def replace_once_then_read(fd, *args):
        if not replaced and os.readlink(f"/proc/self/fd/{fd}") == str(folder / "s1.xml"):
            campaign.plant(folder, "s1.xml", GOOD("s1", None, True, description="the new version"))
            replaced.append(True)
        return real(fd, *args)
    monkeypatch.setattr(fsio, "_read_up_to", replace_once_then_read)
    assert cli.main(["-q", *sandbox.argv("consolidate", "vm1")]) == 0
    campaign.count("inputs tried (fixed corpus)")
    held = campaign.parse_store(sandbox.store_file().read_bytes()).by_name["s1"]
    assert mapping.element(held).findtext("description") == "the new version", "the read overlapping a change was kept"


def test_file_replaced_at_every_read(sandbox: Sandbox, committed: bytes, monkeypatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A folder that changes during every read is never settled: one clear line, exit 1, old file kept."""
    folder = campaign.write_legacy(sandbox.libvirt / "vm1", {"s1.xml": GOOD("s1", None, True)})
    real = fsio._read_up_to

    def replace_then_read(fd, *args):
        if os.readlink(f"/proc/self/fd/{fd}") == str(folder / "s1.xml"):
            campaign.plant(folder, "s1.xml", GOOD("s1", None, True, description="the new version"))
        return real(fd, *args)
    monkeypatch.setattr(fsio, "_read_up_to", replace_then_read)
    assert cli.main(["-q", *sandbox.argv("consolidate", "vm1")]) == 1
    campaign.count("inputs tried (fixed corpus)")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "changed while it was read" in lines[0] and "vm1" in lines[0], lines
    assert sandbox.store_file().read_bytes() == committed


def test_files_flipping_while_consolidate_runs(sandbox: Sandbox, committed: bytes) -> None:
    """A thread replaces, truncates, removes and re-creates files as fast as it can while the real
    binary consolidates again and again: every run succeeds or fails with clear lines."""
    folder, stop = sandbox.libvirt / "vm1", threading.Event()
    versions = [GOOD("s2", "s1", True), GOOD("s2", "s1", True)[:100], b"", GOOD("s2", "s1", True,
                                                                                description="x" * 5000)]

    def flip() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            target = folder / "s2.xml"
            action = i % 4
            if action == 0:
                target.unlink(missing_ok=True)
            elif action == 1:
                campaign.plant(folder, "s2.xml", versions[i % len(versions)])
            elif action == 2 and target.exists():
                os.truncate(target, 10)
            else:
                target.write_bytes(versions[(i // 4) % len(versions)])
    thread = threading.Thread(target=flip, daemon=True)
    thread.start()
    unclear: dict[str, str] = {}
    try:
        deadline = time.monotonic() + campaign.budget(3, 30)
        while time.monotonic() < deadline:
            result = campaign.run_script(sandbox.argv("consolidate", "vm1"))
            campaign.count("inputs tried (files flipping under consolidate)")
            for problem in campaign.error_problems(result) if result.code else []:
                unclear.setdefault(problem, result.err.strip())
            campaign.parse_store(sandbox.store_file().read_bytes())
    finally:
        stop.set()
        thread.join()
    assert not unclear, f"BUG: consolidate racing with file changes failed unclearly: {unclear}"


# --------------------------------------------------------------------------- the daemon meets it all


def test_daemon_survives_the_corpus(sandbox: Sandbox, tmp_path: Path) -> None:
    config = write_config(tmp_path / "daemon.toml", quiet_period=0.05, settle_timeout=0.5)
    daemon = Daemon(sandbox.libvirt, sandbox.checkpoints, sandbox.state, config, tmp_path / "daemon.stderr")
    try:
        daemon.wait_ready()
        refused = [case for case in FILES if FILES[case][1] == "refused"]
        for case in FILES:
            plant_case(sandbox, f"hostile-{case}", case)
        for name, make in ROOT_ENTRIES.items():
            make(sandbox.libvirt / f"odd-{name}")
        campaign.count("inputs tried (fixed corpus, daemon)", len(FILES) + len(ROOT_ENTRIES))
        status = daemon.wait_status(lambda s: all(f"hostile-{case}" in s for case in refused), 30,
                                    "every refused case degraded")
        assert daemon.alive() and "Traceback" not in daemon.stderr(), daemon.describe()
        for case in FILES:
            path = sandbox.store_file(f"hostile-{case}")
            if FILES[case][1] == "refused":
                assert not path.exists(), f"{case}: a damaged folder was committed"
            else:
                wait_for(path.exists, 5, f"{case}: not committed")
        assert "odd-" not in status, status
        assert daemon.stop() == 0, daemon.describe()
    finally:
        daemon.close()
