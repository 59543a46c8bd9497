"""Every conductor database test runs twice: on a temp SQLite file and on real PostgreSQL.

PostgreSQL is ``$RPCLIB_TEST_POSTGRES_URL`` (default: postgres@127.0.0.1:5432/test).
Schemas are created there with this session's unique prefix, dropped at the
end of the session; nothing else is touched. Tests get a head schema with empty
tables (one migrated schema per session on PostgreSQL, emptied before each test;
a copied template file on SQLite), or a fresh empty one for migration tests.
An unreachable server fails the PostgreSQL tests; it never skips them.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import sqlalchemy
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError

from services.conductor.db import ConductorDB, Instance, create_engine, migrations
from services.conductor.db.models import Base
from tests.conductor.support import FakeClock

PG_URL = os.environ.get(
    "RPCLIB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
# Every schema this session creates starts with this; nothing else is ever touched.
SCHEMA_PREFIX = f"rpclib_conductor_{uuid4().hex[:8]}_"
_schema_numbers = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Engine]:
    """An admin engine on the PostgreSQL test database; sweeps this session's schemas at exit."""
    url = make_url(PG_URL)
    admin = sqlalchemy.create_engine(
        url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
        problem = None
    except OperationalError as exc:
        admin.dispose()
        problem = str(exc.orig).strip()
    if problem is not None:
        pytest.fail(
            f"PostgreSQL at {url.render_as_string(hide_password=True)} is unreachable: "
            f"{problem}\nThe conductor DB tests need it (set RPCLIB_TEST_POSTGRES_URL).",
            pytrace=False,
        )
    yield admin
    with admin.connect() as connection:
        leftovers = connection.scalars(
            text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :prefix"),
            {"prefix": f"{SCHEMA_PREFIX}%"},
        ).all()
        for schema in leftovers:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _new_pg_schema(admin: Engine) -> tuple[str, URL]:
    schema = f"{SCHEMA_PREFIX}{next(_schema_numbers)}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    return schema, admin.url.update_query_dict({"options": f"-csearch_path={schema}"})


def _drop_pg_schema(admin: Engine, schema: str) -> None:
    with admin.connect() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(scope="session")
def migrated_pg_schema(pg_server: Engine) -> URL:
    """One schema migrated to head for the session; tests empty its tables before use."""
    _, url = _new_pg_schema(pg_server)
    engine = create_engine(url)
    migrations.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head, copied for each test."""
    path = tmp_path_factory.mktemp("template") / "conductor.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    migrations.upgrade(engine)
    engine.dispose()  # the last close checkpoints the WAL into the file
    return path


@pytest.fixture
def empty_database(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[URL]:
    """A database of ``backend`` with nothing in it, not even a schema version."""
    if backend == "sqlite":
        yield make_url(f"sqlite:///{tmp_path / 'empty.sqlite'}")
        return
    admin: Engine = request.getfixturevalue("pg_server")
    schema, url = _new_pg_schema(admin)
    yield url
    _drop_pg_schema(admin, schema)


@pytest.fixture
def database(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> URL:
    """A database of ``backend`` at head with empty tables."""
    if backend == "sqlite":
        path = tmp_path / "conductor.sqlite"
        shutil.copyfile(request.getfixturevalue("migrated_sqlite_file"), path)
        return make_url(f"sqlite:///{path}")
    url: URL = request.getfixturevalue("migrated_pg_schema")
    engine = create_engine(url)
    with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())
    engine.dispose()
    return url


class Engines:
    """Opens engines on one database (several engines model several conductor processes)."""

    def __init__(self, url: URL) -> None:
        self.url = url
        self._opened: list[Engine] = []

    def __call__(self) -> Engine:
        self._opened.append(create_engine(self.url))
        return self._opened[-1]

    def dispose(self) -> None:
        for engine in self._opened:
            engine.dispose()


@pytest.fixture
def make_engine(database: URL) -> Iterator[Engines]:
    engines = Engines(database)
    yield engines
    engines.dispose()


@pytest.fixture
def make_empty_engine(empty_database: URL) -> Iterator[Engines]:
    engines = Engines(empty_database)
    yield engines
    engines.dispose()


@pytest.fixture
def engine(make_engine: Engines) -> Engine:
    return make_engine()


@pytest.fixture
def empty_engine(make_empty_engine: Engines) -> Engine:
    return make_empty_engine()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(engine: Engine, clock: FakeClock) -> ConductorDB:
    return ConductorDB(engine, clock=clock)


@pytest.fixture
def make_instance(db: ConductorDB) -> Callable[..., Instance]:
    """Create an instance; sizes and ownership default to a small VM of project p1."""

    def make(**overrides: object) -> Instance:
        spec: dict[str, object] = {
            "name": "vm",
            "project_id": "p1",
            "user_id": "u1",
            "vcpus": 1,
            "memory_mb": 512,
            "disk_gb": 1,
            "image": "cirros",
        }
        spec.update(overrides)
        return db.create_instance(**spec)  # type: ignore[arg-type]

    return make
