"""Fixtures for the compute tests: libvirt's test driver, an image cache, a local image server.

These tests use the real parts: libvirt-python against ``test:///default``
(no daemon) and the ``qemu-img`` binary. A missing one fails the tests; it
never skips them (Debian: qemu-utils, libvirt0; pip: libvirt-python).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from services.compute.images import ImageCache
from tests.compute.support import ImageServer

if TYPE_CHECKING:  # imported in the fixture: without libvirt-python only its users fail
    from services.compute.virt import LibvirtDriver

MiB = 1024**2


@pytest.fixture(scope="session")
def qemu_img() -> str:
    path = shutil.which("qemu-img")
    if path is None:
        pytest.fail(
            "qemu-img is not installed; the compute tests need it (Debian package qemu-utils)",
            pytrace=False,
        )
    return path


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[LibvirtDriver]:
    """A driver on libvirt's test hypervisor (domains are shared by the whole process)."""
    from services.compute.virt import LibvirtDriver

    d = LibvirtDriver("test:///default", instances_dir=tmp_path / "instances")
    yield d
    d.close()


@pytest.fixture
def images(tmp_path: Path, qemu_img: str) -> ImageCache:
    return ImageCache(tmp_path / "cache", timeout=10)


@pytest.fixture
def base_image(tmp_path: Path) -> Path:
    """A 1 MiB raw image (qemu-img reads any non-header bytes as raw)."""
    path = tmp_path / "images" / "base.raw"
    path.parent.mkdir()
    path.write_bytes(b"\xab" * MiB)
    return path


@pytest.fixture
def image_server(base_image: Path) -> Iterator[ImageServer]:
    """An HTTP server on 127.0.0.1 serving the directory of ``base_image``."""
    server = ImageServer(base_image.parent)
    server.start()
    yield server
    server.stop()
