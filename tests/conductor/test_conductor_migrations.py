"""Schema migrations and engine setup."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import JSON, Connection, Engine, bindparam, inspect, text

from services.conductor.db import ConductorDB, VmState, create_engine, default_url, migrations
from services.conductor.db.models import Base, UTCDateTime
from tests.conductor.support import race

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def test_upgrade_from_empty_creates_every_table_at_head(empty_engine: Engine) -> None:
    assert migrations.current(empty_engine) is None

    migrations.upgrade(empty_engine)

    assert migrations.current(empty_engine) == migrations.head()
    tables = set(inspect(empty_engine).get_table_names())
    assert tables == set(Base.metadata.tables) | {"alembic_version"}


def test_migrations_build_exactly_the_models_schema(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_upgrading_a_database_at_head_changes_nothing(engine: Engine) -> None:
    ConductorDB(engine).register_service("h1", "compute", {"compute": "1.0"})

    migrations.upgrade(engine)

    assert migrations.current(engine) == migrations.head()
    assert [s.host for s in ConductorDB(engine).list_services()] == ["h1"]


def test_concurrent_upgrades_from_empty_both_succeed(
    make_empty_engine: Callable[[], Engine],
) -> None:
    engines = [make_empty_engine(), make_empty_engine()]

    outcomes = race(migrations.upgrade, engines)

    assert outcomes == [None, None]
    assert migrations.current(engines[0]) == migrations.head()


def test_upgrade_from_the_first_schema_keeps_its_data(empty_engine: Engine) -> None:
    migrations.upgrade(empty_engine, "0001")
    instance = str(uuid.uuid4())
    with empty_engine.begin() as c:
        _insert_first_schema_rows(c, instance)

    migrations.upgrade(empty_engine)

    db = ConductorDB(empty_engine)
    [service] = db.list_services()
    assert (service.host, service.versions, service.last_heartbeat) == (
        "h1",
        {"compute": "1.2"},
        T0,
    )
    provider = db.get_provider("h1")
    assert (provider.generation, provider.used) == (2, {"VCPU": 2, "MEMORY_MB": 1024})
    assert provider.inventories["VCPU"].capacity == 16
    stored = db.get_instance(instance)
    assert (stored.host, stored.vm_state, stored.sequence, stored.created_at) == (
        "h1",
        VmState.ACTIVE,
        7,
        T0,
    )
    assert db.apply_instance_update(instance, "h1", 8, {"task_state": "rebooting"})
    assert [e.sequence for e in db.list_instance_events(instance)] == [8]


def test_sqlite_engine_uses_wal_foreign_keys_and_a_busy_timeout(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'db' / 'conductor.sqlite'}")
    with engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    engine.dispose()


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(ValueError, match="in-memory"):
        create_engine("sqlite://")


def test_a_sqlite_engine_not_made_for_the_conductor_is_refused(tmp_path: Path) -> None:
    plain = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'plain.sqlite'}")

    with pytest.raises(ValueError, match="create_engine"):
        ConductorDB(plain)


def test_default_database_is_a_sqlite_file_in_the_state_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RPCLIB_STATE_DIR", str(tmp_path))

    assert default_url() == f"sqlite:///{tmp_path / 'conductor.sqlite'}"


def _insert_first_schema_rows(c: Connection, instance: str) -> None:
    """Rows as the 0001 schema had them (plain SQL: the models may have moved on)."""
    t = bindparam("t", T0, type_=UTCDateTime())
    c.execute(
        text(
            'INSERT INTO services (host, "binary", versions, created_at, last_heartbeat) '
            "VALUES ('h1', 'compute', :v, :t, :t)"
        ).bindparams(bindparam("v", {"compute": "1.2"}, type_=JSON()), t)
    )
    c.execute(
        text(
            "INSERT INTO resource_providers (id, uuid, name, generation, created_at, updated_at)"
            " VALUES (1, :u, 'h1', 2, :t, :t)"
        ).bindparams(t, u=str(uuid.uuid4()))
    )
    c.execute(
        text(
            "INSERT INTO inventories (provider_id, resource_class, total, reserved, "
            "allocation_ratio, min_unit, max_unit, step_size) VALUES "
            "(1, 'VCPU', 8, 0, 2.0, 1, NULL, 1), (1, 'MEMORY_MB', 4096, 0, 1.0, 1, NULL, 1)"
        )
    )
    c.execute(
        text(
            "INSERT INTO instances (uuid, name, project_id, user_id, host, vcpus, memory_mb, "
            "disk_gb, image, vm_state, created_at, updated_at, sequence) VALUES "
            "(:i, 'vm', 'p1', 'u1', 'h1', 2, 1024, 0, 'cirros', 'ACTIVE', :t, :t, 7)"
        ).bindparams(t, i=instance)
    )
    c.execute(
        text(
            "INSERT INTO allocations (consumer_uuid, provider_id, resource_class, used) VALUES "
            "(:i, 1, 'VCPU', 2), (:i, 1, 'MEMORY_MB', 1024)"
        ).bindparams(i=instance)
    )
