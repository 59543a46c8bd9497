"""rpclib-cloud, the user command, against running services."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import rpclib
from services.allinone import Embedded, make_image, registered_computes, wait_until
from services.cli import main
from services.conductor.rpcapi import ConductorAPI


@pytest.fixture
def services(tmp_path: Path, bus_url: str) -> Iterator[tuple[str, Path]]:
    running = Embedded(bus_url, tmp_path, "test:///default")
    running.start()
    admin = running.login("admin")
    wait_until(lambda: registered_computes(ConductorAPI(admin)) == 2, 30, "compute nodes")
    yield running.admin_url, make_image(tmp_path)
    running.stop()


def test_boot_list_show_delete_and_usage(
    services: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, image = services
    base = ["--transport-url", url]
    assert (
        main(
            [
                *base,
                "boot",
                "vm1",
                "--vcpus",
                "1",
                "--memory",
                "128",
                "--image",
                str(image),
                "--project",
                "p1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "vm1: ACTIVE" in out and "vm_state" in out
    assert main([*base, "list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:5] == ["uuid", "name", "project", "host", "state"]
    (row,) = [line for line in listing if " vm1 " in f" {line} "]
    short_uuid = row.split()[0]
    assert "ACTIVE" in row
    transport = rpclib.get_transport(url)
    full = next(
        str(i.uuid)
        for i in ConductorAPI(transport).list_instances({})
        if str(i.uuid).startswith(short_uuid)
    )
    transport.close()
    assert main([*base, "show", full]) == 0
    assert "ip_address" in capsys.readouterr().out
    assert main([*base, "delete", full]) == 0
    assert "vm1: DELETED" in capsys.readouterr().out
    assert main([*base, "usage"]) == 0
    assert "p1" in capsys.readouterr().out


def test_errors_are_one_clear_line_and_exit_1(
    services: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, image = services
    code = main(["--transport-url", url, "boot", "huge", "--vcpus", "999", "--image", str(image)])
    assert code == 1
    assert "rpclib-cloud: error: no valid host" in capsys.readouterr().err


def test_a_bad_transport_url_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--transport-url", "localhost:5672", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rpclib-cloud: error: --transport-url: ") and "missing scheme" in err
