"""What one run of the command line gave: exit code, stdout, stderr."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

WARNING = "snapstore: warning: "


@dataclasses.dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.err.splitlines()

    @property
    def errors(self) -> list[str]:
        return [line for line in self.lines if not line.startswith(WARNING)]

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.lines if line.startswith(WARNING)]

    @property
    def data(self) -> dict[str, Any]:
        return json.loads(self.out)

    @property
    def codes(self) -> set[str]:
        """Finding codes of a `check --json` run."""
        return {f["code"] for f in self.data["findings"]}

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.out}--- stderr ---\n{self.err}"
