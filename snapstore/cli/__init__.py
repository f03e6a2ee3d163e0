"""The ``snapstore`` command line: ``main(argv) -> exit code``.

Exit codes (DESIGN §4): 0 success, 1 problems found or operation refused,
2 usage or environment error. Every expected error is one line on stderr,
``snapstore: <message>``; a traceback only reaches the debug log (-v).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from snapstore import __version__, errors
from snapstore.cli import common

# Command name(s) -> the module (in snapstore.cli) that registers and runs them;
# only the one asked for is imported.
_COMMANDS = {("consolidate",): "consolidate", ("expand",): "expand", ("list",): "listing", ("check",): "check",
             ("dump", "restore", "transfer"): "bridge", ("history", "diff", "undo"): "history",
             ("daemon",): "daemon", ("fleet",): "fleet"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; for a known ``command`` only its own subparser is built
    (argparse's per-option gettext lookups make the full table cost ~20 ms)."""
    parser = common.Parser(
        prog="snapstore", parents=[common.global_options(suppress=False)],
        description="Crash-safe consolidated libvirt snapshot and checkpoint metadata.")
    parser.add_argument("--version", action="version", version=f"snapstore {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = [m for names, m in _COMMANDS.items() if command in names] or list(_COMMANDS.values())
    for module in modules:
        importlib.import_module(f"snapstore.cli.{module}").register(commands, common.global_options(suppress=True))
    return parser


def command_name(argv: Sequence[str]) -> str | None:
    """The first word that is not a global option or its value."""
    valued = {option for action in common.global_options(suppress=False)._actions if action.nargs != 0
              for option in action.option_strings}
    words = iter(argv)
    for word in words:
        if word in valued:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(command_name(argv)).parse_args(argv)
    _set_up_logging(args.verbose - args.quiet)
    try:
        context = common.Context.from_args(args)
        code: int = args.run(args, context)
        return code
    except errors.SnapstoreError as e:
        common.report(e)
        _debug("details")
        return e.exit_code
    except KeyboardInterrupt:
        print("snapstore: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0  # output piped into head(1) and the like
    except Exception as e:  # an operator gets a line, a developer the traceback with -v
        _debug("internal error")
        print(f"snapstore: internal error: {type(e).__name__}: {e} (run with -v for details)", file=sys.stderr)
        return 2


def _debug(message: str) -> None:
    """The traceback, for -v only (logging is imported only when asked for)."""
    if "logging" in sys.modules:
        sys.modules["logging"].getLogger("snapstore").debug(message, exc_info=True)


def _set_up_logging(level: int) -> None:
    if level == 0:
        return  # the default: Python's last-resort handler prints warnings, as basicConfig would
    import logging

    logging.basicConfig(
        stream=sys.stderr, format="snapstore: %(levelname)s: %(message)s",
        level=logging.DEBUG if level > 0 else logging.WARNING if level == 0 else logging.ERROR)
