"""``snapstore daemon``: the service (DESIGN §5)."""
from __future__ import annotations

import argparse

from snapstore.cli import common


def register(commands: common.Commands, options: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("daemon", parents=[options], help="keep consolidated files in step with libvirt",
                                 description="Run in the foreground (systemd Type=notify): reconcile every "
                                             "domain, then follow libvirt's writes through inotify.")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, context: common.Context) -> int:
    from snapstore.daemon import logs, service  # the daemon's imports (watchdog) only when needed

    logs.set_up(context.verbosity)
    return service.Service(context.config, reload=lambda: common.Context.from_args(args).config).run()
