"""``rpclib-cloud accounts``: each service's own broker account, kept across runs."""

from __future__ import annotations

from pathlib import Path

import pytest

import rpclib
from rpclib.transports.base import Address
from services.cli import main

HOSTS = ["--conductor", "c1", "--scheduler", "s1", "--billing", "b1", "--compute", "n1"]


def accounts(url: str, secrets: Path) -> int:
    return main(["--transport-url", url, "accounts", "--secrets", str(secrets), *HOSTS])


def test_each_principal_gets_a_private_login_url(fresh_rabbit_url: str, tmp_path: Path) -> None:
    assert accounts(fresh_rabbit_url, tmp_path / "s") == 0
    files = sorted(p.name for p in (tmp_path / "s").glob("*.url"))
    assert files == [
        "admin.url", "billing-b1.url", "compute-n1.url", "conductor-c1.url", "scheduler-s1.url",
    ]  # fmt: skip
    for path in (tmp_path / "s").iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_running_it_again_keeps_every_password(fresh_rabbit_url: str, tmp_path: Path) -> None:
    accounts(fresh_rabbit_url, tmp_path / "s")
    first = (tmp_path / "s" / "compute-n1.url").read_text()
    assert accounts(fresh_rabbit_url, tmp_path / "s") == 0
    assert (tmp_path / "s" / "compute-n1.url").read_text() == first


def test_a_compute_login_may_read_only_its_own_queue(fresh_rabbit_url: str, tmp_path: Path) -> None:
    accounts(fresh_rabbit_url, tmp_path / "s")
    url = (tmp_path / "s" / "compute-n1.url").read_text().strip()
    transport = rpclib.get_transport(url)
    try:
        transport.driver.listen(Address("rpclib", "compute", server="n1"), lambda m: m.ack())
        with pytest.raises(rpclib.AccessRefused, match="compute-n1"):
            transport.driver.listen(Address("rpclib", "scheduler", server="s1"), lambda m: m.ack())
    finally:
        transport.close()


def test_a_bus_without_provisioning_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert accounts("nosuch://admin:pw@127.0.0.1/", tmp_path / "s") == 1
    err = capsys.readouterr().err
    assert err.startswith("rpclib-cloud: error: ") and err.count("\n") == 1
