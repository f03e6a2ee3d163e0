"""Findings and the report that collects them (data, not exceptions).

Exit codes of `snapstore check`: 0 clean, 1 warnings only, 3 errors
(2 stays the usage/environment error of every command).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from snapstore import codes, kinds

JSON_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Finding:
    code: str
    severity: str
    domain: str | None
    kind: str | None
    moment: str | None
    path: str | None
    message: str
    hint: str | None = None

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Repair:
    code: str
    path: str
    action: str
    done: bool  # False under --dry-run

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Report:
    findings: list[Finding] = dataclasses.field(default_factory=list)
    repairs: list[Repair] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    domains: set[str] = dataclasses.field(default_factory=set)
    counts: dict[str, int] = dataclasses.field(default_factory=lambda: {k.plural: 0 for k in kinds.ALL})

    def add(self, code: str, message: str, domain: str | None = None, kind: kinds.Kind | None = None,
            moment: str | None = None, path: Path | str | None = None, hint: str | None = None) -> None:
        self.findings.append(Finding(code, codes.CODES[code].severity, domain, kind.name if kind else None,
                                     moment, str(path) if path is not None else None, message, hint))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def count(self, severity: str) -> int:
        return sum(1 for finding in self.findings if finding.severity == severity)

    def exit_code(self) -> int:
        if self.count(codes.ERROR):
            return 3
        return 1 if self.count(codes.WARNING) else 0

    def summary(self) -> dict[str, int]:
        return {"errors": self.count(codes.ERROR), "warnings": self.count(codes.WARNING),
                "domains": len(self.domains), **self.counts, "repairs": len(self.repairs)}

    def as_json(self) -> dict[str, Any]:
        return {"format": JSON_FORMAT, "findings": [f.as_json() for f in self.findings],
                "repairs": [r.as_json() for r in self.repairs], "notes": self.notes,
                "summary": self.summary(), "exit_code": self.exit_code()}
