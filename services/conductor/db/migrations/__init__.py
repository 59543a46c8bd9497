"""Schema migrations (Alembic), run from code: ``upgrade(engine)`` brings a database to head.

No ``alembic.ini`` is needed. Revisions are numbered ``0001``, ``0002``...
and only go up (no downgrades: restore a backup instead). To start a new one::

    python -c "from services.conductor.db import migrations; migrations.revision('add x')"

then fill in ``versions/vNNNN_add_x.py`` and change ``models.py`` to match.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from services.conductor.db.engine import for_writes

_HERE = Path(__file__).resolve().parent
# Serialises concurrent upgrades from several conductors on PostgreSQL.
_PG_LOCK_KEY = 0x72_70_63_6C_69_62  # "rpclib"


def config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at this package; ``connection`` is what env.py migrates."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE))
    cfg.set_main_option("file_template", "v%%(rev)s_%%(slug)s")
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision."""
    revision = ScriptDirectory.from_config(config()).get_current_head()
    assert revision is not None
    return revision


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database up to ``revision``, in one transaction (safe to run concurrently)."""
    with for_writes(engine).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        command.upgrade(config(connection), revision)


def current(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def revision(message: str) -> None:
    """Generate an empty new revision file (development helper)."""
    command.revision(config(), message=message, rev_id=f"{int(head()) + 1:04d}")
