"""The Debian package (debian/, scripts/build-deb), end to end on this machine:
built, checked by lintian, its man page, completion and default settings
read, then installed with apt-get, run (--version, `check` on an empty setup,
the demo on an embedded libvirt) and purged without a trace.

Building needs root on Debian (scripts/build-deb installs what it lacks with
apt-get); installing changes this machine, so that test runs only where no
snapstore package, /usr/bin/snapstore or /etc/snapstore is here already (the
purge would take it away). The installed program runs with a clean
environment, so nothing of the checkout's venv can stand in for it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest

from snapstore import __version__, config
from snapstore.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DEBIAN = REPO / "debian"
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"}
# What postinst's deb-systemd-helper enable leaves, and purge must take away.
SYSTEMD_STATE = ("/etc/systemd/system/multi-user.target.wants/snapstore.service",
                 "/var/lib/systemd/deb-systemd-helper-enabled/snapstore.service.dsh-also",
                 "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/snapstore.service",
                 "/var/lib/systemd/deb-systemd-helper-masked/snapstore.service")
# pyproject.toml's dependencies and the Debian packages that provide them.
DEBIAN_NAMES = {"libvirt-python": "python3-libvirt", "lxml": "python3-lxml", "watchdog": "python3-watchdog",
                "systemd-python": "python3-systemd"}


def run(command: list[str], *, timeout: float = 600, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL, check=False)


def build_unavailable() -> str | None:
    if not Path("/etc/debian_version").exists() or not shutil.which("apt-get"):
        return "not Debian (no apt-get)"
    if os.geteuid() != 0:
        return "scripts/build-deb installs its build tools as root"
    return None


@pytest.fixture(scope="module")
def deb() -> Path:
    reason = build_unavailable()
    if reason:
        pytest.skip(reason)
    built = run([str(REPO / "scripts" / "build-deb"), "--no-lintian"])
    assert built.returncode == 0, built.stdout + built.stderr
    path = Path(built.stdout.splitlines()[-1])
    assert path.name == f"snapstore_{__version__}_all.deb" and path.is_file(), built.stdout
    return path


@pytest.fixture(scope="module")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deb")
    extracted = run(["dpkg-deb", "-x", str(deb), str(root)])
    assert extracted.returncode == 0, extracted.stderr
    return root


# --- the package's definition --------------------------------------------------------------


def control_depends() -> dict[str, str]:
    """The binary package's Depends: {package: version constraint}."""
    text = re.sub(r"(?m)^#.*\n", "", (DEBIAN / "control").read_text())
    field = re.search(r"(?ms)^Depends:(.*?)^\S", text)
    assert field, text
    found = {}
    for entry in field.group(1).split(","):
        match = re.fullmatch(r"\s*([a-z0-9.+-]+)\s*(?:\((.*)\))?\s*", entry)
        if match:
            found[match.group(1)] = (match.group(2) or "").replace(" ", "")
    return found


def test_depends_are_pyprojects_dependencies_as_debian_packages() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:>=(.*))?", requirement)
        assert match, f"{requirement}: only NAME or NAME>=VERSION maps to a Debian dependency here"
        name, version = match.groups()
        wanted[DEBIAN_NAMES[name]] = f">={version}" if version else ""
    depends = control_depends()
    assert {name: depends.get(name) for name in wanted} == wanted, depends


def test_changelog_version_is_the_programs() -> None:
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    assert first.startswith(f"snapstore ({__version__}) "), first


# --- the built package ---------------------------------------------------------------------


def test_lintian_finds_no_error_or_warning(deb: Path) -> None:
    """Every tag left is overridden in debian/, each override explained by a comment."""
    result = run(["lintian", "--fail-on", "error,warning", "--display-level", ">=warning", str(deb)])
    findings = [line for line in result.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert result.returncode == 0 and not findings, result.stdout + result.stderr
    for overrides in DEBIAN.glob("*lintian-overrides"):
        previous = ""
        for line in overrides.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                assert previous.startswith("#"), f"{overrides.name}: {line!r} is not explained by a comment"
            previous = line


def test_man_page_formats_without_warnings_and_covers_every_command(unpacked: Path) -> None:
    page = unpacked / "usr/share/man/man1/snapstore.1.gz"
    shown = run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", str(page)],
                env={**CLEAN_ENV, "MANWIDTH": "80"})
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    text = re.sub(r".\x08", "", shown.stdout)  # overstrike bold and underline
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    sections = {}
    for name, parser in commands.choices.items():
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        sections.update({f"{name} {action}": sub for action, sub in nested[0].choices.items()} if nested
                        else {name: parser})  # `fleet init`, `fleet list`…: a section each
    for name, parser in sections.items():
        assert re.search(rf"(?m)^   {name}$", text), f"no section for {name}"
        for action in parser._actions:
            for option in action.option_strings:
                assert option in text, f"{name} {option} is not in the man page"


def complete(script: Path, words: list[str]) -> list[str]:
    """What the completion offers for the last of ``words`` (COMP_* as bash sets them)."""
    quoted = " ".join(f"'{word}'" for word in words)
    program = (f"source '{script}'; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
               "_snapstore; printf '%s\\n' \"${COMPREPLY[@]}\"")
    result = run(["bash", "--norc", "-c", program], env=CLEAN_ENV)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_bash_completion_offers_commands_options_and_files(unpacked: Path, tmp_path: Path) -> None:
    script = unpacked / "usr/share/bash-completion/completions/snapstore"
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert complete(script, ["snapstore", "c"]) == [name for name in commands.choices if name.startswith("c")]
    assert complete(script, ["snapstore", "--state-dir", "/x", "tr"]) == ["transfer"]
    assert {"--repair", "--no-disks", "--json"} <= set(complete(script, ["snapstore", "check", "--"]))
    assert "--connect" in complete(script, ["snapstore", "-v", "dump", "vm1", "--c"])
    (tmp_path / "settings.toml").touch()
    (tmp_path / "sub").mkdir()
    assert sorted(complete(script, ["snapstore", "--config", f"{tmp_path}/"])) == [f"{tmp_path}/settings.toml",
                                                                                   f"{tmp_path}/sub"]
    assert complete(script, ["snapstore", "list", "--state-dir", f"{tmp_path}/"]) == [f"{tmp_path}/sub"]
    assert complete(script, ["snapstore", "dump", "--connect", "q"]) == []  # a URI: nothing to offer
    assert complete(script, ["snapstore", "fleet", ""]) == ["init", "list", "check", "pull"]  # a command's actions
    assert complete(script, ["snapstore", "fleet", "pull", "vm1", "--from"]) == ["--from-host"]


def test_default_settings_file_lists_every_setting_commented_out_with_its_default(unpacked: Path) -> None:
    text = (unpacked / "etc/snapstore/snapstore.toml").read_text()
    assert tomllib.loads(text) == {}, "a setting is not commented out"
    settings: dict[str, object] = {}
    lines = text.splitlines()
    section = ""  # "#[fleet]": the keys below are config.py's fleet_*
    for number, line in enumerate(lines):
        header = re.fullmatch(r"#\[(\w+)\]", line)
        section = f"{header.group(1)}_" if header else section
        match = re.fullmatch(r"#(\w+) = (.*)", line)
        if match:
            settings.update(tomllib.loads(f"{section}{match.group(1)} = {match.group(2)}"))
            assert re.fullmatch(r"# \S.*", lines[number - 1]), f"{match.group(1)} has no explanation above it"
    assert list(settings) == list(config.Config._fields), "every setting, in config.py's order"
    assert config.overlay(config.Config(), settings, "snapstore.toml") == config.Config(), "a default differs"


def test_postinst_starts_the_service_only_where_systemd_runs(deb: Path, tmp_path: Path) -> None:
    """dh_installsystemd's postinst: enable always (a later boot starts it),
    start (restart on upgrade) only under systemd, and never fail the install."""
    extracted = run(["dpkg-deb", "-e", str(deb), str(tmp_path / "control")])
    assert extracted.returncode == 0, extracted.stderr
    postinst = (tmp_path / "control" / "postinst").read_text()
    assert "deb-systemd-helper enable 'snapstore.service'" in postinst
    guarded = re.search(r"(?ms)^\tif \[ -d /run/systemd/system \]; then\n(.*?)^\tfi$", postinst)
    assert guarded and "deb-systemd-invoke $_dh_action 'snapstore.service' >/dev/null || true" in guarded.group(1)
    assert postinst.count("deb-systemd-invoke") == 1, postinst
    prerm = (tmp_path / "control" / "prerm").read_text()
    assert "deb-systemd-invoke stop 'snapstore.service'" in prerm
    # The daily check's timer is shipped, never enabled by the package (its metrics folder needs a group
    # first): enabled again only where an operator had enabled it, never started.
    assert "if deb-systemd-helper --quiet was-enabled 'snapstore-check.timer'; then" in postinst
    assert "deb-systemd-invoke start 'snapstore-check" not in postinst


def test_unit_runs_the_packages_program(unpacked: Path) -> None:
    unit = (unpacked / "lib/systemd/system/snapstore.service").read_text()
    shipped = (REPO / "systemd" / "snapstore.service").read_text()
    assert re.findall(r"(?m)^ExecStart=.*", unit) == ["ExecStart=/usr/bin/snapstore daemon"]
    assert "/usr/local/" not in unit
    same = [line for line in unit.splitlines() if not line.startswith(("ExecStart=", "Documentation="))]
    assert same == [line for line in shipped.splitlines() if not line.startswith(("ExecStart=", "Documentation="))]


# --- installed on this machine ---------------------------------------------------------------


def install_unavailable() -> str | None:
    if known_to_dpkg():
        return "a snapstore package is known to dpkg here; the test would purge it (apt-get purge snapstore first)"
    for path in ("/usr/bin/snapstore", "/etc/snapstore"):
        if os.path.lexists(path):
            return f"{path} is here already; installing and purging the package would replace it"
    return None


def deb_paths(deb: Path) -> list[str]:
    """Every path the .deb holds (folders too), as dpkg -L names them."""
    listing = run(["bash", "-c", f"set -o pipefail; dpkg-deb --fsys-tarfile '{deb}' | tar -tf -"], env=CLEAN_ENV)
    assert listing.returncode == 0, listing.stderr
    return sorted({"/" + name.removeprefix("./").rstrip("/") for name in listing.stdout.splitlines()} - {"/"})


def installed_status() -> str:
    """dpkg's status of snapstore: "install ok installed"; "" once purged."""
    return run(["dpkg-query", "-W", "-f=${Status}", "snapstore"]).stdout.strip()


def known_to_dpkg() -> bool:
    return installed_status() not in ("", "unknown ok not-installed")


def test_installed_package_runs_and_purges_without_a_trace(deb: Path, tmp_path: Path) -> None:
    reason = build_unavailable() or install_unavailable()
    if reason:
        pytest.skip(reason)
    paths = deb_paths(deb)
    there_before = {path for path in paths if os.path.lexists(path)}
    state_before = os.path.lexists("/var/lib/snapstore")
    env = {**CLEAN_ENV, "DEBIAN_FRONTEND": "noninteractive"}
    installed = run(["apt-get", "install", "-y", "--no-install-recommends", str(deb)], env=env)
    try:
        check_installed(installed, paths, tmp_path)
        listed = [path for path in run(["dpkg", "-L", "snapstore"]).stdout.splitlines() if path != "/."]
        assert sorted(listed) == paths, "dpkg -L lists what the .deb holds"
        purged = run(["apt-get", "purge", "-y", "snapstore"], env=env)
        assert purged.returncode == 0, purged.stdout + purged.stderr
    finally:
        if known_to_dpkg():
            run(["apt-get", "purge", "-y", "snapstore"], env=env)

    assert not known_to_dpkg(), installed_status()
    left = [path for path in listed if path not in there_before and os.path.lexists(path)]
    assert not left, f"left behind by the purge: {left}"
    assert not os.path.lexists("/etc/snapstore")
    assert not [path for path in SYSTEMD_STATE if os.path.lexists(path)], "the unit's enablement is left"
    assert os.path.lexists("/var/lib/snapstore") == state_before, "the package made /var/lib/snapstore"
    assert not os.path.lexists("/usr/lib/python3/dist-packages/snapstore"), "compiled modules are left"


def check_installed(installed: subprocess.CompletedProcess[str], paths: list[str], tmp_path: Path) -> None:
    output = installed.stdout + installed.stderr
    assert installed.returncode == 0, output
    status = installed_status()
    assert status == "install ok installed", status + output  # postinst ran to its end
    assert "Could not execute systemctl" not in output and "not been booted with systemd" not in output, output
    if not os.path.isdir("/run/systemd/system"):
        # Without systemd the unit is enabled for a later boot, and postinst's
        # deb-systemd-invoke start is skipped, not failed.
        assert os.path.islink(SYSTEMD_STATE[0]) and os.readlink(SYSTEMD_STATE[0]).endswith("/snapstore.service")
    verified = run(["systemd-analyze", "verify", "/lib/systemd/system/snapstore.service"], env=CLEAN_ENV)
    assert verified.returncode == 0 and verified.stderr == "", verified.stderr
    assert "/usr/bin/snapstore" in paths and "/etc/snapstore/snapstore.toml" in paths
    assert not [path for path in paths if path.startswith("/var/")], "the state folder is the unit's"

    version = run(["/usr/bin/snapstore", "--version"], env=CLEAN_ENV, cwd=tmp_path)
    assert (version.returncode, version.stdout) == (0, f"snapstore {__version__}\n"), version.stderr
    library = run(["/usr/bin/python3", "-c", "import snapstore; print(snapstore.__file__)"],
                  env=CLEAN_ENV, cwd=tmp_path)
    assert library.stdout.startswith("/usr/lib/python3/dist-packages/snapstore/"), library.stdout + library.stderr
    man = run(["man", "-w", "snapstore"], env=CLEAN_ENV)
    assert man.stdout.strip() == "/usr/share/man/man1/snapstore.1.gz", man.stdout + man.stderr

    # check on an empty setup: an empty settings file, empty libvirt roots and
    # state folder; then the installed default settings file (all comments).
    folders = ["--libvirt-dir", tmp_path / "snapshot", "--checkpoint-dir", tmp_path / "checkpoint",
               "--state-dir", tmp_path / "state"]
    for folder in folders[1::2]:
        Path(folder).mkdir()
    (tmp_path / "snapstore.toml").write_text("")
    for settings in (["--config", str(tmp_path / "snapstore.toml")], []):
        checked = run(["/usr/bin/snapstore", *settings, *map(str, folders), "check", "--json"],
                      env=CLEAN_ENV, cwd=tmp_path, timeout=120)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        summary = json.loads(checked.stdout)["summary"]
        assert summary["errors"] == summary["warnings"] == summary["domains"] == 0, checked.stdout

    # The demo, with Debian's python3 and the installed program and library;
    # in a short folder: qemu's monitor socket path must stay under 108 bytes.
    short = tempfile.mkdtemp(prefix="snapstore-pkg-")
    try:
        demo = run([str(REPO / "scripts" / "demo"), "--installed"], env={**CLEAN_ENV, "TMPDIR": short},
                   timeout=300)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "commands run by /usr/bin/snapstore" in demo.stdout and "/usr/lib/python3/dist-packages" in demo.stdout
    assert "against libvirt's API view ... OK" in demo.stdout, demo.stdout + demo.stderr
