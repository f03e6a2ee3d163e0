"""``snapstore fleet init|list|check|pull``: the fleet database (README "Fleet")."""
from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

from snapstore import errors, fleet, kinds, store
from snapstore.check import findings
from snapstore.cli import common
from snapstore.cli import history as history_cli


def register(commands: common.Commands, options: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "fleet", parents=[options], help="the fleet database: every host's generations",
        description="Every host's generations, replicated by its daemon to PostgreSQL ([fleet] in the settings).")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    shared = common.Parser(add_help=False)
    shared.add_argument("--dsn", metavar="DSN", help="the database (default: dsn in [fleet] of the settings); "
                                                     "put a password in a passfile=, not here")
    common.add_json_option(shared)

    def action(name: str, run: Any, summary: str, description: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(name, parents=[options, shared], help=summary,
                                                          description=description)
        sub.set_defaults(run=run)
        return sub

    action("init", run_init, "create or migrate the schema",
           "Create the schema, or migrate it to this snapstore's version; safe to run twice and from several "
           "hosts at once. Run it as the database's owner.")
    sub = action("list", run_list, "every domain of every host",
                 "Each domain's newest generation on each host: moments, current, when.")
    sub.add_argument("--host", metavar="HOST", help="only this host's domains")
    sub.add_argument("--domain", metavar="DOMAIN", help="only this domain")
    sub = action("check", run_check, "diverged, duplicated, stale and unreplicated domains",
                 "A domain uuid on two hosts (SS601 diverged, SS602 the same), hosts not replicating (SS603), "
                 "this host's domains not in the fleet (SS604, SS605 queued). Exit 0 clean, 1 warnings only, "
                 "3 errors, 2 usage or environment error.")
    sub.add_argument("--stale-after", type=float, metavar="SECONDS",
                     help="a host not seen for longer is stale (default: stale_after in [fleet], 3600)")
    sub = action("pull", run_pull, "bring a domain's generation from the fleet into the store",
                 "Commit a generation from the fleet (default: the newest, from the one host that holds the "
                 "domain) into the local store, the file it replaces kept in the history; then 'snapstore "
                 "restore' redefines it in libvirt. The recovery of a lost host's domains.")
    sub.add_argument("domain", metavar="DOMAIN")
    common.add_kind_option(sub)
    sub.add_argument("--from-host", metavar="HOST", help="the host whose generation to pull")
    sub.add_argument("--generation", type=int, metavar="GEN", help="the generation (default: that host's newest)")
    sub.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")


@contextlib.contextmanager
def _connected(args: argparse.Namespace, context: common.Context) -> Iterator[Any]:
    from snapstore.fleet import database

    dsn = _dsn(args, context)
    conn = database.connect(dsn)
    import psycopg

    try:
        yield conn
    except psycopg.Error as e:
        raise errors.FleetError(where=database.describe(dsn), reason=database.reason(e)) from None
    finally:
        conn.close()


def _dsn(args: argparse.Namespace, context: common.Context) -> str:
    return str(args.dsn if args.dsn is not None else context.config.fleet_dsn)


def run_init(args: argparse.Namespace, context: common.Context) -> int:
    from snapstore.fleet import database

    dsn = _dsn(args, context)
    before, after = database.init(dsn)
    if args.json:
        context.emit_json({"format": 1, "schema_version_before": before, "schema_version": after})
    elif before == after:
        context.say(f"{database.describe(dsn)}: schema version {after}, already current")
    else:
        context.say(f"{database.describe(dsn)}: schema version {before or 'none'} -> {after}; grant each host's role "
                    f"membership: CREATE ROLE \"HOST_ID\" LOGIN IN ROLE {database.GROUP_ROLE}")
    return 0


def run_list(args: argparse.Namespace, context: common.Context) -> int:
    from snapstore.fleet import view

    with _connected(args, context) as conn:
        rows = view.domains(conn, args.host, args.domain)
    if args.json:
        context.emit_json({"format": 1, "domains": [row.as_json() for row in rows]})
        return 0
    context.say(f"{'HOST':<20} {'KIND':<10} {'DOMAIN':<24} {'GEN':>5} {'COUNT':>6} {'CURRENT':<20} COMMITTED")
    for row in rows:
        context.say(errors.one_line(
            f"{row.host:<20} {row.kind:<10} {row.domain:<24} {row.generation:>5} {row.moments:>6} "
            f"{row.current or '-':<20} {row.committed_at:%Y-%m-%d %H:%M:%S %Z}"))
    return 0


def run_check(args: argparse.Namespace, context: common.Context) -> int:
    from snapstore.cli import check as check_cli
    from snapstore.fleet import outbox, view

    stale_after = args.stale_after if args.stale_after is not None else context.config.fleet_stale_after
    state = context.store()
    local = None
    if any(state.domains(kind) for kind in kinds.ALL):
        box = outbox.Outbox(context.config.state_dir, context.config.fleet_outbox_max, context.warn)
        local = (state, box, fleet.host_id(context.config))
    report = findings.Report()
    with _connected(args, context) as conn:
        view.check(conn, report, stale_after, local)
    if args.json:
        context.emit_json(report.as_json())
    else:
        print("\n".join(check_cli.format_report(report, dry_run=False)))
    return report.exit_code()


def run_pull(args: argparse.Namespace, context: common.Context) -> int:
    from snapstore.fleet import view
    from snapstore.formats import consolidated

    kind, state = context.kind(args), context.store()
    with _connected(args, context) as conn:
        pulled = view.fetch(conn, kind, args.domain, args.from_host, args.generation, state.read_limit)
    source = f"generation {pulled.generation} from {pulled.host}"
    tree = consolidated.parse_consolidated(pulled.data, kind, source, state.read_limit)
    if tree.domain != args.domain:
        raise errors.Refused(domain=args.domain, reason=f"{source} holds domain {tree.domain!r}; nothing written")
    live = state.read_tree(kind, args.domain)
    if not args.dry_run:
        state.prepare()
        state.bring_back(tree, f"{store.PULL} from {pulled.host} generation {pulled.generation}")
    verb = "would pull" if args.dry_run else "pulled"
    history_cli.say_brought_back(context, args, live, tree, f"{verb} {source} into the store",
                                 {"host": pulled.host, "generation": pulled.generation})
    return 0
