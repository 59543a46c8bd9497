"""``rpclib-cloud services``: the cloud's services with versions and last heartbeats."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.allinone import Embedded, registered_computes, wait_until
from services.cli import main
from services.conductor.rpcapi import ConductorAPI


@pytest.fixture
def cloud_url(tmp_path: Path, bus_url: str) -> Iterator[str]:
    running = Embedded(bus_url, tmp_path, "test:///default")
    running.start()
    admin = running.login("admin")
    wait_until(lambda: registered_computes(ConductorAPI(admin)) == 2, 30, "compute nodes")
    yield running.admin_url
    running.stop()


def test_services_json_gives_every_service_its_versions(cloud_url, capsys):
    assert main(["--transport-url", cloud_url, "services", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_service: dict[str, list[dict]] = {}
    for row in rows:
        by_service.setdefault(row["service"], []).append(row)
    assert sorted(by_service) == ["billing", "compute", "conductor", "scheduler"]
    for service in ("conductor", "scheduler", "billing"):
        [row] = by_service[service]
        assert row["advert"] == "live" and row["versions"] and row["advertised_since"]
    computes = by_service["compute"]
    assert len(computes) == 2
    assert all(c["last_heartbeat"] and c["versions"] for c in computes)


def test_services_table_shows_heartbeats_of_compute_nodes(cloud_url, capsys):
    assert main(["--transport-url", cloud_url, "services"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["service", "host", "versions"]
    computes = [line for line in lines if line.startswith("compute ")]
    assert len(computes) == 2
    conductor = next(line for line in lines if line.startswith("conductor "))
    assert "live since" in conductor and "conductor=" in conductor
