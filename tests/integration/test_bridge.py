"""dump, restore and transfer between two real libvirt "hosts".

Host A is an embedded qemu driver root (tests/lab.py), host B is Debian's
running libvirtd (qemu:///system), the same domain defined on both with the
same uuid. snapstore runs as a subprocess, as an operator runs it: a process
can open one embedded root in its lifetime (DESIGN §7). Every domain defined
on qemu:///system has a unique name and is undefined, with its snapshot
metadata, at teardown.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab import Lab, LabError, View, snapstore
from lxml import etree
from support.cli import Result

from snapstore.formats import xmlsafe

SYSTEM_URI = "qemu:///system"
SYSTEM_SNAPSHOT_ROOT = Path("/var/lib/libvirt/qemu/snapshot")
BULK_PREFIX = "s é&'<"  # every bulk name holds a space, non-ASCII and markup characters
AWKWARD_NAMES = ["with space", "é快", "123", "q'uo\"te", "&<amp"]
BULK_COUNT = 300 - len(AWKWARD_NAMES)
# A small branching tree: r - a - b - c, a - x - y, r - z; current a (not a leaf).
SMALL_TREE = ["r", "a", "b", "c", ("revert", "a"), "x", "y", ("revert", "r"), "z", ("revert", "a")]
VNC = "<graphics type='vnc' port='-1' autoport='yes' passwd='secret'/>"


def unique_domain() -> str:
    return f"snapstore test-{secrets.token_hex(4)}"


# --- hosts ---------------------------------------------------------------------------------------


class SystemHost(Lab):
    """qemu:///system, shared with the machine: what a test defines is undefined at teardown."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, system_uri=SYSTEM_URI)
        self.domains: list[str] = []

    def define(self, domain: str, uuid: str | None = None, disk: bool = True) -> str:
        self.domains.append(domain)
        return super().define(domain, uuid, disk)

    def define_xml(self, xml: str) -> str:
        self.domains.append(etree.fromstring(xml.encode()).findtext("name"))
        return super().define_xml(xml)

    def clean_up(self) -> None:
        for domain in self.domains:
            try:
                self.undefine(domain)
            except LabError:
                pass  # never defined, or already gone


@pytest.fixture
def system(tmp_path: Path) -> Iterator[SystemHost]:
    host = SystemHost(tmp_path / "system")
    yield host
    host.clean_up()


@dataclasses.dataclass
class Source:
    lab: Lab
    domain: str
    view: View
    dump: Path  # a consolidated file, made by `snapstore dump -o`


def _build_small(lab: Lab, domain: str, definition: str | None = None) -> View:
    ops = [{"op": "define_xml", "xml": definition} if definition else {"op": "define", "domain": domain}]
    for step in SMALL_TREE:
        if isinstance(step, tuple):
            ops.append({"op": "revert", "domain": domain, "name": step[1]})
        else:
            ops.append({"op": "snapshot", "domain": domain, "name": step})
    *_, answer = lab.run([*ops, {"op": "view", "domain": domain}])
    return View(**answer)


def _dump_to_file(lab: Lab, domain: str, path: Path) -> Path:
    result = snapstore("dump", domain, "--connect", lab.uri, "-o", str(path))
    assert result.code == 0, result.err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return path


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> Source:
    """300 snapshots: a bulk tree forking every 50, odd names, then five awkward
    names below it; current moved back to a snapshot that has a child."""
    work = tmp_path_factory.mktemp("bulk")
    lab, domain = Lab(work / "lab-a"), unique_domain()
    lab.define(domain)
    lab.bulk_snapshots(domain, BULK_PREFIX, BULK_COUNT, branch_every=50, mode="redefine")
    lab.snapshots(domain, AWKWARD_NAMES)
    lab.revert(domain, AWKWARD_NAMES[1])
    view = lab.view(domain)
    assert len(view.names) == 300 and view.current == AWKWARD_NAMES[1]
    return Source(lab, domain, view, _dump_to_file(lab, domain, work / "dump.xml"))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Source:
    work = tmp_path_factory.mktemp("small")
    lab, domain = Lab(work / "lab-a"), unique_domain()
    view = _build_small(lab, domain)
    assert view.current == "a" and view.parents["x"] == "a" and view.parents["z"] == "r"
    # -o - : the dump on stdout, nothing else there.
    result = snapstore("dump", domain, "--connect", lab.uri, "-o", "-")
    assert result.code == 0, result.err
    assert result.out.startswith("<?xml version='1.0' encoding='UTF-8'?>\n<snapshots current=\"a\"")
    (work / "dump.xml").write_text(result.out)
    return Source(lab, domain, view, work / "dump.xml")


# --- comparing two hosts' views --------------------------------------------------------------------


def canonical(xml: str) -> bytes:
    return xmlsafe.canonical(etree.fromstring(xml.encode()))


def assert_same_view(actual: View, expected: View) -> None:
    """Names, parents, current and each snapshot's SECURE XML in C14N; not list
    order (libvirt lists siblings newest first)."""
    assert len(actual.names) == len(set(actual.names)), "a snapshot is listed twice"
    assert sorted(actual.names) == sorted(expected.names)
    assert actual.parents == expected.parents
    assert actual.current == expected.current
    position = {name: index for index, name in enumerate(actual.names)}
    for name in expected.names:
        assert canonical(actual.xml[name]) == canonical(expected.xml[name]), f"{name!r} differs"
        parent = actual.parents[name]
        assert parent is None or position[parent] < position[name], "listing is not topological"


def listed(names: list[str]) -> str:
    return ", ".join(map(repr, names))


def restore(source: Source, target: Lab, *options: str) -> Result:
    return snapstore("restore", source.domain, "--connect", target.uri, "--from", str(source.dump), *options)


# --- restore ---------------------------------------------------------------------------------------


def test_dump_holds_what_libvirt_reports(bulk: Source) -> None:
    root = etree.parse(str(bulk.dump)).getroot()
    assert (root.tag, root.get("domain"), root.get("current")) == ("snapshots", bulk.domain, AWKWARD_NAMES[1])
    dumped = {child.findtext("name"): child for child in root}
    assert sorted(dumped) == sorted(bulk.view.names)
    for name, element in dumped.items():
        assert element.findtext("parent/name") == bulk.view.parents[name]
        assert xmlsafe.canonical(element) == canonical(bulk.view.xml[name]), f"{name!r} differs"


def test_restore_300_into_another_host(bulk: Source, system: SystemHost) -> None:
    system.define_xml(bulk.lab.domain_xml(bulk.domain))

    dry = restore(bulk, system, "--dry-run")
    assert dry.code == 0, dry.err
    assert "300 to define, 0 to replace, 0 already present, would mark é快 current; nothing changed" in dry.out
    assert system.view(bulk.domain).names == []

    started = time.monotonic()
    result = restore(bulk, system)
    seconds = time.monotonic() - started
    assert result.code == 0, result.err
    print(f"\nrestore of 300 snapshots into {SYSTEM_URI}: {seconds:.2f} s (process included)")
    assert f"300 snapshots restored to {SYSTEM_URI}: 300 defined, 0 replaced, 0 already present, current é快" \
        in result.out
    progress = [line for line in result.err.splitlines() if " restore " in line]
    assert progress == [f"snapstore: {bulk.domain}: restore {n}/300 snapshots" for n in (100, 200, 300)]
    assert_same_view(system.view(bulk.domain), bulk.view)

    again = restore(bulk, system, "--json")
    assert again.code == 0, again.err
    report = json.loads(again.out)
    assert (report["complete"], report["defined"], report["failed"]) == (True, [], None)
    assert sorted(report["skipped"]) == sorted(bulk.view.names)
    assert_same_view(system.view(bulk.domain), bulk.view)


def test_killed_restore_finishes_on_rerun(bulk: Source, system: SystemHost) -> None:
    system.define_xml(bulk.lab.domain_xml(bulk.domain))
    command = [sys.executable, "-m", "snapstore", "restore", bulk.domain, "--connect", system.uri,
               "--from", str(bulk.dump)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in process.stderr:
            if "restore 100/300" in line:
                process.send_signal(signal.SIGKILL)
                break
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    partial = system.view(bulk.domain)
    assert 100 <= len(partial.names) < 300 and partial.current is None

    result = restore(bulk, system)
    assert result.code == 0, result.err
    defined = 300 - len(partial.names)
    assert f"{defined} defined, 0 replaced, {len(partial.names)} already present" in result.out
    assert_same_view(system.view(bulk.domain), bulk.view)


def test_rejected_snapshot_reports_each_fate_and_rerun_finishes(small: Source, system: SystemHost,
                                                                tmp_path: Path) -> None:
    system.define_xml(small.lab.domain_xml(small.domain))
    order = [child.findtext("name") for child in etree.parse(str(small.dump)).getroot()]
    assert order == ["r", "a", "b", "c", "x", "y", "z"]  # canonical: siblings by creation time
    broken = etree.parse(str(small.dump))
    broken.getroot()[4].find("state").text = "bogus"  # libvirt refuses it; snapstore's format does not
    broken_path = tmp_path / "broken.xml"
    broken.write(str(broken_path))

    result = snapstore("restore", small.domain, "--connect", system.uri, "--from", str(broken_path))
    assert result.code == 1
    assert result.out == ""
    prefix = f"snapstore: {small.domain}: "
    assert result.err.splitlines() == [
        f"{prefix}restore into {SYSTEM_URI} incomplete: 4 defined, 0 replaced, 0 already present, "
        "1 failed, 2 not tried",
        f"{prefix}defined: 'r', 'a', 'b', 'c'",
        f"{prefix}failed: 'x' (redefine): unsupported configuration: Invalid state 'bogus' in domain snapshot XML",
        f"{prefix}not tried: 'y', 'z'",
        f"{prefix}current snapshot 'a' not marked yet",
        f"{prefix}run the same command again to finish: snapshots already defined identically are skipped",
    ]
    partial = system.view(small.domain)
    assert sorted(partial.names) == ["a", "b", "c", "r"] and partial.current is None

    again = restore(small, system, "--json")
    assert again.code == 0, again.err
    report = json.loads(again.out)
    assert report["defined"] == ["x", "y", "z"]
    assert report["skipped"] == ["r", "a", "b", "c"]
    assert_same_view(system.view(small.domain), small.view)


def test_failure_json_names_each_fate(small: Source, system: SystemHost) -> None:
    system.define_xml(small.lab.domain_xml(small.domain))
    with squatter(small.domain, "b"):
        result = restore(small, system, "--json")
    assert result.code == 1
    report = json.loads(result.out)
    assert report["complete"] is False
    assert (report["defined"], report["not_tried"]) == (["r", "a"], ["c", "x", "y", "z"])
    assert report["failed"]["name"] == "b" and report["failed"]["action"] == "redefine"
    assert "unable to save metadata for snapshot b" in report["failed"]["message"]


def test_uuid_mismatch_is_refused_and_rewrite_uuid_restores(small: Source, system: SystemHost) -> None:
    other_uuid = system.define(small.domain, disk=False)  # same name, a uuid of its own
    source_uuid = etree.fromstring(small.view.xml["r"].encode()).findtext("domain/uuid")
    assert other_uuid != source_uuid

    refused = restore(small, system)
    assert refused.code == 1
    assert refused.err == (f"snapstore: {small.domain}: the snapshots belong to domain uuid {source_uuid}, but "
                           f"{small.domain} on {SYSTEM_URI} has uuid {other_uuid}; nothing changed (pass "
                           "--rewrite-uuid to rewrite the uuid in each snapshot)\n")
    assert system.view(small.domain).names == []

    result = restore(small, system, "--rewrite-uuid")
    assert result.code == 0, result.err
    restored = system.view(small.domain)
    rewritten = View(small.view.names, small.view.parents, small.view.current,
                     {name: xml.replace(source_uuid, other_uuid) for name, xml in small.view.xml.items()})
    assert_same_view(restored, rewritten)
    assert all(f"<uuid>{other_uuid}</uuid>" in xml for xml in restored.xml.values())

    again = restore(small, system, "--rewrite-uuid")  # idempotent after the rewrite too
    assert again.code == 0 and "0 defined, 0 replaced, 7 already present" in again.out


def test_different_snapshot_is_refused_unless_replace(small: Source, system: SystemHost) -> None:
    system.define_xml(small.lab.domain_xml(small.domain))
    changed = etree.fromstring(small.view.xml["r"].encode())
    etree.SubElement(changed, "description").text = "edited on the target"
    system.redefine(small.domain, etree.tostring(changed, encoding="unicode"))

    refused = restore(small, system)
    assert refused.code == 1
    assert refused.err == (f"snapstore: {small.domain}: 1 snapshots on {SYSTEM_URI} differ from the file: 'r'; "
                           "nothing changed (pass --replace to redefine them)\n")
    assert system.view(small.domain).names == ["r"]

    result = restore(small, system, "--replace")
    assert result.code == 0, result.err
    assert "6 defined, 1 replaced, 0 already present, current a" in result.out
    assert_same_view(system.view(small.domain), small.view)


def test_snapshots_only_on_the_target_are_left_alone(small: Source, system: SystemHost) -> None:
    system.define_xml(small.lab.domain_xml(small.domain))
    system.redefine(small.domain, small.view.xml["r"].replace("<name>r</name>", "<name>local</name>", 1))
    result = snapstore("restore", small.domain, "--connect", system.uri, "--from", "-", stdin=small.dump.read_text())
    assert result.code == 0, result.err
    assert f"1 snapshots on {SYSTEM_URI} are not in the file, left alone: 'local'" in result.err
    assert sorted(system.view(small.domain).names) == sorted([*small.view.names, "local"])


# --- transfer --------------------------------------------------------------------------------------


@pytest.fixture
def secret_source(tmp_path: Path) -> Source:
    """The small tree on a domain whose definition holds a VNC password."""
    lab, domain = Lab(tmp_path / "lab-a"), unique_domain()
    _, plain = lab.run([{"op": "define", "domain": domain}, {"op": "domain_xml", "domain": domain}])
    view = _build_small(lab, domain, plain.replace("</devices>", f"{VNC}</devices>", 1))
    assert "passwd='secret'" in view.xml["r"]  # SECURE: the lab's view asks for secrets
    return Source(lab, domain, view, tmp_path / "dump.xml")


def transfer(source: Source, target: Lab, state: Path, *options: str) -> Result:
    return snapstore("--state-dir", str(state), "transfer", source.domain, "--from", source.lab.uri,
                     "--to", target.uri, *options)


def test_transfer_moves_everything_secrets_included_and_clears_the_source(
        secret_source: Source, system: SystemHost, tmp_path: Path) -> None:
    source = secret_source
    system.define_xml(source.lab.domain_xml(source.domain))

    result = transfer(source, system, tmp_path / "state", "--delete-source-metadata", "-o", str(source.dump),
                      "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["dump"]["path"] == str(source.dump) and report["dump"]["count"] == 7
    assert report["restore"]["complete"] is True
    assert report["source_deleted"]["done"] == ["z", "y", "x", "c", "b", "a", "r"]  # children first

    emptied = source.lab.view(source.domain)  # a new libvirt process: reads the folder at start
    assert emptied.names == [] and emptied.current is None
    assert not list((source.lab.snapshot_dir / source.domain).glob("*"))
    restored = system.view(source.domain)
    assert_same_view(restored, source.view)
    assert all("passwd='secret'" in xml for xml in restored.xml.values())

    assert stat.S_IMODE(source.dump.stat().st_mode) == 0o600
    graphics = etree.parse(str(source.dump)).getroot().find("domainsnapshot/domain/devices/graphics")
    assert graphics.get("passwd") == "secret"


def test_failed_restore_keeps_source_metadata_and_dump(secret_source: Source, system: SystemHost,
                                                       tmp_path: Path) -> None:
    source, state = secret_source, tmp_path / "state"
    system.define_xml(source.lab.domain_xml(source.domain))
    with squatter(source.domain, "x"):
        failed = transfer(source, system, state, "--delete-source-metadata")
    assert failed.code == 1
    assert "failed: 'x' (redefine): internal error: unable to save metadata for snapshot x" in failed.err
    # By default the dump goes to the attic, which nothing rewrites (the daemon
    # keeps the store's own file in step with the local folder).
    [dump] = (state / "attic").glob("snapshots.snapstore%20test-*.xml")
    assert f"the source's metadata was left on {source.lab.uri}; the dump is kept in {dump}" in failed.err
    assert f"7 snapshots from {source.lab.uri}, current a: written to {dump}" in failed.out
    assert_same_view(source.lab.view(source.domain), source.view)
    dumped = etree.parse(str(dump)).getroot()
    assert sorted(child.findtext("name") for child in dumped) == sorted(source.view.names)
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600

    finished = transfer(source, system, state, "--delete-source-metadata")
    assert finished.code == 0, finished.err
    assert "3 defined, 0 replaced, 4 already present, current a" in finished.out
    assert f"metadata of 7 snapshots deleted from {source.lab.uri} (disk images untouched)" in finished.out
    assert source.lab.view(source.domain).names == []
    assert_same_view(system.view(source.domain), source.view)


class squatter:
    """A folder named like libvirt's temp file for one snapshot: libvirt cannot
    save that snapshot's metadata, a real failure in the middle of a restore."""

    def __init__(self, domain: str, snapshot: str) -> None:
        self.path = SYSTEM_SNAPSHOT_ROOT / domain / f"{snapshot}.xml.new"

    def __enter__(self) -> None:
        self.path.mkdir(parents=True)

    def __exit__(self, *_: object) -> None:
        self.path.rmdir()


# --- refusals before any change --------------------------------------------------------------------


@pytest.mark.parametrize("command, message", [
    (["transfer", "vm1", "--from", "qemu:///embed?root=/tmp/a", "--to", "qemu:///embed?root=/tmp/b"],
     "snapstore: --from and --to are both embedded roots, and libvirt opens one per process: run "
     "'snapstore dump -o FILE' and 'snapstore restore --from FILE'\n"),
    (["transfer", "vm1", "--from", SYSTEM_URI, "--to", SYSTEM_URI],
     "snapstore: --from and --to name the same libvirt\n"),
    (["transfer", "vm1", "--from", SYSTEM_URI, "--to", "qemu+unix:///system", "--delete-source-metadata"],
     f"snapstore: --from {SYSTEM_URI} and --to qemu+unix:///system reach the same libvirt: deleting the "
     "source's metadata would delete what was restored\n"),
    (["dump", "vm1", "--connect", SYSTEM_URI, "-o", "-", "--json"],
     "snapstore: -o - writes the dump on stdout; --json cannot share it\n"),
    (["dump", "no such domain", "--connect", SYSTEM_URI],
     f"snapstore: no such domain: unknown domain: not defined on {SYSTEM_URI}\n"),
])
def test_usage_and_environment_errors_exit_2(command: list[str], message: str, tmp_path: Path) -> None:
    result = snapstore("--state-dir", str(tmp_path / "state"), *command)
    assert (result.code, result.err, result.out) == (2, message, "")


def test_unreachable_libvirt_is_one_line(tmp_path: Path) -> None:
    result = snapstore("dump", "vm1", "--connect", f"qemu+unix:///system?socket={tmp_path}/none")
    assert result.code == 2
    assert result.err.startswith(f"snapstore: qemu+unix:///system?socket={tmp_path}/none: cannot connect to "
                                 "libvirt: ")
    assert len(result.err.splitlines()) == 1 and "Traceback" not in result.err


def test_restore_without_a_dump_names_what_is_missing(tmp_path: Path) -> None:
    result = snapstore("--state-dir", str(tmp_path / "state"), "restore", "vm1", "--connect", SYSTEM_URI)
    assert result.code == 2
    assert result.err == (f"snapstore: vm1: unknown domain: no consolidated file {tmp_path}/state/snapshots/"
                          "vm1.xml (dump it first, or name one with --from)\n")


def test_file_of_another_domain_is_refused(small: Source) -> None:
    result = snapstore("restore", "other", "--connect", SYSTEM_URI, "--from", str(small.dump))
    assert result.code == 1
    assert result.err == f"snapstore: other: {small.dump} holds the snapshots of domain {small.domain!r}\n"


def test_dump_of_an_emptied_domain_never_replaces_the_store(small: Source, system: SystemHost,
                                                            tmp_path: Path) -> None:
    state = tmp_path / "state"
    system.define_xml(small.lab.domain_xml(small.domain))
    assert restore(small, system).code == 0
    assert snapstore("--state-dir", str(state), "dump", small.domain, "--connect", system.uri).code == 0
    store_file = state / "snapshots" / f"{small.domain.replace(' ', '%20')}.xml"
    kept = store_file.read_bytes()
    system.delete(small.domain, "r", children=True, metadata_only=True)

    refused = snapstore("--state-dir", str(state), "dump", small.domain, "--connect", system.uri)
    assert refused.code == 1
    assert f"{SYSTEM_URI} reports no snapshots but the store holds 7; not replacing them" in refused.err
    assert store_file.read_bytes() == kept
    allowed = snapstore("--state-dir", str(state), "dump", small.domain, "--connect", system.uri, "--allow-empty")
    assert allowed.code == 0, allowed.err
    assert b"<snapshot" in store_file.read_bytes() and b"<domainsnapshot>" not in store_file.read_bytes()
