"""Service registration and heartbeats."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.conductor.db import ConductorDB, ServiceNotFound
from tests.conductor.support import FakeClock


def test_registered_service_is_listed_with_its_versions(db: ConductorDB) -> None:
    registered = db.register_service("h1", "compute", {"compute": "1.3"})

    assert db.list_services() == [registered]
    assert registered.versions == {"compute": "1.3"}
    assert registered.last_heartbeat == registered.created_at


def test_registering_again_updates_the_versions_in_place(db: ConductorDB) -> None:
    first = db.register_service("h1", "compute", {"compute": "1.3"})

    again = db.register_service("h1", "compute", {"compute": "1.4"})

    assert db.list_services() == [again]
    assert (again.created_at, again.versions) == (first.created_at, {"compute": "1.4"})


def test_heartbeat_moves_last_heartbeat(db: ConductorDB, clock: FakeClock) -> None:
    registered = db.register_service("h1", "compute", {})
    clock.advance(timedelta(seconds=30))

    db.service_heartbeat("h1", "compute")

    [service] = db.list_services()
    assert service.last_heartbeat - registered.last_heartbeat >= timedelta(seconds=30)
    assert service.is_up(clock(), max_age=timedelta(seconds=10))


def test_heartbeat_of_an_unregistered_service_raises(db: ConductorDB) -> None:
    with pytest.raises(ServiceNotFound, match="'compute' registered on host 'h9'"):
        db.service_heartbeat("h9", "compute")


def test_services_can_be_listed_by_binary(db: ConductorDB) -> None:
    db.register_service("h2", "compute", {})
    db.register_service("c1", "conductor", {})
    db.register_service("h1", "compute", {})

    assert [s.host for s in db.list_services("compute")] == ["h1", "h2"]
    assert [s.binary for s in db.list_services()] == ["compute", "compute", "conductor"]
