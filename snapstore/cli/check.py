"""``snapstore check``: integrity of both layouts; ``--repair`` fixes what is safe."""
from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

from snapstore import codes, errors, kinds, limits, metrics
from snapstore.check import bitmaps, findings, run, scan
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
    parser.add_argument("--no-disks", action="store_true",
                        help="skip the qemu-img cross-check of internal snapshots and checkpoint bitmaps")
    parser.add_argument("--definitions", type=Path, default=Path("/etc/libvirt/qemu"), metavar="DIR",
                        help="libvirt's domain definitions, for the uuid check (default /etc/libvirt/qemu)")
    parser.add_argument("--run-dir", type=Path, default=bitmaps.RUN_DIR, metavar="DIR",
                        help=f"libvirt's status files of running domains, for the bitmap check (default "
                             f"{bitmaps.RUN_DIR}; an embedded root's is ROOT/run/qemu)")
    parser.add_argument("--schemas", type=Path, default=limits.SCHEMA_DIR, metavar="DIR",
                        help=f"libvirt's RNG schemas (default {limits.SCHEMA_DIR})")
    parser.add_argument("--metrics", type=Path, metavar="FILE",
                        help="also write the findings by code and severity as Prometheus metrics "
                             "(node_exporter's textfile format), replacing FILE atomically")
    common.add_json_option(parser)
    parser.set_defaults(run=run_command)


def run_command(args: argparse.Namespace, context: common.Context) -> int:
    if args.dry_run and not args.repair:
        raise errors.UsageError(reason="--dry-run goes with --repair")
    if args.metrics is not None and not args.metrics.parent.is_dir():  # known before the scan, not after it
        raise errors.EnvironmentProblem(path=args.metrics.parent, reason="no such folder (--metrics)")
    options = scan.Options(disks=not args.no_disks, schema_dir=args.schemas, definitions=args.definitions,
                           run_dir=args.run_dir, memo=not args.repair)
    state = context.store()
    if args.repair and not args.dry_run:
        state.prepare(sweep=False)
    began = time.monotonic()
    report = run.check(context.config, state, options, args.domains, args.repair, args.dry_run)
    if args.json:
        context.emit_json(report.as_json())
    else:
        print("\n".join(format_report(report, args.dry_run)))
    if args.metrics is not None:  # a file that cannot be written fails the run (exit 2), after the report
        data = metrics.render(metric_families(report, time.time(), time.monotonic() - began))
        metrics.write(args.metrics, data, context.config.metrics_mode)
    return report.exit_code()


def metric_families(report: findings.Report, finished: float, seconds: float) -> list[metrics.Family]:
    """The report as the textfile collector reads it: every known code, 0
    when not found (an alert needs no absent()); names apart from the
    daemon's (one collector reads both files, and a family must come from one)."""
    found = collections.Counter(finding.code for finding in report.findings)  # a code has one severity
    summary = report.summary()
    return [
        metrics.Family("snapstore_check_findings", "gauge", "Findings of the last check, by code and severity.",
                       [((("code", code.code), ("severity", code.severity)), found[code.code])
                        for code in sorted(codes.CODES.values())]),
        metrics.Family("snapstore_check_domains", "gauge", "Domains the last check read.",
                       [((), summary["domains"])]),
        metrics.Family("snapstore_check_moments", "gauge", "Snapshots or checkpoints the last check counted.",
                       [((("kind", kind.name),), summary[kind.plural]) for kind in kinds.ALL]),
        metrics.Family("snapstore_check_repairs", "gauge", "Repairs the last check made (or would make).",
                       [((), summary["repairs"])]),
        metrics.Family("snapstore_check_duration_seconds", "gauge", "How long the last check took.",
                       [((), round(seconds, 3))]),
        metrics.Family("snapstore_check_last_run_timestamp_seconds", "gauge", "When the last check finished.",
                       [((), round(finished, 3))]),
    ]


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
