"""ImageCache: fetching base images (local files, HTTP) and making qcow2 disks with qemu-img."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from services.compute.images import GiB, ImageCache, ImageError
from tests.compute.support import ImageServer


def qemu_img_info(path: Path) -> dict[str, object]:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "--force-share", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    info: dict[str, object] = json.loads(out)
    return info


def test_local_file_is_copied_into_the_cache(images: ImageCache, base_image: Path) -> None:
    cached = images.fetch(str(base_image))
    assert cached.parent == images.cache_dir
    assert cached.read_bytes() == base_image.read_bytes()
    assert images.fetch(f"file://{base_image}") != cached  # the cache is keyed by location


def test_missing_local_file_is_an_image_error_naming_it(images: ImageCache, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.img")
    with pytest.raises(ImageError, match="no such file") as caught:
        images.fetch(missing)
    assert caught.value.subject == missing
    assert list(images.cache_dir.iterdir()) == []


def test_http_image_is_downloaded_once(
    images: ImageCache, image_server: ImageServer, base_image: Path
) -> None:
    url = image_server.url("base.raw")
    first = images.fetch(url)
    assert images.fetch(url) == first
    assert first.read_bytes() == base_image.read_bytes()
    assert image_server.requests["/base.raw"] == 1


def test_http_404_is_an_image_error_naming_the_url(
    images: ImageCache, image_server: ImageServer
) -> None:
    url = image_server.url("missing.qcow2")
    with pytest.raises(ImageError, match="HTTP 404") as caught:
        images.fetch(url)
    assert caught.value.subject == url
    assert url in str(caught.value)
    assert list(images.cache_dir.iterdir()) == []  # no partial file left behind


def test_unreachable_url_is_an_image_error(images: ImageCache) -> None:
    with pytest.raises(ImageError, match="cannot download"):
        images.fetch("http://127.0.0.1:9/image.qcow2")


def test_unsupported_scheme_is_an_image_error(images: ImageCache) -> None:
    with pytest.raises(ImageError, match="unsupported scheme 'ftp'"):
        images.fetch("ftp://example.org/image.qcow2")


def test_concurrent_fetches_of_one_image_download_it_once(
    images: ImageCache, image_server: ImageServer
) -> None:
    image_server.delay = 0.2  # the download is still running when the others ask
    url = image_server.url("base.raw")
    start = threading.Barrier(8)
    results: list[Path] = []

    def fetch() -> None:
        start.wait()
        results.append(images.fetch(url))

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(results) == 8 and len(set(results)) == 1
    assert image_server.requests["/base.raw"] == 1


def test_disk_is_a_qcow2_overlay_of_the_cached_image_with_the_allocated_size(
    images: ImageCache, base_image: Path, tmp_path: Path
) -> None:
    cached = images.fetch(str(base_image))
    disk = tmp_path / "instances" / "disk.qcow2"
    images.make_disk(cached, disk, 3)
    info = qemu_img_info(disk)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 3 * GiB
    assert info["backing-filename"] == str(cached)
    assert info["backing-filename-format"] == "raw"


def test_qcow2_base_images_are_accepted(images: ImageCache, qemu_img: str, tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    disk = tmp_path / "disk.qcow2"
    images.make_disk(images.fetch(str(base)), disk, 1)
    assert qemu_img_info(disk)["backing-filename-format"] == "qcow2"


def test_making_a_disk_again_replaces_it(
    images: ImageCache, base_image: Path, tmp_path: Path
) -> None:
    disk = tmp_path / "disk.qcow2"
    images.make_disk(base_image, disk, 1)
    images.make_disk(base_image, disk, 2)
    assert qemu_img_info(disk)["virtual-size"] == 2 * GiB


def test_image_larger_than_the_disk_is_refused(
    images: ImageCache, qemu_img: str, tmp_path: Path
) -> None:
    big = tmp_path / "big.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(big), "2G"], check=True)
    disk = tmp_path / "disk.qcow2"
    with pytest.raises(ImageError, match="exceeds the 1 GiB disk"):
        images.make_disk(big, disk, 1)
    assert not disk.exists()


def test_base_image_with_a_backing_file_is_refused(
    images: ImageCache, base_image: Path, qemu_img: str, tmp_path: Path
) -> None:
    sneaky = tmp_path / "sneaky.qcow2"
    subprocess.run(
        [qemu_img, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base_image), str(sneaky)],
        check=True,
    )
    with pytest.raises(ImageError, match="refers to other files"):
        images.make_disk(sneaky, tmp_path / "disk.qcow2", 1)


def test_qemu_img_failure_carries_its_stderr(images: ImageCache, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"qemu-img info failed: .*No such file") as caught:
        images.make_disk(tmp_path / "absent.img", tmp_path / "disk.qcow2", 1)
    assert caught.value.subject == str(tmp_path / "absent.img")


def test_missing_qemu_img_is_an_image_error(tmp_path: Path, base_image: Path) -> None:
    cache = ImageCache(tmp_path / "cache", qemu_img="/nonexistent/qemu-img")
    with pytest.raises(ImageError, match="not found"):
        cache.make_disk(base_image, tmp_path / "disk.qcow2", 1)


def test_remove_disk_is_idempotent(images: ImageCache, base_image: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    images.make_disk(base_image, disk, 1)
    images.remove_disk(disk)
    assert not disk.exists()
    images.remove_disk(disk)
