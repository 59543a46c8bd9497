"""Today's brokers for the tests: a Debian trixie root with RabbitMQ 4 and etcd 3.5.

Debian 13 (trixie) packages RabbitMQ 4.0 and etcd 3.5; this machine runs
Debian 12. ``debootstrap --variant=minbase --include=rabbitmq-server,etcd-server``
builds a root with both in well under a minute. It is built once per machine
(``/var/cache/rpclib-tests/trixie``, or ``RPCLIB_TRIXIE_ROOT``) under a file
lock, so parallel test processes and ``scripts/test`` (which starts the build
in the background while it installs the virtualenv) share one build. A root is
used only once its ``.rpclib-ready`` marker exists: a half-built root is never
mistaken for a finished one.

RabbitMQ runs through ``chroot`` (see ``RabbitNode(chroot=...)`` in
``tests/support/rabbit_node.py``), with ``/proc`` and ``/dev`` mounted into the
root while the tests run (unmounted when the process that mounted them exits;
nothing is ever removed with a mount under it); etcd is a Go binary that runs
from the root as it is.

Standard library only: ``python3 tests/support/trixie.py`` builds the root
before a virtualenv exists. Building needs root and ``debootstrap``; anything
missing raises ``TrixieError`` naming it (tests turn that into a failure,
never a skip).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

DEFAULT_ROOT = Path("/var/cache/rpclib-tests/trixie")
MIRROR = os.environ.get("RPCLIB_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("rabbitmq-server", "etcd-server")
READY = ".rpclib-ready"
BUILD_TIMEOUT = 900.0
RABBITMQ_BIN = "/usr/lib/rabbitmq/bin"
ETCD_BIN = "/usr/bin/etcd"


class TrixieError(RuntimeError):
    """The trixie root could not be built or prepared."""


def root_path() -> Path:
    return Path(os.environ.get("RPCLIB_TRIXIE_ROOT") or DEFAULT_ROOT)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as info:
        return [line.split()[4] for line in info]


def _mounted(target: Path) -> bool:
    return str(target.resolve()) in _mount_points()


_OURS: list[Path] = []
"""Mounts this process made, unmounted when it exits."""


def _mount(args: list[str], target: Path) -> None:
    if _mounted(target):
        return
    result = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if result.returncode != 0 and not _mounted(target):
        raise TrixieError(f"mount {' '.join(args)} {target} failed: {result.stderr.strip()}")
    if not _OURS:
        atexit.register(_unmount_ours)
    _OURS.append(target)


def _unmount_ours() -> None:
    while _OURS:
        subprocess.run(["umount", "--lazy", str(_OURS.pop())], capture_output=True)


def _remove(path: Path) -> None:
    """rm -rf ``path``, never into a mount under it (a bind-mounted /dev would go with it)."""
    prefix = str(path.resolve()) + "/"
    for point in sorted((p for p in _mount_points() if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True)
    if any(p.startswith(prefix) for p in _mount_points()):
        raise TrixieError(f"cannot remove {path}: something is still mounted under it")
    shutil.rmtree(path, ignore_errors=True)


def _build(root: Path) -> None:
    if os.geteuid() != 0:
        raise TrixieError(
            f"the trixie root {root} is not built and building it needs root "
            "(debootstrap, chroot): run the tests as root once, or set RPCLIB_TRIXIE_ROOT"
        )
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.access(debootstrap, os.X_OK):
        raise TrixieError("debootstrap is not installed: apt-get install debootstrap")
    work = root.with_name(f"{root.name}.building-{os.getpid()}")
    _remove(work)
    log = root.with_name(f"{root.name}.build.log")
    cmd = [
        debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}",
        "trixie", str(work), MIRROR,
    ]  # fmt: skip
    with open(log, "wb") as out:
        try:
            result = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            raise TrixieError(f"debootstrap took over {BUILD_TIMEOUT:.0f}s; see {log}") from None
    if result.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        _remove(work)
        raise TrixieError(f"debootstrap failed ({result.returncode}); {log}:\n" + "\n".join(tail))
    for needed in (f"{RABBITMQ_BIN}/rabbitmq-server", ETCD_BIN, "/usr/bin/setpriv"):
        if not (work / needed.lstrip("/")).exists():
            raise TrixieError(f"debootstrap finished but {needed} is missing in {work}")
    _remove(root)
    work.rename(root)
    (root / READY).write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))


def trixie_root(*, mount: bool = True) -> Path:
    """The machine's trixie root, built on first use, with /proc and /dev mounted into it."""
    root = root_path()
    if not (root / READY).exists():
        with _locked(root.with_name(f"{root.name}.lock")):
            if not (root / READY).exists():
                _build(root)
    if mount:
        with _locked(root.with_name(f"{root.name}.lock")):
            _mount(["-t", "proc", "proc"], root / "proc")
            _mount(["--bind", "/dev"], root / "dev")
    return root


def etcd_binary() -> str:
    """etcd 3.5 from the trixie root (it runs outside the chroot as it is)."""
    return str(trixie_root(mount=False) / ETCD_BIN.lstrip("/"))


def chroot_user(root: Path, name: str) -> tuple[int, int]:
    """(uid, gid) of user ``name`` inside ``root``."""
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3])
    raise TrixieError(f"user {name} is missing in {root}/etc/passwd")


if __name__ == "__main__":
    try:
        print(trixie_root(mount=False))
    except TrixieError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
