"""check's shortcut over a store file it need not parse: taken only for the
bytes snapstore committed from the very files the folder holds."""
from __future__ import annotations

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
