"""A writer that commits generation after generation until it is SIGKILLed.

    crashwriter.py zygote            read jobs on stdin, fork one writer per job
    crashwriter.py MODE BASE LOG N   one writer in this process (for debugging)

MODE is how a generation reaches the disk, through snapstore's own code:
``store`` (Store.replace), ``cli`` (the legacy folder is rewritten, then
``snapstore consolidate`` runs through cli.main) or ``expand`` (the store
takes generation n, then ``snapstore expand --into BASE/out --prune``).
Each commit is framed in LOG: ``B n`` before it starts, ``E n`` once it
returned, so a checker knows the two generations the disk may hold.

The zygote imports everything once and forks, so a kill costs a fork
(~5 ms), not an interpreter start (~200 ms): 1000 kills fit in minutes.
A job line is ``MODE BASE LOG N``; the zygote answers with the child's pid.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: samples
sys.path.insert(0, str(Path(__file__).resolve().parent))

import campaign  # noqa: E402

from snapstore import cli, store  # noqa: E402
from snapstore.formats import consolidated, legacy, xmlsafe  # noqa: E402,F401  (loaded before forking)


def commit(mode: str, base: Path, n: int) -> None:
    if mode == "store":
        state = store.Store(base / "state")
        state.replace(campaign.generation_tree(n))
        return
    if mode == "cli":
        campaign.write_legacy(base / "libvirt" / "vm1", campaign.generation_files(n))
        argv = ["consolidate", "vm1"]
    else:
        store.Store(base / "state").replace(campaign.generation_tree(n))
        argv = ["expand", "vm1", "--into", str(base / "out"), "--prune"]
    code = cli.main(["-q", "--config", str(base / "empty.toml"), "--libvirt-dir", str(base / "libvirt"),
                     "--state-dir", str(base / "state"), *argv])
    if code != 0:
        raise SystemExit(f"crashwriter: {argv[0]} of generation {n} exited {code}")


def write_forever(mode: str, base: Path, log: Path, first: int) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    if mode != "cli":
        store.Store(base / "state").prepare()
    os.write(fd, b"R\n")
    n = first
    while True:
        os.write(fd, f"B {n}\n".encode())
        commit(mode, base, n)
        os.write(fd, f"E {n}\n".encode())
        n += 1


def zygote() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped as they die
    for line in sys.stdin:
        mode, base, log, first = line.split()
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                write_forever(mode, Path(base), Path(log), int(first))
            except BaseException as e:  # reported in the log, where the checker looks
                with open(log, "a") as out:
                    out.write(f"X {type(e).__name__}: {e}\n")
            finally:
                os._exit(3)
        print(pid, flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["zygote"]:
        zygote()
    else:
        write_forever(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
