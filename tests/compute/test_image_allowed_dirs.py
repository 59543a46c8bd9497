"""Local image paths can be confined to allowed directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.compute.images import ImageCache, ImageError


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 512)
    return path


def test_a_local_image_under_an_allowed_dir_is_fetched(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache", allowed_dirs=[tmp_path / "library"])
    assert cache.fetch(str(image(tmp_path / "library" / "base.img"))).exists()


def test_a_local_path_outside_is_refused_naming_the_allowed_dirs(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache", allowed_dirs=[tmp_path / "library"])
    secret = image(tmp_path / "etc" / "shadow")
    with pytest.raises(ImageError, match="local images must be under"):
        cache.fetch(str(secret))
    with pytest.raises(ImageError, match="local images must be under"):
        cache.fetch(f"file://{secret}")


def test_dot_dot_cannot_escape_an_allowed_dir(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache", allowed_dirs=[tmp_path / "library"])
    image(tmp_path / "etc" / "shadow")
    with pytest.raises(ImageError):
        cache.fetch(str(tmp_path / "library" / ".." / "etc" / "shadow"))


def test_a_cached_copy_is_not_served_once_the_path_is_disallowed(tmp_path: Path) -> None:
    source = str(image(tmp_path / "etc" / "base.img"))
    ImageCache(tmp_path / "cache", allowed_dirs=[tmp_path / "etc"]).fetch(source)  # cached
    with pytest.raises(ImageError):
        ImageCache(tmp_path / "cache", allowed_dirs=[tmp_path / "library"]).fetch(source)


def test_no_allowed_dirs_refuses_every_local_path(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache", allowed_dirs=[])
    with pytest.raises(ImageError, match="local image paths are not allowed"):
        cache.fetch(str(image(tmp_path / "library" / "base.img")))


def test_a_compute_service_without_image_dirs_takes_no_local_paths(
    tmp_path: Path, bus_url: str
) -> None:
    import rpclib
    from services.compute.service import ComputeService

    with rpclib.get_transport(bus_url) as transport:
        compute = ComputeService(
            transport, host="n1", libvirt_uri="test:///default", state_dir=tmp_path / "state"
        )
        with pytest.raises(ImageError, match="not allowed on this compute node"):
            compute.images.fetch(str(image(tmp_path / "library" / "base.img")))
