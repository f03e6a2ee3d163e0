"""The whole exception hierarchy.

Every error renders a one-line message for operators from its fields, which
are real attributes set in ``__init__`` (as ovirt-imageio's errors are), and
knows the exit code the command line returns for it (DESIGN §4: 1 problems
found / operation refused, 2 usage or environment error). Findings of a
check are data, not exceptions.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from snapstore import codes

PathLike = Path | str


class SnapstoreError(Exception):
    """Base class: ``message`` is made one line before it is stored."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(text: str) -> str:
    """Control characters escaped, so a hostile file name cannot forge a line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class UsageError(SnapstoreError):
    """Contradictory or invalid options, rejected before any I/O."""

    def __init__(self, *, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class _AtPath(SnapstoreError):
    """``<path>: <reason>``."""

    def __init__(self, *, path: PathLike, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


class ConfigError(_AtPath):
    """A settings file that cannot be used."""


class EnvironmentProblem(_AtPath):
    """Something outside snapstore is missing or unusable (a folder, a daemon)."""


class UnknownDomain(SnapstoreError):
    def __init__(self, *, domain: str, reason: str) -> None:
        self.domain, self.reason = domain, reason
        super().__init__(f"{domain}: unknown domain: {reason}")


class FormatError(SnapstoreError):
    """A file or document that cannot be read as what it claims to be;
    ``code`` is the check finding it amounts to (snapstore.codes)."""

    exit_code = 1

    def __init__(self, *, path: PathLike, reason: str, code: str = codes.UNPARSABLE) -> None:
        self.path, self.reason, self.code = path, reason, code
        super().__init__(f"{path}: {reason} ({code})")


class TreeError(SnapstoreError):
    """A parsed set of moments that breaks a rule of DESIGN §2.

    ``problems`` holds every problem found (validation is all-or-nothing);
    the message names the first, the command line prints them all.
    """

    exit_code = 1

    def __init__(self, *, domain: str, problems: Sequence[codes.Problem]) -> None:
        self.domain, self.problems = domain, list(problems)
        super().__init__(f"{domain}: {self.problems[0]}")


class Refused(SnapstoreError):
    """The operation would lose or hide metadata; nothing was changed."""

    exit_code = 1

    def __init__(self, *, domain: str, reason: str) -> None:
        self.domain, self.reason = domain, reason
        super().__init__(f"{domain}: {reason}")


class Emptying(Refused):
    """An empty tree would replace a store file that holds moments: how lost
    metadata looks (a reinstall, an emptied folder), so never done unasked."""

    def __init__(self, *, domain: str, plural: str, held: int, origin: str, recovery: str) -> None:
        self.held = held
        super().__init__(domain=domain, reason=f"{origin} no {plural} but the store holds {held}; not replacing "
                                               f"them ({recovery}, or pass --allow-empty)")


class Guarded(Refused):
    """The store file was brought back (``by`` an undo, a fleet pull) to
    moments libvirt does not hold yet: a commit from libvirt's folder would
    drop them."""

    def __init__(self, *, domain: str, plural: str, by: str, missing: list[str], flag: str = "") -> None:
        self.by, self.missing = by, missing
        shown = ", ".join(repr(name) for name in missing[:5]) + (" …" if len(missing) > 5 else "")
        undo = by.startswith("undo to ")
        done = f"undone to{by.removeprefix('undo to')}" if undo else f"set by {by}"
        super().__init__(domain=domain, reason=(
            f"{done}, and libvirt's folder lacks {len(missing)} of its {plural} ({shown}); "
            f"not replacing it: bring them back with 'snapstore restore {domain}{flag} --connect URI', or "
            f"'snapstore undo {domain}{flag}' to undo the {'undo' if undo else 'pull'}"))


class FolderBusy(Refused):
    """libvirt rewrote the folder while it was read: what was read may be a
    state the folder never held (half old, half new), so it is not used."""

    def __init__(self, *, domain: str, path: PathLike, attempts: int) -> None:
        self.path, self.attempts = path, attempts
        super().__init__(domain=domain, reason=f"{path} changed while it was read, {attempts} times in a row; "
                                               "libvirt is writing it, run again")


class StoreError(_AtPath):
    """snapstore's own state folder could not be changed."""


class LockTimeout(StoreError):
    def __init__(self, *, path: PathLike, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(path=path, reason=f"lock held by another snapstore process for {timeout:g} s, giving up")


class WriteError(StoreError):
    def __init__(self, *, path: PathLike, reason: str) -> None:
        super().__init__(path=path, reason=f"write failed, old content kept: {reason}")
        self.reason = reason


class BridgeError(SnapstoreError):
    """libvirt refused or failed an API call; ``code`` is libvirt's error code."""

    def __init__(self, *, domain: str, operation: str, reason: str, code: int | None = None) -> None:
        self.domain, self.operation, self.reason, self.code = domain, operation, reason, code
        super().__init__(f"{domain}: libvirt {operation} failed: {reason}")


class ConnectionFailed(SnapstoreError):
    def __init__(self, *, uri: str, reason: str) -> None:
        self.uri, self.reason = uri, reason
        super().__init__(f"{uri}: cannot connect to libvirt: {reason}")


class QueueError(_AtPath):
    """The fleet's outbox could not take a generation; the commit itself stood."""


class FleetError(SnapstoreError):
    """The fleet database cannot be reached or used; ``where`` names it
    without a password."""

    def __init__(self, *, where: str, reason: str) -> None:
        self.where, self.reason = where, reason
        super().__init__(f"fleet database {where}: {reason}")
