"""File primitives every reader and writer goes through.

Writes: a new file is created with O_EXCL|O_NOFOLLOW, mode 0600, fully
written and fsynced; a replacement goes through a temp file in the same
folder, rename, then an fsync of the folder (borgbackup's SaveFile pattern;
libvirt's virFileRewrite skips the folder fsync). A failed fsync is never
retried on the same file: the page cache may already have dropped the data.

Reads never follow a symlink and never block on a FIFO.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

from snapstore import codes, errors, hostenv

TEMP_PREFIX = ".snapstore-tmp-"
# A temp in a folder snapstore does not own (a libvirt snapshot root, where
# every entry is a domain folder) ends with U+0001: XML cannot carry it, so
# no libvirt domain can be named so, and a sweep can never take a domain's
# folder for a temp (libvirt accepts a domain named ".snapstore-tmp-1-x").
FOREIGN_MARK = "\x01"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_RENAME_EXCHANGE = 2


def reason(error: OSError) -> str:
    return os.strerror(error.errno) if error.errno else str(error)


@contextlib.contextmanager
def opened_dir(path: Path) -> Iterator[int]:
    """An fd on a folder that is not a symlink; EnvironmentProblem otherwise."""
    with opened_dir_if_present(path) as fd:
        if fd is None:
            raise errors.EnvironmentProblem(path=path, reason="no such folder")
        yield fd


@contextlib.contextmanager
def opened_dir_if_present(path: Path) -> Iterator[int | None]:
    """opened_dir, or None when there is no such folder."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        yield None
        return
    except OSError as e:
        raise errors.EnvironmentProblem(path=path, reason=_dir_open_problem(path, e)) from e
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def subfolder(parent_fd: int, name: str) -> Iterator[int]:
    """An fd on ``name`` under ``parent_fd``, created 0700 when missing; never a symlink."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as e:
        link = e.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(
            os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode)
        raise errors.EnvironmentProblem(path=name, reason="is a symlink, not followed" if link else reason(e)) from e
    try:
        yield fd
    finally:
        os.close(fd)


def _dir_open_problem(path: Path, error: OSError) -> str:
    # O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR (ELOOP without O_DIRECTORY).
    if error.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
        return "is a symlink, not followed"
    return reason(error)


def temp_name(foreign: bool = False) -> str:
    """Unique temp name carrying our pid, so a sweep can tell stale from
    in-flight; ``foreign``: for a folder snapstore does not own."""
    return f"{TEMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}{FOREIGN_MARK if foreign else ''}"


def is_temp(name: str, foreign: bool = False) -> bool:
    """A name temp_name() gives (in a foreign folder: only with the mark)."""
    return name.startswith(TEMP_PREFIX) and (name.endswith(FOREIGN_MARK) or not foreign)


def is_stale_temp(name: str, foreign: bool = False) -> bool:
    if not is_temp(name, foreign):
        return False
    pid = name[len(TEMP_PREFIX):].split("-", 1)[0]
    return not (pid.isdigit() and hostenv.pid_alive(int(pid)))


def read_regular(dir_fd: int, name: str, limit: int, display: Path | str) -> bytes:
    """Read one regular file, at most ``limit`` bytes, or raise FormatError."""
    return read_identified(dir_fd, name, limit, display)[0]


def read_identified(dir_fd: int, name: str, limit: int, display: Path | str) -> tuple[bytes, list[int]]:
    """read_regular, and the file's [device, inode, size, mtime_ns] as read."""
    with _opened_regular(dir_fd, name, limit, display) as (fd, info):
        try:
            data = _read_up_to(fd, info.st_size, limit + 1)
        except OSError as e:
            raise errors.FormatError(path=display, reason=f"cannot be read: {reason(e)}", code=codes.UNREADABLE) from e
    if len(data) > limit:
        raise errors.FormatError(path=display, reason=f"grew over the {limit}-byte limit while being read",
                                 code=codes.OVER_LIBVIRT_LIMIT)
    return data, identity(info)


def identity(info: os.stat_result) -> list[int]:
    """What tells one version of a file from another: libvirt replaces a file
    by a rename (a new inode); an edit in place changes size or mtime."""
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns]


def holds(dir_fd: int, name: str, data: bytes, limit: int, display: Path | str) -> bool:
    """True when the regular file ``name`` holds exactly ``data``; compared a
    chunk at a time, so a large file is never held in memory twice."""
    with _opened_regular(dir_fd, name, limit, display) as (fd, info):
        if info.st_size != len(data):
            return False
        view = memoryview(data)
        try:
            for offset in range(0, len(data), 1 << 20):
                if os.read(fd, 1 << 20) != view[offset:offset + (1 << 20)]:
                    return False
            return os.read(fd, 1) == b""
        except OSError as e:
            raise errors.FormatError(path=display, reason=f"cannot be read: {reason(e)}", code=codes.UNREADABLE) from e


@contextlib.contextmanager
def _opened_regular(dir_fd: int, name: str, limit: int, display: Path | str) -> Iterator[tuple[int, os.stat_result]]:
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        raise _open_error(dir_fd, name, display, e) from e
    try:
        try:
            info = os.fstat(fd)
        except OSError as e:
            raise errors.FormatError(path=display, reason=f"cannot be read: {reason(e)}", code=codes.UNREADABLE) from e
        if not stat.S_ISREG(info.st_mode):
            raise errors.FormatError(path=display, reason=f"is a {_type_name(info.st_mode)}, not a regular file",
                                     code=codes.NOT_REGULAR)
        if info.st_size > limit:
            raise errors.FormatError(path=display, reason=f"is {info.st_size} bytes, over the {limit}-byte limit",
                                     code=codes.OVER_LIBVIRT_LIMIT)
        yield fd, info
    finally:
        os.close(fd)


def _open_error(dir_fd: int, name: str, display: Path | str, error: OSError) -> errors.FormatError:
    if error.errno == errno.ELOOP:
        return errors.FormatError(path=display, reason="is a symlink, not followed", code=codes.SYMLINK)
    if error.errno == errno.ENXIO:  # a socket cannot even be opened
        try:
            if stat.S_ISSOCK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                return errors.FormatError(path=display, reason="is a socket, not a regular file",
                                          code=codes.NOT_REGULAR)
        except OSError:
            pass
    return errors.FormatError(path=display, reason=f"cannot be opened: {reason(error)}", code=codes.UNREADABLE)


def _read_up_to(fd: int, expected: int, size: int) -> bytes:
    """Up to ``size`` bytes; one read when the file is the ``expected`` size
    (a short read of a regular file is its end)."""
    first = os.read(fd, min(expected + 1, size))
    if len(first) <= expected:
        return first
    chunks = [first]
    size -= len(first)
    while size > 0:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _type_name(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def write_new(dir_fd: int, name: str, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Create ``name`` (never an existing file or link), write it and fsync it
    (``durable=False``: derived data that is checked before use, no fsync)."""
    fd = os.open(name, _CREATE_FLAGS, mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)  # the umask must not change the mode we promise
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(dir_fd, name)
        raise
    try:
        os.close(fd)
    except OSError:
        _unlink_quietly(dir_fd, name)
        raise


def write_replacing(dir_fd: int, name: str, data: bytes) -> None:
    """``name`` in an open folder replaced whole (temp, fsync, rename); the
    caller fsyncs the folder, once for all it changed."""
    temp = temp_name()
    write_new(dir_fd, temp, data)
    try:
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        _unlink_quietly(dir_fd, temp)
        raise


def atomic_write(path: Path, data: bytes, mode: int = 0o600, durable: bool = True,
                 before_rename: Callable[[int], None] | None = None) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file
    (``durable=False`` skips both fsyncs: for derived data checked before use).
    ``before_rename`` is called with the folder's fd once the new data is
    durable and the old file still in place (the history links it there)."""
    Staged(path, data, mode, durable).publish(before_rename)


class Staged:
    """New bytes for ``path``, written (and fsynced, unless not ``durable``)
    under a temp name in its folder, not yet in place: ``publish`` renames
    them over ``path``, ``discard`` removes them. atomic_write is both steps
    at once; the daemon writes ahead during the end of a quiet period and
    publishes at its end. Until either is called the folder stays open and
    the temp exists (a crash leaves it to the sweep of dead writers' temps)."""

    def __init__(self, path: Path, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
        self.path, self.durable = path, durable
        self.finished = False  # published or discarded: the folder is closed
        self._folder = contextlib.ExitStack()
        self.dir_fd = self._folder.enter_context(opened_dir(path.parent))
        self.temp = temp_name()
        try:
            write_new(self.dir_fd, self.temp, data, mode, durable)
        except OSError as e:
            self._folder.close()
            raise errors.WriteError(path=path, reason=reason(e)) from e
        except BaseException:
            self._folder.close()
            raise

    def publish(self, before_rename: Callable[[int], None] | None = None) -> None:
        self.finished = True
        with self._folder:
            try:
                if before_rename is not None:
                    before_rename(self.dir_fd)
            except BaseException:
                _unlink_quietly(self.dir_fd, self.temp)
                raise
            # Held open across the rename: the kernel then frees the old file's
            # blocks when it is closed, after the commit, not inside the rename
            # (where a large file's freeing would add to the commit's latency).
            with _held_open(self.dir_fd, self.path.name):
                try:
                    os.rename(self.temp, self.path.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
                except OSError as e:
                    _unlink_quietly(self.dir_fd, self.temp)
                    raise errors.WriteError(path=self.path, reason=reason(e)) from e
                if self.durable:
                    fsync_dir(self.dir_fd, self.path)

    def discard(self) -> None:
        """Remove the temp, unless published or discarded already (WriteError
        when it cannot be: the sweep of dead writers' temps removes it once
        this process is gone)."""
        if self.finished:
            return
        self.finished = True
        with self._folder:
            try:
                os.unlink(self.temp, dir_fd=self.dir_fd)
            except FileNotFoundError:
                return  # gone already: what discarding wants
            except OSError as e:
                raise errors.WriteError(path=self.path.parent / self.temp, reason=f"not removed: {reason(e)}") from e


@contextlib.contextmanager
def _held_open(dir_fd: int, name: str) -> Iterator[None]:
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError:  # no old file (or one we could not read anyway): nothing to hold
        fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def fsync_dir(dir_fd: int, display: Path) -> None:
    try:
        os.fsync(dir_fd)
    except OSError as e:
        raise errors.WriteError(path=display, reason=f"renamed, but the folder fsync failed: {reason(e)}; "
                                                    "the change may not survive a crash") from e


def exchange(dir_fd: int, first: str, second: str) -> None:
    """Swap two entries of one folder atomically (renameat2 RENAME_EXCHANGE)."""
    import ctypes  # only expand swaps folders

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(dir_fd, os.fsencode(first), dir_fd, os.fsencode(second), _RENAME_EXCHANGE):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), second)


def make_dir(dir_fd: int, name: str, mode: int = 0o700) -> None:
    os.mkdir(name, mode, dir_fd=dir_fd)


def write_folder(parent_fd: int, name: str, files: dict[str, bytes]) -> None:
    """A new folder ``name`` holding ``files`` (each created O_EXCL, 0600,
    fsynced), the folder and its parent fsynced: a whole copy on disk."""
    make_dir(parent_fd, name)
    folder_fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        for file_name, data in files.items():
            write_new(folder_fd, file_name, data)
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)
    os.fsync(parent_fd)


def remove_quietly(dir_fd: int, name: str) -> None:
    """Remove a temp folder of ours, best effort: a leftover is swept (or
    reported) by the next run."""
    with contextlib.suppress(OSError, NotOurs):
        remove_tree(dir_fd, name)


class NotOurs(Exception):
    """A temp holds something snapstore never puts in one: left alone."""


def remove_tree(dir_fd: int, name: str) -> None:
    """Remove a folder snapstore made itself: flat, regular files only.
    Anything else inside means snapstore did not make it: NotOurs, nothing removed."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        entries = os.listdir(fd)
        for entry in entries:
            if not stat.S_ISREG(os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode):
                raise NotOurs(f"holds {entry!r}, which is not a regular file; snapstore never made it, left alone")
        for entry in entries:
            os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


class Sweep(typing.NamedTuple):
    removed: list[Path]
    left: list[str]  # "path: why", for temps that could not or must not be removed


def sweep_temps(path: Path, foreign: bool = False) -> Sweep:
    """Remove temps left by dead snapstore processes; say what was removed
    and what was left (never raised: a sweep must not stop a commit)."""
    swept = Sweep([], [])
    with opened_dir(path) as dir_fd:
        for name in os.listdir(dir_fd):
            if is_stale_temp(name, foreign):
                _sweep_one(dir_fd, path / name, swept)
    return swept


def _sweep_one(dir_fd: int, path: Path, swept: Sweep) -> None:
    try:
        remove = remove_tree if _is_dir(dir_fd, path.name) else _unlink
        remove(dir_fd, path.name)
    except FileNotFoundError:
        return  # swept by another process meanwhile
    except NotOurs as e:
        swept.left.append(f"{path}: {e}")
        return
    except OSError as e:
        swept.left.append(f"{path}: stale temp not removed: {reason(e)}")
        return
    swept.removed.append(path)


def exists(dir_fd: int, name: str) -> bool:
    """An entry of any type (a link not followed) named ``name`` in the folder."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _is_dir(dir_fd: int, name: str) -> bool:
    return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)


def _unlink(dir_fd: int, name: str) -> None:
    os.unlink(name, dir_fd=dir_fd)


def _unlink_quietly(dir_fd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)
