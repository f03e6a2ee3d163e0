"""The shipped systemd unit passes systemd's own checks (no systemd needed)."""
from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "snapstore.service"
INSTALLED_BINARY = "/usr/local/bin/snapstore"


def local_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at this checkout's snapstore, which
    `verify` requires to exist; every other line is the shipped one."""
    binary = Path(sys.executable).with_name("snapstore")
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(INSTALLED_BINARY, str(binary)))
    return copy


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(local_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_unit_security_exposure_is_at_most_2(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(local_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for snapstore.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_unit_is_a_notify_service_with_watchdog_and_state_dir() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string(re.sub(r"(?m)^(SystemCallFilter=.*)$", "", UNIT.read_text()))
    service = unit["Service"]
    assert service["Type"] == "notify" and service["Restart"] == "on-failure"
    assert service["WatchdogSec"] and service["StateDirectory"] == "snapstore"
    assert service["ExecStart"] == f"{INSTALLED_BINARY} daemon"
    assert "libvirtd.service" in unit["Unit"]["After"] and "virtqemud.service" in unit["Unit"]["After"]
    assert service["ProtectSystem"] == "strict" and "/var/lib/libvirt/qemu" in service["ReadOnlyPaths"]
