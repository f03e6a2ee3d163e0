"""``snapstore check``: integrity of both layouts; ``--repair`` fixes what is safe."""
from __future__ import annotations

import argparse
from pathlib import Path

from snapstore import errors, limits
from snapstore.check import findings, run, scan
from snapstore.cli import common


def register(commands: common.Commands, options: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "check", parents=[options], help="integrity of libvirt's folders and the store",
        description="Check snapshots and checkpoints of the given domains (default: all) in libvirt's "
                    "folders and the store. Exit 0 clean, 1 warnings only, 3 errors, 2 usage error.")
    parser.add_argument("domains", nargs="*", metavar="DOMAIN")
    parser.add_argument("--repair", action="store_true",
                        help="make the safe repairs (temps, modes, attic, rebuild the store), then check again")
    parser.add_argument("--dry-run", action="store_true", help="with --repair: show what it would do")
    parser.add_argument("--no-disks", action="store_true", help="skip the qemu-img cross-check of internal snapshots")
    parser.add_argument("--definitions", type=Path, default=Path("/etc/libvirt/qemu"), metavar="DIR",
                        help="libvirt's domain definitions, for the uuid check (default /etc/libvirt/qemu)")
    parser.add_argument("--schemas", type=Path, default=limits.SCHEMA_DIR, metavar="DIR",
                        help=f"libvirt's RNG schemas (default {limits.SCHEMA_DIR})")
    common.add_json_option(parser)
    parser.set_defaults(run=run_command)


def run_command(args: argparse.Namespace, context: common.Context) -> int:
    if args.dry_run and not args.repair:
        raise errors.UsageError(reason="--dry-run goes with --repair")
    options = scan.Options(disks=not args.no_disks, schema_dir=args.schemas, definitions=args.definitions)
    state = context.store()
    if args.repair and not args.dry_run:
        state.prepare(sweep=False)
    report = run.check(context.config, state, options, args.domains, args.repair, args.dry_run)
    if args.json:
        context.emit_json(report.as_json())
    else:
        print("\n".join(format_report(report, args.dry_run)))
    return report.exit_code()


def format_report(report: findings.Report, dry_run: bool) -> list[str]:
    """Grouped by domain and kind, then repairs, notes and a summary line."""
    lines: list[str] = []
    group = None
    for finding in sorted(report.findings, key=lambda f: (f.domain or "", f.kind or "", f.code)):
        if (finding.domain, finding.kind) != group:
            group = (finding.domain, finding.kind)
            lines.append(f"{common.printable(finding.domain)} ({finding.kind}s):" if finding.domain else "host:")
        where = f" [{finding.path}]" if finding.path else ""
        lines.append(errors.one_line(f"  {finding.severity:<7} {finding.code} {finding.message}{where}"))
        if finding.hint:
            lines.append(errors.one_line(f"          hint: {finding.hint}"))
    for done in report.repairs:
        verb = "would repair" if dry_run else "repaired"
        lines.append(errors.one_line(f"{verb}: {done.code} {done.path}: {done.action}"))
    lines += [errors.one_line(f"note: {note}") for note in report.notes]
    summary = report.summary()
    lines.append(f"summary: {summary['errors']} errors, {summary['warnings']} warnings in {summary['domains']} "
                 f"domains ({summary['snapshots']} snapshots, {summary['checkpoints']} checkpoints)"
                 + (f", {len(report.repairs)} repairs" if report.repairs else ""))
    return lines
