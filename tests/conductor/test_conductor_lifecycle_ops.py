"""Database identity, starting a delete, and forgetting a retired compute host (issue 13)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Engine

from services.conductor.db import (
    ConductorDB,
    HostInUse,
    Instance,
    ProviderNotFound,
    VmState,
    migrations,
    resources,
)
from tests.conductor.conftest import Engines
from tests.conductor.support import host_inventories, race


def place(db: ConductorDB, instance: Instance, host: str) -> None:
    db.claim(instance.uuid, host, resources(instance.vcpus, instance.memory_mb, instance.disk_gb))


# --- identity --------------------------------------------------------------------------


def test_the_database_identity_is_the_same_for_every_engine_on_it(
    make_engine: Engines,
) -> None:
    first, second = ConductorDB(make_engine()), ConductorDB(make_engine())

    assert first.database_id() == second.database_id()


def test_conductors_asking_at_once_get_one_identity(make_engine: Engines) -> None:
    dbs = [ConductorDB(make_engine()), ConductorDB(make_engine())]

    ids = race(lambda db: db.database_id(), dbs)

    assert ids[0] == ids[1] and isinstance(ids[0], str)


def test_two_databases_have_different_identities(db: ConductorDB, empty_engine: Engine) -> None:
    migrations.upgrade(empty_engine)

    assert ConductorDB(empty_engine).database_id() != db.database_id()


# --- begin_delete ----------------------------------------------------------------------


def test_an_unplaced_instance_is_deleted_at_once(
    db: ConductorDB, make_instance: Callable[..., Instance]
) -> None:
    vm = make_instance()
    db.fail_unplaced(vm.uuid, "no valid host")

    deleted = db.begin_delete(vm.uuid)

    assert (deleted.vm_state, deleted.host) == (VmState.DELETED, None)
    assert deleted.deleted_at is not None
    assert db.get_instance(vm.uuid) == deleted
    assert [e.name for e in db.list_instance_events(vm.uuid)][-1] == "delete_unplaced"


def test_a_placed_instance_shows_deleting_until_its_host_reports(
    db: ConductorDB, make_instance: Callable[..., Instance]
) -> None:
    db.ensure_provider("h1", host_inventories())
    vm = make_instance()
    place(db, vm, "h1")

    started = db.begin_delete(vm.uuid)

    assert (started.vm_state, started.task_state) == (VmState.BUILDING, "deleting")
    assert db.apply_instance_update(vm.uuid, "h1", 5, {"vm_state": "DELETED", "task_state": None})
    assert db.get_instance(vm.uuid).task_state is None


# --- forget_compute --------------------------------------------------------------------


def test_forgetting_a_host_removes_its_service_and_provider(
    db: ConductorDB, make_instance: Callable[..., Instance]
) -> None:
    db.register_service("h1", "compute", {})
    db.ensure_provider("h1", host_inventories())
    vm = make_instance()
    place(db, vm, "h1")
    db.apply_instance_update(vm.uuid, "h1", 5, {"vm_state": "DELETED"})

    assert db.forget_compute("h1") is True

    assert db.list_services() == []
    with pytest.raises(ProviderNotFound):
        db.get_provider("h1")
    assert db.get_instance(vm.uuid).host == "h1"  # the deleted instance's history stays


def test_a_host_with_instances_is_not_forgotten(
    db: ConductorDB, make_instance: Callable[..., Instance]
) -> None:
    db.register_service("h1", "compute", {})
    db.ensure_provider("h1", host_inventories())
    place(db, make_instance(), "h1")

    with pytest.raises(HostInUse, match="'h1' still has 1 instance"):
        db.forget_compute("h1")

    assert [s.host for s in db.list_services()] == ["h1"]
    assert db.get_provider("h1").used


def test_forgetting_an_unknown_host_says_so(db: ConductorDB) -> None:
    assert db.forget_compute("nowhere") is False
