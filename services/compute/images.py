"""Images and disks: a local cache of base images, and qcow2 disks backed by them.

An image location is a local path (or ``file://`` URL) or an ``http(s)://``
URL. Each location is fetched once into the cache, under the SHA-256 of the
location, written to a temporary file and renamed into place, so a reader never
sees a partial image and a crash leaves only a ``.part`` file behind.
Concurrent fetches of one location in this process wait for a single download.

Instance disks are qcow2 overlays whose backing file is the cached image, of
the instance's allocated size. Only raw and qcow2 base images without backing
or external data files are accepted, so an image cannot make ``qemu-img`` or
the hypervisor read other files of the host.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

LOG = logging.getLogger("services.compute")

GiB = 1024**3
BASE_FORMATS = frozenset({"raw", "qcow2"})
_CHUNK = 1 << 20


class ImageError(Exception):
    """An image could not be fetched or a disk could not be made; names which."""

    def __init__(self, subject: str, reason: str) -> None:
        self.subject = subject
        self.reason = reason
        super().__init__(f"image {subject}: {reason}")


class ImageCache:
    """Fetches base images into ``cache_dir`` and makes instance disks from them."""

    def __init__(
        self,
        cache_dir: Path | str,
        *,
        timeout: float = 60.0,
        qemu_img: str = "qemu-img",
        allowed_dirs: Sequence[Path | str] | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir).absolute()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._timeout = timeout
        self._qemu_img_cmd = qemu_img
        self.allowed_dirs = (
            None if allowed_dirs is None else tuple(Path(d).resolve() for d in allowed_dirs)
        )
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def path_for(self, location: str) -> Path:
        """Where ``location`` is (or will be) cached."""
        return self.cache_dir / hashlib.sha256(location.encode()).hexdigest()

    def fetch(self, location: str) -> Path:
        """The cached copy of the image at ``location``, fetching it first if needed."""
        self._check_allowed(location)
        target = self.path_for(location)
        with self._lock_for(target.name):
            if target.exists():
                return target
            url = urlsplit(location)
            if url.scheme in ("http", "https"):
                self._store(location, target, lambda out: self._download(location, out))
            elif url.scheme in ("", "file"):
                source = Path(unquote(url.path) if url.scheme else location)
                self._store(location, target, lambda out: self._copy(location, source, out))
            else:
                raise ImageError(location, f"unsupported scheme {url.scheme!r}")
            LOG.info("cached image %s as %s", location, target.name)
            return target

    def check(self, location: str) -> None:
        """Raise ImageError unless :meth:`fetch` could take ``location`` (without fetching it).

        A local path must be absolute, allowed, and a readable file; an
        http(s) URL is taken as it is (it is only read when fetched).
        """
        url = urlsplit(location)
        if url.scheme in ("http", "https"):
            if not url.netloc:
                raise ImageError(location, "the URL names no host")
            return
        if url.scheme not in ("", "file"):
            raise ImageError(location, f"unsupported scheme {url.scheme!r} (http, https, file)")
        path = Path(unquote(url.path) if url.scheme else location)
        if not path.is_absolute():
            raise ImageError(location, "a local image path must be absolute")
        self._check_allowed(location)
        if not path.is_file():
            raise ImageError(location, "no such file" if not path.exists() else "not a file")
        if not os.access(path, os.R_OK):
            raise ImageError(location, "not readable by the compute service")

    def _check_allowed(self, location: str) -> None:
        """Refuse local paths outside ``allowed_dirs`` (users must not read compute's files)."""
        if self.allowed_dirs is None:
            return
        url = urlsplit(location)
        if url.scheme not in ("", "file"):
            return
        path = Path(unquote(url.path) if url.scheme else location).resolve()
        if not self.allowed_dirs:
            raise ImageError(
                location,
                "local image paths are not allowed on this compute node "
                "(no image directories are configured; use an http(s) URL)",
            )
        if not any(path.is_relative_to(d) for d in self.allowed_dirs):
            allowed = ", ".join(str(d) for d in self.allowed_dirs)
            raise ImageError(location, f"local images must be under {allowed}")

    def _lock_for(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def _store(self, location: str, target: Path, write: Callable[[IO[bytes]], None]) -> None:
        """Run ``write(file)`` into a temporary file, then rename it to ``target``."""
        fd, tmp_name = tempfile.mkstemp(
            dir=self.cache_dir, prefix=f".{target.name}.", suffix=".part"
        )
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            raise ImageError(location, f"cannot store it in the cache: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def _download(self, location: str, out: IO[bytes]) -> None:
        try:
            with urllib.request.urlopen(location, timeout=self._timeout) as response:
                shutil.copyfileobj(response, out, _CHUNK)
                expected = response.headers.get("Content-Length")
        except urllib.error.HTTPError as exc:
            exc.close()
            raise ImageError(location, f"HTTP {exc.code} {exc.reason}") from exc
        except urllib.error.URLError as exc:
            raise ImageError(location, f"cannot download: {exc.reason}") from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise ImageError(location, f"cannot download: {exc}") from exc
        if expected is not None and expected.isdigit() and out.tell() != int(expected):
            raise ImageError(location, f"truncated download: {out.tell()} of {expected} bytes")

    @staticmethod
    def _copy(location: str, source: Path, out: IO[bytes]) -> None:
        try:
            with source.open("rb") as src:
                shutil.copyfileobj(src, out, _CHUNK)
        except FileNotFoundError as exc:
            raise ImageError(location, "no such file") from exc
        except OSError as exc:
            raise ImageError(location, f"cannot read: {exc.strerror or exc}") from exc

    # -- disks -----------------------------------------------------------------------------

    def make_disk(self, image: Path, disk: Path, size_gb: int) -> None:
        """Create ``disk``: a qcow2 overlay of ``image`` with a virtual size of ``size_gb`` GiB.

        Replaces a leftover disk at that path. Raises ImageError if the image
        is not a plain raw/qcow2 image, is larger than ``size_gb``, or qemu-img fails.
        """
        image = Path(image).absolute()
        if size_gb < 1:
            raise ImageError(str(disk), f"disk size must be at least 1 GiB, got {size_gb}")
        info = self.info(image)
        fmt = info.get("format")
        if fmt not in BASE_FORMATS:
            raise ImageError(str(image), f"format {fmt!r} is not one of {sorted(BASE_FORMATS)}")
        if "backing-filename" in info or _data_file(info):
            raise ImageError(str(image), "refusing a base image that refers to other files")
        virtual_size = int(info.get("virtual-size", 0))
        if virtual_size > size_gb * GiB:
            raise ImageError(
                str(image), f"virtual size {virtual_size} bytes exceeds the {size_gb} GiB disk"
            )
        disk.parent.mkdir(parents=True, exist_ok=True)
        partial = disk.with_name(f".{disk.name}.part")
        try:
            overlay = ["-f", "qcow2", "-F", str(fmt), "-b", str(image)]
            self._qemu_img(str(disk), "create", "-q", *overlay, str(partial), str(size_gb * GiB))
            os.replace(partial, disk)
        finally:
            partial.unlink(missing_ok=True)

    def info(self, image: Path) -> dict[str, Any]:
        """``qemu-img info`` of a file, as a dict (format, virtual-size, ...)."""
        output = self._qemu_img(str(image), "info", "--output=json", "--force-share", str(image))
        try:
            parsed = json.loads(output)
        except ValueError as exc:
            raise ImageError(str(image), f"unreadable qemu-img info output: {exc}") from exc
        if not isinstance(parsed, dict):
            raise ImageError(str(image), "unreadable qemu-img info output")
        return parsed

    @staticmethod
    def remove_disk(disk: Path) -> None:
        """Delete an instance disk (nothing to do if it is gone)."""
        Path(disk).unlink(missing_ok=True)
        Path(disk).with_name(f".{Path(disk).name}.part").unlink(missing_ok=True)

    def _qemu_img(self, subject: str, *args: str) -> str:
        command = [self._qemu_img_cmd, *args]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=self._timeout, check=False
            )
        except FileNotFoundError as exc:
            raise ImageError(
                subject, f"{self._qemu_img_cmd} not found (Debian package qemu-utils)"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise ImageError(subject, f"qemu-img {args[0]} timed out") from exc
        if done.returncode != 0:
            detail = done.stderr.strip() or f"exit status {done.returncode}"
            raise ImageError(subject, f"qemu-img {args[0]} failed: {detail}")
        return done.stdout


def _data_file(info: dict[str, Any]) -> bool:
    specific = info.get("format-specific")
    data = specific.get("data") if isinstance(specific, dict) else None
    return isinstance(data, dict) and bool(data.get("data-file"))
