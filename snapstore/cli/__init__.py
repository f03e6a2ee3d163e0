"""The ``snapstore`` command line: ``main(argv) -> exit code``.

Exit codes (DESIGN §4): 0 success, 1 problems found or operation refused,
2 usage or environment error. Every expected error is one line on stderr,
``snapstore: <message>``; a traceback only reaches the debug log (-v).
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from snapstore import __version__, errors
from snapstore.cli import bridge, check, common, consolidate, daemon, expand, listing

_COMMANDS = (consolidate, expand, listing, check, bridge, daemon)
log = logging.getLogger("snapstore")


def build_parser() -> argparse.ArgumentParser:
    parser = common.Parser(
        prog="snapstore", parents=[common.global_options(suppress=False)],
        description="Crash-safe consolidated libvirt snapshot and checkpoint metadata.")
    parser.add_argument("--version", action="version", version=f"snapstore {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.register(commands, common.global_options(suppress=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _set_up_logging(args.verbose - args.quiet)
    try:
        context = common.Context.from_args(args)
        return args.run(args, context)
    except errors.SnapstoreError as e:
        common.report(e)
        log.debug("details", exc_info=True)
        return e.exit_code
    except KeyboardInterrupt:
        print("snapstore: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0  # output piped into head(1) and the like
    except Exception as e:  # an operator gets a line, a developer the traceback with -v
        log.debug("internal error", exc_info=True)
        print(f"snapstore: internal error: {type(e).__name__}: {e} (run with -v for details)", file=sys.stderr)
        return 2


def _set_up_logging(level: int) -> None:
    logging.basicConfig(
        stream=sys.stderr, format="snapstore: %(levelname)s: %(message)s",
        level=logging.DEBUG if level > 0 else logging.WARNING if level == 0 else logging.ERROR)
