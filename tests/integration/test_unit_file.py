"""The shipped systemd unit: systemd's own checks (no systemd as PID 1 needed),
what the one capability it grants can reach, and the interpreter
scripts/install-service builds the service's venv from.

test_confinement_under_systemd boots systemd (this host's, as PID 1 of a new
pid and mount namespace) and runs the real unit in it, when this machine
allows that (root, unshare, overlayfs); the other tests read the unit.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "snapstore.service"
INSTALL_SERVICE = REPO / "scripts" / "install-service"
INSTALLED_BINARY = "/usr/local/bin/snapstore"
# libvirt's qemu driver roots (DESIGN §1): all the capability is for.
ROOTS = ("/var/lib/libvirt/qemu/snapshot", "/var/lib/libvirt/qemu/checkpoint")
# What else the unit mounts back into the folders it empties: each holds
# nothing only root may read (a new entry here is a decision: review it).
OTHER_BINDS = {"/etc/snapstore", "/etc/ld.so.cache", "/etc/localtime", "/opt/snapstore",
               "/run/systemd/journal/socket", "/run/systemd/notify"}
# node_exporter's textfile collector folder (Debian's default), for metrics_file.
METRICS_FOLDER = "/var/lib/prometheus/node-exporter"
# Mount settings that can give the service a view of a path.
GRANTS = ("ReadOnlyPaths", "ReadWritePaths", "ExecPaths", "BindPaths", "BindReadOnlyPaths")


def local_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at this checkout's snapstore, which
    `verify` requires to exist; every other line is the shipped one."""
    binary = Path(sys.executable).with_name("snapstore")
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(INSTALLED_BINARY, str(binary)))
    return copy


def directives(section: str = "Service") -> dict[str, list[str]]:
    """Each setting of a section with every value it is given, in order
    (systemd appends repeated list settings, as configparser does not)."""
    found: dict[str, list[str]] = {}
    current = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def paths(key: str) -> list[str]:
    """The paths of a path-list setting, '-'/'+' prefixes and ':options' kept."""
    return [word for value in directives().get(key, []) for word in value.split()]


def bare(word: str) -> str:
    """A path of a path-list setting without its '-'/'+' prefix and ':dest[:options]'."""
    return word.lstrip("-+").split(":")[0]


def inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def visible(path: str) -> bool:
    """Whether ``path`` shows through the unit's mounts: systemd applies them
    shallow to deep, so the deepest one at or above ``path`` decides."""
    rules = [(bare(w), False) for w in paths("TemporaryFileSystem") + paths("InaccessiblePaths")]
    rules += [(bare(w), True) for w in paths("BindReadOnlyPaths") + paths("BindPaths")]
    if directives().get("ProtectHome") in (["yes"], ["true"]):
        rules += [("/root", False), ("/home", False), ("/run/user", False)]
    deciding = [(len(folder), shown) for folder, shown in rules if inside(path, folder)]
    return max(deciding)[1] if deciding else True


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(local_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_unit_security_exposure_is_at_most_1(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(local_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for snapstore.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 1.0, result.stdout


def test_fleet_drop_in_opens_tcp_to_the_database_only(tmp_path: Path) -> None:
    """systemd/fleet.conf (README "Fleet"): the unit with it verifies; it
    allows IP sockets, to the allow-listed address only, and shows the
    machine id and the resolver; exposure stays low."""
    unit = local_copy(tmp_path)
    drop_in = tmp_path / "snapstore.service.d" / "fleet.conf"
    drop_in.parent.mkdir()
    drop_in.write_text((UNIT.parent / "fleet.conf").read_text())
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and verified.stderr.strip() == "", verified.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                              text=True, timeout=60)
    assert "Service may allocate Internet sockets" in security.stdout, "the drop-in was not applied"
    assert "IP address allow list with non-localhost entries" in security.stdout, security.stdout
    match = re.search(r"Overall exposure level for snapstore.service: (\d+\.\d+)", security.stdout)
    assert match and float(match.group(1)) <= 2.0, security.stdout
    text = drop_in.read_text()
    assert "IPAddressDeny=any" in text and "/etc/machine-id" in text


def test_unit_is_a_notify_service_with_watchdog_and_state_dir() -> None:
    service, unit = directives(), directives("Unit")
    assert service["Type"] == ["notify"] and service["Restart"] == ["on-failure"]
    assert service["WatchdogSec"] and service["StateDirectory"] == ["snapstore"]
    assert service["ExecStart"] == [f"{INSTALLED_BINARY} daemon"]
    assert "libvirtd.service" in unit["After"][0] and "virtqemud.service" in unit["After"][0]
    assert service["ProtectSystem"] == ["strict"] and service["ProtectHome"] == ["yes"]


def test_start_timeout_covers_a_large_hosts_first_reconcile() -> None:
    """READY=1 comes after every domain is reconciled: ~1.3 s per 1,000
    snapshots on the bench VM, so 100,000 snapshots need more than 130 s
    (the daemon also extends the timeout while it makes progress)."""
    (value,) = directives()["TimeoutStartSec"]
    result = subprocess.run(["systemd-analyze", "timespan", value],
                            capture_output=True, text=True, timeout=60, check=False)
    usec = re.search(r"μs: (\d+)", result.stdout)
    assert usec, result.stdout + result.stderr  # "infinity" has no μs: a hung start must still fail
    assert int(usec.group(1)) >= 100_000 * 1.3e-3 * 1e6


def test_no_grant_of_libvirts_whole_tree() -> None:
    """ReadOnlyPaths=/var/lib/libvirt/qemu (or any folder above it) shows the
    capability libvirt's secrets, saved memory and NVRAM: only the roots are
    mounted back."""
    granted = {key: [bare(word) for word in paths(key)] for key in GRANTS}
    assert "/var/lib/libvirt/qemu" not in granted["ReadOnlyPaths"]
    for key, folders in granted.items():
        for folder in folders:
            assert not inside("/var/lib/libvirt/qemu", folder), f"{key}={folder} shows all of libvirt's tree"
    assert not paths("ReadOnlyPaths"), "every read grant is a BindReadOnlyPaths= entry"
    # The one writable grant: node_exporter's textfile folder (metrics_file), whose files are published anyway.
    assert paths("BindPaths") == [f"-{METRICS_FOLDER}"]


def test_capability_reaches_only_the_two_libvirt_roots() -> None:
    service = directives()
    assert service["AmbientCapabilities"] == ["CAP_DAC_READ_SEARCH"]
    assert service["CapabilityBoundingSet"] == ["CAP_DAC_READ_SEARCH"]
    binds = paths("BindReadOnlyPaths")
    libvirt = {word for word in binds if inside(bare(word), "/var/lib/libvirt")}
    # '-': a root libvirt has not created yet does not fail the start.
    assert libvirt == {f"-{root}" for root in ROOTS}
    assert {bare(word) for word in binds if word not in libvirt} == OTHER_BINDS
    for root in ROOTS:
        assert visible(f"{root}/vm1/s1.xml")
    for secret in ("/var/lib/libvirt/qemu/save/vm1.save", "/var/lib/libvirt/qemu/nvram/vm1_VARS.fd",
                   "/var/lib/libvirt/qemu/ram/vm1", "/var/lib/libvirt/qemu/dump/vm1.core",
                   "/var/lib/libvirt/qemu/domain-1-vm1/master-key.aes", "/var/lib/libvirt/qemu/channel/target",
                   "/var/lib/libvirt/qemu/vm1.xml", "/var/lib/libvirt/images/vm1.qcow2",
                   "/var/lib/libvirt/dnsmasq/default.leases", "/etc/libvirt/secrets/uuid.base64",
                   "/etc/libvirt/qemu/vm1.xml", "/run/libvirt/qemu/vm1.xml", "/run/libvirt/libvirtd.pid",
                   "/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/ssh/ssh_host_ed25519_key",
                   "/etc/ssl/private/key.pem", "/etc/sudoers", "/etc/credstore/key", "/var/backups/shadow.bak",
                   "/var/log/auth.log", "/var/spool/cron/crontabs/root", "/var/lib/private/other/key",
                   "/run/credentials/other.service/key", "/root/.ssh/id_ed25519", "/home/u/.ssh/id_ed25519",
                   "/srv/vm.img", "/mnt/vm.img", "/media/usb/key", "/boot/grub/grub.cfg",
                   "/opt/other/secret", "/lost+found/#123"):
        assert not visible(secret), f"the capability can read {secret}"
    for needed in ("/usr/bin/python3", "/usr/lib/python3/dist-packages", "/etc/snapstore/snapstore.toml",
                   "/etc/ld.so.cache", "/opt/snapstore/bin/python", "/run/systemd/journal/socket"):
        assert visible(needed), f"the daemon needs {needed}"


# --- scripts/install-service -----------------------------------------------------------------


def print_python(tmp_path: Path, chosen: str | None = None, path_first: Path | None = None):
    env = {k: v for k, v in os.environ.items() if k != "SNAPSTORE_SERVICE_PYTHON"}
    if chosen is not None:
        env["SNAPSTORE_SERVICE_PYTHON"] = chosen
    if path_first is not None:
        env["PATH"] = f"{path_first}:{env.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run([str(INSTALL_SERVICE), "--print-python"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60, check=False)


def fake_bin(tmp_path: Path, target: str) -> Path:
    """A folder first on PATH whose python3 points at ``target`` (a pyenv shim, say)."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    (folder / "python3").symlink_to(target)
    return folder


@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="no /usr/bin/python3 (Debian's python3)")
def test_install_service_builds_the_venv_from_debians_python(tmp_path: Path) -> None:
    """Whatever python3 comes first on PATH (here one under /root, as pyenv's
    is): the venv's interpreter is /usr/bin/python3, which the service sees."""
    result = print_python(tmp_path, path_first=fake_bin(tmp_path, "/root/.pyenv/shims/python3"))
    assert result.returncode == 0, result.stderr
    chosen = result.stdout.strip()
    assert chosen == os.path.realpath("/usr/bin/python3")
    assert not inside(chosen, "/root") and not inside(chosen, "/home") and inside(chosen, "/usr")


@pytest.mark.parametrize("target", ["/root/.pyenv/versions/3.11.7/bin/python3.11", "/home/dev/venv/bin/python"])
def test_install_service_refuses_an_interpreter_under_root_or_home(tmp_path: Path, target: str) -> None:
    """Named directly, or as a bare name found on PATH, through a symlink or not."""
    link = tmp_path / "python"
    link.symlink_to(target)
    cases = [(target, None), (str(link), None)]
    if os.access(target, os.X_OK):  # PATH lookup skips what is not there
        cases.append(("python3", fake_bin(tmp_path, target)))
    for chosen, path_first in cases:
        result = print_python(tmp_path, chosen, path_first)
        assert result.returncode == 1 and result.stdout == "", result.stdout
        assert f"resolves to {target}" in result.stderr and "ProtectHome=yes" in result.stderr, result.stderr


def test_install_service_refuses_an_interpreter_the_unit_hides(tmp_path: Path) -> None:
    elsewhere = tmp_path / "python3"
    elsewhere.write_text("#!/bin/sh\n")
    elsewhere.chmod(0o755)
    result = print_python(tmp_path, str(elsewhere))
    assert result.returncode == 1 and "outside /usr" in result.stderr, result.stderr
    result = print_python(tmp_path, "no-such-python")
    assert result.returncode == 1 and "no such interpreter" in result.stderr, result.stderr


def test_install_service_never_builds_from_python3_on_path() -> None:
    script = INSTALL_SERVICE.read_text()
    assert not re.search(r"(?m)^[^#]*\bpython3?\s+-m\s+venv", script), "a bare python3 is PATH's (pyenv's) one"
    assert re.search(r'(?m)^\s*"\$python" -m venv', script)


# --- the unit under systemd ------------------------------------------------------------------

# Run by the service's ExecStartPre= (so: its sandbox, user and capability):
# prints "cap-only: PATH ENTRIES" for each folder or file it can read only
# through a capability, and "seen: PATH yes|no" for each argument.
PROBE = r'''
import os, stat, sys
me, group = os.getuid(), os.getgid()

def plain(st, need):
    """Readable (need=r) or listable and searchable (need=r+x) without a capability."""
    m = st.st_mode
    if st.st_uid == me:
        return m & (need << 6) == need << 6
    if st.st_gid == group:
        return m & (need << 3) == need << 3
    return m & need == need

for path in sys.argv[1:]:
    print("seen:", path, "yes" if os.path.lexists(path) else "no", flush=True)
for top in ("etc", "var", "run", "opt", "usr", "srv", "mnt", "media", "boot", "root", "home", "tmp", "lost+found"):
    for folder, dirs, files in os.walk("/" + top, onerror=lambda e: None):
        for name in dirs + files:
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
                if stat.S_ISDIR(st.st_mode) and not plain(st, 5):
                    print("cap-only:", path, len(os.listdir(path)), flush=True)
                elif stat.S_ISREG(st.st_mode) and not plain(st, 4):
                    os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
                    print("cap-only:", path, 1, flush=True)
            except OSError:
                pass
'''

# Run by `unshare --pid --fork --mount --propagation private`: everything the
# service or systemd writes lands in tmpfs or overlays; then systemd is PID 1.
BOOT = r'''
set -euo pipefail
mount -t proc proc /proc
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/sdtest/units/snapstore.service.d
cp "$T"/units/* /run/sdtest/units/
cp "$T"/probe.conf /run/sdtest/units/snapstore.service.d/
for unit in systemd-journald.service systemd-journald.socket systemd-journald-dev-log.socket \
            systemd-journald-audit.socket; do
    ln -s /lib/systemd/system/$unit /run/sdtest/units/$unit
done
for folder in /var/lib /var/log /opt /usr/local/bin; do mount -t tmpfs -o mode=0755 tmpfs $folder; done
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
mkdir -p "$T"/etc-up "$T"/etc-work
mount -t overlay overlay -o lowerdir=/etc,upperdir="$T"/etc-up,workdir="$T"/etc-work /etc
q=/var/lib/libvirt/qemu
mkdir -p $q/snapshot/vm1 $q/checkpoint/vm1 $q/save $q/nvram /etc/libvirt/secrets /run/libvirt/qemu \
         /run/credentials/other.service
cp "$T"/s1.xml $q/snapshot/vm1/s1.xml
cp "$T"/c1.xml $q/checkpoint/vm1/c1.xml
for secret in $q/save/vm1.save $q/nvram/vm1_VARS.fd /etc/libvirt/secrets/uuid.base64 \
              /run/libvirt/qemu/vm1.xml /run/libvirt/libvirtd.pid /run/credentials/other.service/key; do
    echo secret > $secret
done
chmod -R go-rwx /var/lib/libvirt /etc/libvirt/secrets /run/libvirt /run/credentials
# The service's venv, as install-service builds it from Debian's python; its
# packages are this checkout's venv's (same CPython minor version).
/usr/bin/python3 -m venv --without-pip /opt/snapstore
echo "import site; site.addsitedir('$SITE')" > /opt/snapstore/lib/python$PYVER/site-packages/dev.pth
printf '#!/opt/snapstore/bin/python\nimport sys\nfrom snapstore.cli import main\nsys.exit(main())\n' \
    > /usr/local/bin/snapstore
chmod 0755 /usr/local/bin/snapstore
cp "$T"/probe.py /opt/snapstore/probe.py
mount -t tmpfs -o mode=1777 tmpfs /tmp
export SYSTEMD_UNIT_PATH=/run/sdtest/units container=snapstore-test
exec /lib/systemd/systemd --system --unit=sdtest.target --log-target=null --show-status=no \
    </dev/null >/dev/null 2>&1
'''

# Probed paths: (path, whether the service must see it).
SEEN = [(f"{ROOTS[0]}/vm1/s1.xml", True), (f"{ROOTS[1]}/vm1/c1.xml", True),
        ("/var/lib/snapstore", True), ("/etc/snapstore", True), ("/run/systemd/journal/socket", True),
        ("/etc/shadow", False), ("/etc/gshadow", False), ("/etc/libvirt/secrets/uuid.base64", False),
        ("/var/lib/libvirt/qemu/save/vm1.save", False), ("/var/lib/libvirt/qemu/nvram/vm1_VARS.fd", False),
        ("/run/libvirt/qemu/vm1.xml", False), ("/run/libvirt/libvirtd.pid", False),
        ("/run/credentials/other.service/key", False), ("/var/log", False), ("/var/backups", False)]
# Folders only root may list, that the capability lists, whose content is public.
PUBLIC = {"/usr/share/polkit-1/rules.d"}  # rules shipped in packages
# Top-level folders of a Debian system the unit hides (emptied, or all but a
# few entries mounted back). The probe walks these and /usr; a top-level
# folder a host adds (/data, /vmstore) stays visible unless a drop-in hides it.
HIDDEN_TOP = {"boot", "etc", "home", "lost+found", "media", "mnt", "opt", "root", "run", "srv", "tmp", "var"}


def systemd_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("unshare", "nsenter", "/lib/systemd/systemd", "/usr/bin/python3"):
        if not shutil.which(tool):
            return f"no {tool}"
    with open("/proc/filesystems") as filesystems:
        if "overlay" not in filesystems.read():
            return "no overlayfs"
    debian = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2])"],
                            capture_output=True, text=True, check=False).stdout.strip()
    if debian != str(tuple(sys.version_info[:2])):
        return f"this venv's python {sys.version_info[:2]} is not /usr/bin/python3's {debian}"
    for tree in (REPO, Path(sys.prefix)):
        if any(inside(str(tree.resolve()), f"/{top}") for top in HIDDEN_TOP):
            return f"{tree} is in a folder the unit hides"
    if subprocess.run(["unshare", "--pid", "--fork", "--mount", "true"],
                      capture_output=True, timeout=60, check=False).returncode:
        return "cannot unshare pid and mount namespaces"
    return None


def _children(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return []


def _comm(pid: str) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""


class Booted:
    """systemd as PID 1 of a new pid and mount namespace; ``run`` runs a command in it."""

    def __init__(self, tmp_path: Path) -> None:
        site = next(Path(sys.prefix).glob("lib/python3*/site-packages"))
        env = dict(os.environ, T=str(tmp_path), SITE=str(site), PYVER="{}.{}".format(*sys.version_info[:2]))
        self.outer = subprocess.Popen(["unshare", "--pid", "--fork", "--mount", "--propagation", "private",
                                       "bash", "-c", BOOT], env=env, start_new_session=True)
        self.pid = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = _children(self.outer.pid)
            if found and _comm(found[0]) == "systemd":
                self.pid = int(found[0])
                if self.run("systemctl", "show", "-p", "Version", check=False).returncode == 0:
                    return
            if self.outer.poll() is not None:
                break
            time.sleep(0.2)
        self.close()
        pytest.fail("systemd did not come up in the namespace")

    def run(self, *command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-p", *command],
                                capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode:
            raise AssertionError(f"{command}: {result.returncode}\n{result.stdout}{result.stderr}")
        return result

    def close(self) -> None:
        if self.pid is not None:
            # stop first: systemd removes what the service made (its PrivateTmp, the dynamic user)
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.run("systemctl", "stop", "snapstore.service", check=False, timeout=60)
            with contextlib.suppress(OSError):
                os.kill(self.pid, 9)  # PID 1 of the namespace: every process in it goes with it
        with contextlib.suppress(subprocess.SubprocessError):
            self.outer.wait(timeout=30)


def test_confinement_under_systemd(tmp_path: Path) -> None:
    """The shipped unit, unchanged, under this host's systemd: the daemon
    starts (READY=1), commits the roots' domain, and what it can read only
    through CAP_DAC_READ_SEARCH is inside the two roots."""
    reason = systemd_unavailable()
    if reason:
        pytest.skip(f"systemd cannot be booted in a namespace here: {reason}")
    import samples  # tests/, on the path through tests/conftest.py

    (tmp_path / "units").mkdir()
    shutil.copy(UNIT, tmp_path / "units" / "snapstore.service")
    for target in ("sdtest", "sysinit", "basic", "shutdown", "local-fs", "multi-user", "sockets"):
        (tmp_path / "units" / f"{target}.target").write_text("[Unit]\nDefaultDependencies=no\n")
    (tmp_path / "probe.py").write_text(PROBE)
    (tmp_path / "probe.conf").write_text(
        "[Service]\nExecStartPre=/usr/bin/python3 /opt/snapstore/probe.py " + " ".join(p for p, _ in SEEN) + "\n")
    (tmp_path / "s1.xml").write_bytes(samples.snapshot_xml("s1", None, True))
    (tmp_path / "c1.xml").write_text("<domaincheckpoint><name>c1</name><creationTime>1700000000</creationTime>"
                                     "</domaincheckpoint>\n")
    booted = Booted(tmp_path)
    try:
        booted.run("systemctl", "start", "systemd-journald.service")
        started = booted.run("systemctl", "start", "snapstore.service", check=False)
        log = booted.run("journalctl", "--no-pager", "-o", "cat", "-u", "snapstore.service").stdout
        assert started.returncode == 0, started.stderr + log
        status = booted.run("systemctl", "show", "-p", "ActiveState", "-p", "StatusText",
                            "snapstore.service").stdout
        assert "ActiveState=active" in status and "1 snapshots, 1 checkpoints" in status, status + log
        assert "committed 1 snapshots" in log, log
        booted.run("test", "-s", "/var/lib/private/snapstore/snapshots/vm1.xml")
    finally:
        booted.close()

    seen = dict(re.findall(r"(?m)^seen: (\S+) (yes|no)$", log))
    for path, shown in SEEN:
        assert seen.get(path) == ("yes" if shown else "no"), f"{path}: {seen.get(path)}\n{log}"
    reached = [(path, int(count)) for path, count in re.findall(r"(?m)^cap-only: (.+) (\d+)$", log)]
    assert any(inside(path, ROOTS[0]) for path, _ in reached), log  # the probe did reach through
    beyond = [path for path, count in reached
              if count and path not in PUBLIC and not any(inside(path, root) for root in ROOTS)]
    assert not beyond, "the capability reads beyond the libvirt roots:\n" + "\n".join(beyond)
