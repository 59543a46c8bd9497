"""Compute nodes never touch the database: no driver, no ORM, no database URL."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

from services.compute import service as compute_service

ROOT = Path(__file__).resolve().parents[2]
DATABASE_MODULES = (
    "sqlalchemy",
    "alembic",
    "psycopg",
    "psycopg2",
    "sqlite3",
    "_sqlite3",
    "pymysql",
    "MySQLdb",
    "asyncpg",
)

PROBE = f"""
import json, sys
import services.compute.service, services.compute.manager
loaded = sorted(
    m for m in sys.modules
    if m.split(".")[0] in {DATABASE_MODULES!r}
    or m.startswith(("services.conductor.db", "services.conductor.manager",
                     "services.conductor.service", "services.billing"))
)
print(json.dumps(loaded))
"""


def test_importing_compute_loads_no_database_module() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_the_probe_would_see_a_database_import() -> None:
    """The check above can fail: importing the conductor does load SQLAlchemy."""
    probe = PROBE.replace(
        "import services.compute.service, services.compute.manager",
        "import services.conductor.service",
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert "sqlalchemy" in json.loads(result.stdout)


def test_compute_takes_no_database_settings() -> None:
    assert "db_url" not in compute_service.OPTIONS
    assert "db_url" not in inspect.signature(compute_service.ComputeService).parameters
