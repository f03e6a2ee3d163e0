"""The reliability campaign's fixtures: mode, sandboxes, figures (see campaign.py)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import campaign  # noqa: E402


@pytest.fixture
def sandbox(tmp_path: Path) -> campaign.Sandbox:
    return campaign.Sandbox(tmp_path)


def pytest_report_header(config: pytest.Config) -> str:
    return f"snapstore reliability campaign: {campaign.MODE} mode"


DATA_LOST = "data lost (a state neither committed nor in flight, or a store behind its folder)"


def pytest_sessionstart(session: pytest.Session) -> None:
    campaign.FIGURES[DATA_LOST] = 0


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Failures are figures too: a "data:" assertion is data lost, a "BUG:" one a known bug."""
    if not report.failed or "tests/reliability/" not in report.nodeid.replace("\\", "/"):
        return
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    if "data:" in text:
        campaign.FIGURES[DATA_LOST] += 1
    if "BUG:" in text:
        campaign.FIGURES["tests failing on a bug (BUG:)"] += 1
        campaign.NOTES[f"BUG in {report.nodeid.split('tests/reliability/')[-1]}"] = text.split("BUG: ",
                                                                                               1)[1].split("\n")[0][:300]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("SNAPSTORE_RELIABILITY_FIGURES")
    if target and campaign.FIGURES:
        Path(target).write_text(json.dumps({"mode": campaign.MODE, "figures": dict(sorted(campaign.FIGURES.items())),
                                            "notes": campaign.NOTES, "exit_status": int(exitstatus)},
                                           indent=2, ensure_ascii=False) + "\n")
