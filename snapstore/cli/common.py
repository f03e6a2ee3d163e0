"""What every command shares: global options, settings, output."""
from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

from snapstore import config, errors, kinds, store

if typing.TYPE_CHECKING:  # argparse's action is generic to type checkers only
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, like every other error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, errors.one_line(f"snapstore: {message} (see '{self.prog} --help')") + "\n")


class _Formatter(argparse.HelpFormatter):
    """argparse's own, told the width: argparse would import shutil for it,
    and shutil its compression modules (~5 ms of every command, `list`
    included, for help text that is rarely shown)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)


def _columns() -> int:
    """What shutil.get_terminal_size() would say: $COLUMNS, the terminal, or 80."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    stdout = sys.__stdout__
    try:
        return os.get_terminal_size(stdout.fileno()).columns if stdout is not None else 80
    except (AttributeError, ValueError, OSError):
        return 80


def global_options(suppress: bool) -> argparse.ArgumentParser:
    """Options accepted before or after the command name.

    The copy given to each command suppresses its defaults, so an option
    typed before the command is not reset by the command's parser.
    """
    default = argparse.SUPPRESS if suppress else None
    parser = Parser(add_help=False)
    parser.add_argument("--config", type=Path, default=default, metavar="FILE",
                        help=f"TOML settings (default {config.DEFAULT_PATH}, if it exists)")
    parser.add_argument("--libvirt-dir", type=Path, default=default, metavar="DIR",
                        help="libvirt's snapshot root (default /var/lib/libvirt/qemu/snapshot)")
    parser.add_argument("--checkpoint-dir", type=Path, default=default, metavar="DIR",
                        help="libvirt's checkpoint root (default /var/lib/libvirt/qemu/checkpoint)")
    parser.add_argument("--state-dir", type=Path, default=default, metavar="DIR",
                        help="snapstore's state folder (default /var/lib/snapstore)")
    parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS if suppress else 0,
                        help="more detail on stderr (debug log)")
    parser.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS if suppress else 0,
                        help="only errors")
    return parser


def domain_command(commands: Commands, options: argparse.ArgumentParser, run: Any, name: str, summary: str,
                   description: str) -> argparse.ArgumentParser:
    """A command on one DOMAIN, either kind, whose output is data (--json)."""
    parser: argparse.ArgumentParser = commands.add_parser(name, parents=[options], help=summary,
                                                          description=description)
    parser.add_argument("domain", metavar="DOMAIN")
    add_kind_option(parser)
    add_json_option(parser)
    parser.set_defaults(run=run)
    return parser


def add_kind_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", action="store_true",
                        help="act on checkpoints instead of snapshots")


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")


class Context:
    """Settings and output of one command."""

    def __init__(self, settings: config.Config, verbosity: int) -> None:
        self.config = settings
        self.verbosity = verbosity

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Context:
        settings = config.load(args.config)
        overrides = {key: str(getattr(args, key)) for key in ("libvirt_dir", "checkpoint_dir", "state_dir")
                     if getattr(args, key, None) is not None}
        return cls(config.overlay(settings, overrides, "command line"), args.verbose - args.quiet)

    def kind(self, args: argparse.Namespace) -> kinds.Kind:
        return kinds.CHECKPOINT if getattr(args, "checkpoints", False) else kinds.SNAPSHOT

    def root(self, kind: kinds.Kind) -> Path:
        return self.config.root(kind)

    def store(self) -> store.Store:
        """The state folder; with [fleet] enabled, each commit is queued in the outbox."""
        state = store.Store(self.config.state_dir, self.config.lock_timeout, self.config.max_store_bytes,
                            warn=self.warn, keep=self.config.history_limits())
        if self.config.fleet_enabled:
            from snapstore.fleet import outbox

            box = outbox.Outbox(self.config.state_dir, self.config.fleet_outbox_max, self.warn)
            state.on_commit = lambda committed: box.put(
                committed, state.generation_files(committed.kind, committed.domain, committed.number))
        return state

    def say(self, line: str) -> None:
        if self.verbosity >= 0:
            print(line)

    def warn(self, line: str) -> None:
        if self.verbosity >= 0:
            print(f"snapstore: warning: {errors.one_line(line)}", file=sys.stderr)

    def emit_json(self, data: Any) -> None:
        json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")


def printable(name: str) -> str:
    """A name as a terminal can show it: control characters escaped."""
    return name if name.isprintable() else repr(name)


def report(error: errors.SnapstoreError) -> None:
    """One line per problem on stderr: a refused tree lists each broken rule."""
    if isinstance(error, errors.TreeError):
        for problem in error.problems:
            print(errors.one_line(f"snapstore: {error.domain}: {problem}"), file=sys.stderr)
    else:
        print(f"snapstore: {error}", file=sys.stderr)
