"""The whole exception hierarchy.

Every error renders a one-line message for operators from a template and its
fields, and knows the exit code the command line returns for it (DESIGN §4:
1 problems found / operation refused, 2 usage or environment error).
Findings of a check are data, not exceptions.
"""
from __future__ import annotations

from typing import Any

from snapstore import codes


class SnapstoreError(Exception):
    """Base class: ``template`` is formatted with the keyword fields."""

    template = "{reason}"
    exit_code = 2

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        super().__init__(one_line(self.template.format(**fields)))

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["fields"][name]
        except KeyError:
            raise AttributeError(name) from None


def one_line(text: str) -> str:
    """Control characters escaped, so a hostile file name cannot forge a line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class UsageError(SnapstoreError):
    """Contradictory or invalid options, rejected before any I/O."""


class ConfigError(SnapstoreError):
    template = "{path}: {reason}"


class EnvironmentProblem(SnapstoreError):
    """Something outside snapstore is missing or unusable (a folder, a daemon)."""

    template = "{path}: {reason}"


class UnknownDomain(SnapstoreError):
    template = "{domain}: unknown domain: {reason}"


class FormatError(SnapstoreError):
    """A file or document that cannot be read as what it claims to be;
    ``code`` is the check finding it amounts to (snapstore.codes)."""

    template = "{path}: {reason} ({code})"
    exit_code = 1

    def __init__(self, path: Any, reason: str, code: str = codes.UNPARSABLE) -> None:
        super().__init__(path=path, reason=reason, code=code)


class TreeError(SnapstoreError):
    """A parsed set of moments that breaks a rule of DESIGN §2.

    ``problems`` holds every problem found (validation is all-or-nothing);
    the message names the first, the command line prints them all.
    """

    template = "{domain}: {first}"
    exit_code = 1

    def __init__(self, domain: str, problems: list) -> None:
        super().__init__(domain=domain, problems=problems, first=problems[0])


class Refused(SnapstoreError):
    """The operation would lose or hide metadata; nothing was changed."""

    template = "{domain}: {reason}"
    exit_code = 1


class FolderBusy(Refused):
    """libvirt rewrote the folder while it was read: what was read may be a
    state the folder never held (half old, half new), so it is not used."""

    template = "{domain}: {path} changed while it was read, {attempts} times in a row; libvirt is writing it, run again"


class StoreError(SnapstoreError):
    template = "{path}: {reason}"


class LockTimeout(StoreError):
    template = "{path}: lock held by another snapstore process for {timeout:g} s, giving up"


class WriteError(StoreError):
    template = "{path}: write failed, old content kept: {reason}"


class BridgeError(SnapstoreError):
    template = "{domain}: libvirt {operation} failed: {reason}"


class ConnectionFailed(BridgeError):
    template = "{uri}: cannot connect to libvirt: {reason}"
