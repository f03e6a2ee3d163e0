"""check's shortcut over a store file it need not parse: taken only for the
bytes snapstore committed from the very files the folder holds."""
from __future__ import annotations

import json
import os

import pytest
from support import cli as support_cli
from support import folders

from snapstore import codes


def test_a_store_file_changed_behind_its_index_is_parsed_and_compared(
        env: folders.Env, capsys: pytest.CaptureFixture[str]) -> None:
    """check trusts a store file it need not parse only when its bytes are the
    ones the index recorded (SHA-256): an edit that keeps size and mtime (so
    the index still matches the file's identity) is found all the same."""
    clean = support_cli.in_process(capsys, env.argv("check", "--no-disks", "--json"))
    assert clean.code == 0, clean
    info = env.store_file.stat()
    data = env.store_file.read_bytes()
    assert data.count(b"<state>shutoff</state>") == 3
    with open(env.store_file, "r+b") as handle:  # in place: same inode, same size
        handle.write(data.replace(b"<state>shutoff</state>", b"<state>running</state>", 1))
    os.utime(env.store_file, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert [env.store_file.stat().st_ino, env.store_file.stat().st_size, env.store_file.stat().st_mtime_ns] == \
        [info.st_ino, info.st_size, info.st_mtime_ns]
    found = support_cli.in_process(capsys, env.argv("check", "--no-disks", "--json"))
    assert found.code == 3 and found.codes == {codes.CONTENT_DIFFERS}, found


def test_a_generation_edited_in_place_is_read_and_found(env: folders.Env, capsys: pytest.CaptureFixture[str]) -> None:
    """check reads a generation again only when its size or mtime moved from
    what its record noted: an edit of the same size moves the mtime."""
    (env.folder / "s3.xml").write_bytes((env.folder / "s3.xml").read_bytes().replace(b"shutoff", b"running"))
    assert support_cli.in_process(capsys, env.argv("consolidate", "vm1")).code == 0
    kept = env.state / "history/snapshots/vm1/1.xml"
    record = json.loads((env.state / "history/snapshots/vm1/1.json").read_text())
    assert record["mtime_ns"] == kept.stat().st_mtime_ns and record["size"] == kept.stat().st_size
    clean = support_cli.in_process(capsys, env.argv("check", "--no-disks", "--json"))
    assert clean.code == 0, clean
    data = kept.read_bytes()
    with open(kept, "r+b") as handle:  # same size, same inode
        handle.write(data.replace(b"<name>s1</name>", b"<name>s9</name>", 1))
    found = support_cli.in_process(capsys, env.argv("check", "--no-disks", "--json"))
    assert found.code == 1 and found.codes == {codes.HISTORY_DAMAGED}, found
