"""A tiny guest for tests that boot real VMs: a Debian kernel and a busybox initramfs.

The kernel is the one Debian's ``linux-image-amd64`` currently depends on,
fetched with ``apt-get download`` (apt's package lists must know it; as root a
failed look-up or download runs ``apt-get update`` once and retries). Its
``vmlinuz`` and the virtio modules are kept in a cache directory per kernel
package (``$RPCLIB_TEST_GUEST_CACHE``, default ``~/.cache/rpclib-test-guest``),
so later runs download nothing. The initramfs is built from those modules and
the host's static busybox (Debian package busybox-static), under a name
carrying the hash of its inputs: changing the recipe rebuilds it, never a
stale one is used. Its ``/init`` loads the modules, brings ``eth0`` up and
asks for a DHCP lease, then sleeps forever.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX = Path("/bin/busybox")
CMDLINE = "console=ttyS0 quiet panic=-1"
# Load order matters: insmod resolves no dependencies.
MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_blk",
)
INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in {" ".join(MODULES)}; do
    insmod /lib/modules/$m.ko || echo "guest: insmod $m failed"
done
ip link set lo up
ip link set eth0 up
echo "guest: requesting a DHCP lease on eth0"
udhcpc -i eth0 -s /etc/udhcpc.script -t 20 -T 1 -A 1 -b
while :; do sleep 3600; done
"""
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
        echo "guest: $interface has $ip"
        ;;
esac
"""


class GuestError(RuntimeError):
    """The guest could not be built; says what is missing or what failed."""


class _AptError(GuestError):
    """apt-cache or apt-get failed (perhaps only its package lists are stale)."""


@dataclass(frozen=True)
class Guest:
    """What direct kernel boot needs, and the kernel package it came from."""

    package: str
    kernel: Path
    initrd: Path
    cmdline: str = CMDLINE


def cache_root() -> Path:
    if configured := os.environ.get("RPCLIB_TEST_GUEST_CACHE"):
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rpclib-test-guest"


def build_guest(root: Path | None = None) -> Guest:
    """The guest for the current Debian kernel, from the cache or built into it."""
    if not BUSYBOX.is_file() or not _installed("busybox-static"):
        raise GuestError("the test guest needs a static busybox: install Debian's busybox-static")
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    try:
        package = _kernel(root)
    except _AptError:
        if os.geteuid() != 0:
            raise
        _apt(["apt-get", "update", "-qq"])  # missing or stale package lists
        package = _kernel(root)
    kernel_dir = root / package
    initrd = _initramfs(kernel_dir)
    for other in root.glob("linux-image-*"):  # older kernels' files, superseded
        if other != kernel_dir and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)
    return Guest(package, kernel_dir / "vmlinuz", initrd)


# --- the kernel ---------------------------------------------------------------------------


def _installed(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    return result.returncode == 0 and result.stdout.endswith("install ok installed")


def _apt(args: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise _AptError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _kernel(root: Path) -> str:
    """The current kernel package's name, its files fetched into ``root/<name>`` if missing."""
    package = _kernel_package()
    if not (root / package / "vmlinuz").is_file():
        _fetch_kernel(package, root)
    return package


def _kernel_package() -> str:
    """The kernel package ``linux-image-amd64`` depends on (e.g. linux-image-6.1.0-26-amd64)."""
    out = _apt(["apt-cache", "depends", KERNEL_META_PACKAGE])
    for line in out.splitlines():
        kind, _, name = line.strip().partition(": ")
        if kind == "Depends" and name.startswith("linux-image-"):
            return name
    raise _AptError(f"apt-cache knows no kernel that {KERNEL_META_PACKAGE} depends on")


def _fetch_kernel(package: str, root: Path) -> None:
    """Download the package; keep its vmlinuz and the MODULES in ``root/package``."""
    work = Path(tempfile.mkdtemp(prefix=f".{package}-", dir=root))
    try:
        _apt(["apt-get", "download", "-q", package], cwd=work)
        debs = list(work.glob("*.deb"))
        if len(debs) != 1:
            raise GuestError(f"apt-get download {package} left {[d.name for d in debs]}")
        staged = work / package
        (staged / "modules").mkdir(parents=True)
        _extract(debs[0], staged)
        debs[0].unlink()
        try:
            staged.rename(root / package)
        except OSError:  # a concurrent session got there first
            if not (root / package / "vmlinuz").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _extract(deb: Path, into: Path) -> None:
    """vmlinuz and the MODULES (decompressed) from the package's data, streamed."""
    wanted = {f"{name}.ko": name for name in MODULES}
    wanted |= {f"{name}.ko.xz": name for name in MODULES}
    found: dict[str, bytes] = {}
    vmlinuz: bytes | None = None
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with proc, tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            base = member.name.rsplit("/", 1)[-1]
            if not member.isfile():
                continue
            if member.name.lstrip("./").startswith("boot/vmlinuz-"):
                vmlinuz = _read(tar, member)
            elif base in wanted and "/kernel/" in member.name:
                name = wanted[base]
                if name in found:
                    raise GuestError(f"{deb.name} has two modules named {name}")
                data = _read(tar, member)
                found[name] = lzma.decompress(data) if base.endswith(".xz") else data
    if proc.returncode != 0:
        raise GuestError(f"dpkg-deb --fsys-tarfile {deb.name} failed ({proc.returncode})")
    missing = [name for name in MODULES if name not in found]
    if vmlinuz is None or missing:
        raise GuestError(f"{deb.name} lacks {'vmlinuz' if vmlinuz is None else missing}")
    (into / "vmlinuz").write_bytes(vmlinuz)
    for name, data in found.items():
        (into / "modules" / f"{name}.ko").write_bytes(data)


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    extracted = tar.extractfile(member)
    assert extracted is not None
    return extracted.read()


# --- the initramfs ------------------------------------------------------------------------


def _initramfs(kernel_dir: Path) -> Path:
    """The initramfs for the modules in ``kernel_dir``, built unless its inputs are unchanged."""
    files: list[tuple[str, bytes, int]] = [
        ("init", INIT.encode(), 0o755),
        ("bin/busybox", BUSYBOX.read_bytes(), 0o755),
        ("etc/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755),
    ]
    files += [
        (f"lib/modules/{name}.ko", (kernel_dir / "modules" / f"{name}.ko").read_bytes(), 0o644)
        for name in MODULES
    ]
    digest = hashlib.sha256()
    for path, data, mode in files:
        digest.update(f"{path}\0{mode}\0{len(data)}\0".encode())
        digest.update(data)
    target = kernel_dir / f"initramfs-{digest.hexdigest()[:16]}.cpio.gz"
    if target.is_file():
        return target
    archive = _Newc()
    for directory in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys"):
        archive.add(directory, 0o040755)
    archive.add("dev/console", 0o020600, rdev=(5, 1))
    for path, data, mode in files:
        archive.add(path, 0o100000 | mode, data)
    part = target.with_name(f"{target.name}.{os.getpid()}.part")
    part.write_bytes(gzip.compress(archive.finish(), compresslevel=6, mtime=0))
    part.replace(target)
    for old in kernel_dir.glob("initramfs-*.cpio.gz"):
        if old != target:
            old.unlink(missing_ok=True)
    return target


class _Newc:
    """A cpio archive in the "newc" format the kernel unpacks (written in memory)."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 0

    def add(self, path: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self._ino += 1
        name = path.encode() + b"\0"
        nlink = 2 if mode & 0o040000 else 1
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, *rdev, len(name), 0)
        self._out.write(b"070701" + b"".join(b"%08X" % value for value in fields))
        self._write_padded(name)
        self._write_padded(data)

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return self._out.getvalue()

    def _write_padded(self, data: bytes) -> None:
        self._out.write(data)
        self._out.write(b"\0" * (-self._out.tell() % 4))
