"""Keys and user data in the database, and who is at an address on a host (both backends)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Engine, inspect, text

from services.conductor.db import ConductorDB, Instance, migrations
from tests.conductor.support import host_inventories

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0000000000000000000000000000000000000000000 me"
RESOURCES = {"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 1}


def placed_at(db: ConductorDB, make: Callable[..., Instance], host: str, address: str) -> str:
    """An instance ACTIVE on ``host`` with IP ``address``."""
    db.ensure_provider(host, host_inventories())
    instance = make()
    db.claim(instance.uuid, host, RESOURCES)
    db.apply_instance_update(instance.uuid, host, 1, {"vm_state": "ACTIVE", "ip_address": address})
    return instance.uuid


def test_key_and_user_data_are_stored_with_the_instance(
    db: ConductorDB, make_instance: Callable[..., Instance]
) -> None:
    created = make_instance(key_data=KEY, user_data="eA==")
    stored = db.get_instance(created.uuid)
    assert (stored.key_data, stored.user_data) == (KEY, "eA==")


def test_the_instance_at_an_address_is_found_only_on_its_own_host(
    db: ConductorDB, make_instance: Callable[..., Instance]
) -> None:
    mine = placed_at(db, make_instance, "h1", "10.0.0.5")
    theirs = placed_at(db, make_instance, "h2", "10.0.0.6")
    found = db.instance_at_address("h1", "10.0.0.5")
    assert found is not None and found.uuid == mine
    assert db.instance_at_address("h1", "10.0.0.6") is None  # h2's instance
    assert db.instance_at_address("h2", "10.0.0.6") is not None
    assert db.instance_at_address("h1", "10.0.0.7") is None
    db.apply_instance_update(theirs, "h2", 2, {"vm_state": "DELETED"})
    assert db.instance_at_address("h2", "10.0.0.6") is None  # the deleted hold no address


def test_upgrade_from_0003_adds_empty_guest_data_columns(empty_engine: Engine) -> None:
    migrations.upgrade(empty_engine, "0003")
    instance = str(uuid.uuid4())
    now = datetime(2030, 1, 1, tzinfo=UTC)
    with empty_engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO instances (uuid, name, project_id, user_id, vcpus, memory_mb, "
                "disk_gb, image, vm_state, created_at, updated_at, sequence) VALUES "
                "(:u, 'vm', 'p', 'u', 1, 1, 1, 'img', 'BUILDING', :t, :t, 0)"
            ),
            {"u": instance, "t": now},
        )
    assert "key_data" not in {c["name"] for c in inspect(empty_engine).get_columns("instances")}

    migrations.upgrade(empty_engine)

    stored = ConductorDB(empty_engine).get_instance(instance)
    assert (stored.name, stored.key_data, stored.user_data) == ("vm", None, None)
