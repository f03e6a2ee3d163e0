"""Check every domain asked for (or all), then repair what is safe."""
from __future__ import annotations

import os

from snapstore import codes, config, errors, fsio, kinds, legacydir, store
from snapstore.check import findings, repair, scan


def check(settings: config.Config, state: store.Store, options: scan.Options, domains: list[str],
          repair_it: bool = False, dry_run: bool = False) -> findings.Report:
    report = findings.Report()
    scans = scan_all(report, settings, state, options, domains)
    if not repair_it:
        return report
    repair.Repairer(report, state, settings, dry_run).repair(list(report.findings), scans)
    if dry_run:
        return report
    after = findings.Report(repairs=report.repairs, notes=report.notes)
    scan_all(after, settings, state, options, domains)
    return after


def scan_all(report: findings.Report, settings: config.Config, state: store.Store, options: scan.Options,
             domains: list[str]) -> list[scan.Scan]:
    """Every finding into ``report``; the scans are what a repair acts on."""
    _leftovers(report, settings, state)
    return [scan.DomainCheck(report, settings, state, options, kind, domain).run()
            for kind, domain in _keys(settings, state, domains)]


def _keys(settings: config.Config, state: store.Store, domains: list[str]) -> list[tuple[kinds.Kind, str]]:
    known = {(kind, domain) for kind in kinds.ALL for domain in _known(settings, state, kind)}
    if not domains:
        return sorted(known, key=lambda key: (key[1], key[0].name))
    for domain in domains:
        if not any((kind, domain) in known for kind in kinds.ALL):
            raise errors.UnknownDomain(domain=domain, reason="no libvirt folder and no consolidated file")
    return [(kind, domain) for domain in domains for kind in kinds.ALL if (kind, domain) in known]


def _known(settings: config.Config, state: store.Store, kind: kinds.Kind) -> set[str]:
    root = settings.root(kind)
    names = set(state.domains(kind))
    if root.is_dir():
        names.update(legacydir.domains(root))
        names.update(entry.name for entry in os.scandir(root)
                     if entry.is_symlink() and not fsio.is_temp(entry.name, foreign=True))
    return names


def _leftovers(report: findings.Report, settings: config.Config, state: store.Store) -> None:
    folders = [(folder, False) for folder in state.temp_folders()]
    folders += [(settings.root(kind), True) for kind in kinds.ALL]
    for folder, foreign in folders:
        if not folder.is_dir():
            continue
        try:
            names = sorted(os.listdir(folder))
        except OSError as e:  # the rest of the check says what this folder's trouble costs
            state.warn(f"{folder}: not searched for temps of dead writers: {fsio.reason(e)}")
            continue
        for name in names:
            if fsio.is_stale_temp(name, foreign):
                report.add(codes.SNAPSTORE_TEMP, "left by a snapstore process that died mid-write",
                           path=folder / name, hint="snapstore check --repair removes it")
