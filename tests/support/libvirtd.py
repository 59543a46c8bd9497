"""A libvirtd of the test session's own, for tests that boot real VMs (``qemu:///system``).

The ``libvirtd`` session fixture needs root and the Debian packages in
PACKAGES (it fails naming the missing ones; scripts/lib.sh installs them). It
changes the system only where ``qemu:///system`` leaves no choice: it creates
the ``libvirt-qemu`` user if missing (libvirtd 9.0 wants it even when QEMU runs
as root) and makes /etc/libvirt/qemu.conf set QEMU_SETTINGS, rewriting the file
only if they differ (other settings are kept; replaced lines are commented out).

libvirtd runs in the foreground as a child of pytest and is stopped by that
pid (SIGTERM, then SIGKILL); its pid-death signal stops it if pytest dies. It
keeps the default pid file, whose lock is libvirtd's own guard against a
second daemon; its output goes to LOG_FILE (kept until the next session). A
libvirtd already answering on the system socket is never reused, whoever
started it: the fixture fails, naming its pid, since its configuration and
domains are unknown. The ``default`` network is started if it is not active,
and then stopped at the end; domains that appeared during the session are
destroyed and undefined before the daemon stops.

QEMU and dnsmasq outlive libvirtd, so a session killed before its teardown
would leave them. STATE_FILE records what the session found and started; the
next session, seeing it with its owner dead, first destroys that session's
domains and stops the network if that session had started it.
"""

from __future__ import annotations

import atexit
import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

URI = "qemu:///system"
NETWORK = "default"
PACKAGES = (
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
    "libvirt-daemon-config-network",
    "qemu-system-x86",
    "dnsmasq-base",
    "iptables",
)
SOCKET = Path("/run/libvirt/libvirt-sock")
PID_FILE = Path("/run/libvirtd.pid")
STATE_FILE = Path("/run/rpclib-test-libvirtd.json")  # /run: cleared with the VMs at boot
LOG_FILE = Path(tempfile.gettempdir()) / "rpclib-test-libvirtd.log"  # the last session's
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
QEMU_SETTINGS = {"user": "root", "group": "root", "stdio_handler": "file"}
QEMU_USER = "libvirt-qemu"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class LibvirtdError(RuntimeError):
    """The session's libvirtd could not be set up, started or stopped."""


def missing_packages(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """The Debian packages of ``packages`` that are not installed."""
    missing = []
    for package in packages:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
        )
        if result.returncode != 0 or not result.stdout.endswith("install ok installed"):
            missing.append(package)
    return missing


def ensure_qemu_user() -> None:
    """Create the ``libvirt-qemu`` system user (and its group) if missing."""
    try:
        pwd.getpwnam(QEMU_USER)
        return
    except KeyError:
        pass
    try:
        grp.getgrnam(QEMU_USER)
        group = ["--gid", QEMU_USER]
    except KeyError:
        group = ["--user-group"]
    cmd = ["useradd", "--system", *group, "--no-create-home", "--home-dir", "/var/lib/libvirt"]
    result = subprocess.run(
        [*cmd, "--shell", "/usr/sbin/nologin", QEMU_USER], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise LibvirtdError(f"useradd {QEMU_USER} failed: {result.stderr.strip()}")


def ensure_qemu_conf(path: Path = QEMU_CONF) -> bool:
    """Make ``path`` set QEMU_SETTINGS; True if the file had to be rewritten."""
    lines = path.read_text().splitlines() if path.exists() else []
    wanted = {key: f'"{value}"' for key, value in QEMU_SETTINGS.items()}
    current: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            current[key.strip()] = value.split("#", 1)[0].strip()
    if all(current.get(key) == value for key, value in wanted.items()):
        return False
    kept = [
        f"#{line}"
        if not line.lstrip().startswith("#") and line.partition("=")[0].strip() in wanted
        else line
        for line in lines
    ]
    kept += [""] if kept else []
    kept += ["# Set by rpclib's tests (tests/support/libvirtd.py): QEMU runs as root."]
    kept += [f"{key} = {value}" for key, value in wanted.items()]
    part = path.with_name(f".{path.name}.rpclib")
    part.write_text("\n".join(kept) + "\n")
    part.chmod(path.stat().st_mode & 0o777 if path.exists() else 0o600)
    part.replace(path)
    return True


def _socket_answers(path: Path = SOCKET) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def _left_by_dead_session() -> dict[str, Any] | None:
    """STATE_FILE of a session that died before its teardown (None: there is none)."""
    try:
        state: dict[str, Any] = json.loads(STATE_FILE.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        STATE_FILE.unlink()
        return None
    if Path(f"/proc/{state['pid']}").exists():
        raise LibvirtdError(f"test session pid {state['pid']} still owns {STATE_FILE}")
    return state


def _pid_in(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


class Libvirtd:
    """One libvirtd started by this process; ``close()`` leaves nothing of it behind."""

    def __init__(self) -> None:
        self.uri = URI
        self.log = LOG_FILE
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Any = None  # libvirt.virConnect
        self._domains_before: set[str] = set()
        self._started_network = False
        atexit.register(self.close)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Set the system up, start libvirtd and the default network."""
        if os.geteuid() != 0:
            raise LibvirtdError("booting real VMs needs root (libvirtd on qemu:///system)")
        missing = missing_packages()
        if missing:
            raise LibvirtdError(f"missing Debian packages: {' '.join(missing)}")
        if _socket_answers():
            raise LibvirtdError(
                f"a libvirtd not started by this session answers on {SOCKET} (pid file "
                f"{PID_FILE}: {_pid_in(PID_FILE)}); stop it first, the tests use their own"
            )
        left = _left_by_dead_session()
        ensure_qemu_user()
        ensure_qemu_conf()
        Path("/var/log/libvirt/qemu").mkdir(parents=True, exist_ok=True)
        cmd = ["libvirtd"]
        if shutil.which("setpriv"):
            cmd = ["setpriv", "--pdeathsig", "TERM", "--", *cmd]  # execs: same pid
        with open(self.log, "wb") as out:
            self._proc = subprocess.Popen(
                cmd,
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._conn = self._connect()
        self._domains_before = {d.UUIDString() for d in self._conn.listAllDomains()}
        if left is not None:  # the dead session's domains, and network if it started it
            self._domains_before &= set(left["domains_before"])
            self._started_network = bool(left["started_network"])
            self._clean_up_libvirt()
        self._start_network()
        STATE_FILE.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "domains_before": sorted(self._domains_before),
                    "started_network": self._started_network,
                }
            )
        )

    def _connect(self) -> Any:
        import libvirt

        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise LibvirtdError(
                    f"libvirtd exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            if SOCKET.exists():
                with contextlib.suppress(libvirt.libvirtError):
                    return libvirt.open(self.uri)
            if time.monotonic() > deadline:
                raise LibvirtdError(f"libvirtd not ready after {START_TIMEOUT:g} s")
            time.sleep(0.1)

    def _start_network(self) -> None:
        import libvirt

        try:
            network = self._conn.networkLookupByName(NETWORK)
        except libvirt.libvirtError as exc:
            raise LibvirtdError(
                f"libvirt has no {NETWORK!r} network ({exc}); it comes with the Debian "
                "package libvirt-daemon-config-network (/etc/libvirt/qemu/networks/default.xml)"
            ) from exc
        if network.isActive() != 1:
            try:
                network.create()
            except libvirt.libvirtError as exc:
                raise LibvirtdError(f"starting network {NETWORK!r} failed: {exc}") from exc
            self._started_network = True

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        """Remove the session's domains and network, then stop libvirtd by its pid."""
        atexit.unregister(self.close)
        problems = []
        if self._conn is not None:
            try:
                self._clean_up_libvirt()
                STATE_FILE.unlink(missing_ok=True)
            except Exception as exc:
                problems.append(f"cleaning up libvirt: {exc}")
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        try:
            self._stop_daemon()
        except LibvirtdError as exc:
            problems.append(str(exc))
        if problems:
            raise LibvirtdError("; ".join(problems))

    def _clean_up_libvirt(self) -> None:
        """Destroy and undefine the domains not in ``_domains_before``; stop our network."""
        import libvirt

        gone = (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID)  # stopped meanwhile
        failed = []
        for domain in self._conn.listAllDomains():
            if domain.UUIDString() in self._domains_before:
                continue
            for step in (domain.destroy, domain.undefine):
                try:
                    step()
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() not in gone:
                        failed.append(f"domain {domain.name()}: {exc}")
        if self._started_network:
            network = self._conn.networkLookupByName(NETWORK)
            if network.isActive() == 1:
                network.destroy()
            self._started_network = False
        if failed:
            raise LibvirtdError("; ".join(failed))

    def _stop_daemon(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                raise LibvirtdError(
                    f"libvirtd (pid {proc.pid}) ignored SIGTERM for {STOP_TIMEOUT:g} s; killed"
                ) from None


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[str]:
    """The URI of a libvirtd started for this session, with the default network up."""
    daemon = Libvirtd()
    try:
        daemon.start()
    except Exception as exc:
        with contextlib.suppress(Exception):
            daemon.close()
        pytest.fail(f"could not start libvirtd for the real-VM tests: {exc}", pytrace=False)
    try:
        yield daemon.uri
    finally:
        daemon.close()
