"""Engines for the conductor's database: SQLite by default, PostgreSQL by URL.

SQLite is set up for several threads and processes sharing one file: WAL
journal (readers never block the writer), foreign keys on, a busy timeout,
and SQLAlchemy (not the sqlite3 module) emitting BEGIN, so every transaction
really is one. Transactions opened through :func:`for_writes` begin with
``BEGIN IMMEDIATE``: writers queue for the file lock up front instead of
failing mid-transaction when another writer committed first.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import URL, make_url

DEFAULT_BUSY_TIMEOUT = 30.0
_WRITE_OPTION = "conductor_write"


def default_state_dir() -> Path:
    """``$RPCLIB_STATE_DIR``, else ``$XDG_STATE_HOME/rpclib``, else ``~/.local/state/rpclib``."""
    if explicit := os.environ.get("RPCLIB_STATE_DIR"):
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "rpclib"


def default_url(state_dir: Path | None = None) -> str:
    """The default database: ``sqlite:///<state dir>/conductor.sqlite``."""
    return f"sqlite:///{(state_dir or default_state_dir()) / 'conductor.sqlite'}"


def create_engine(
    url: str | URL | None = None,
    *,
    state_dir: Path | None = None,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    echo: bool = False,
) -> Engine:
    """An engine for ``url`` (default: :func:`default_url`), ready for concurrent use.

    ``busy_timeout`` is how long a SQLite writer waits for the file lock.
    In-memory SQLite is refused: each pooled connection would see its own
    empty database.
    """
    parsed = make_url(url if url is not None else default_url(state_dir))
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, busy_timeout, echo)
    return sqlalchemy.create_engine(parsed, echo=echo, pool_pre_ping=True)


def check_engine(engine: Engine) -> None:
    """Refuse a SQLite engine not made by :func:`create_engine` (its transactions would race)."""
    if engine.dialect.name == "sqlite" and not event.contains(engine, "begin", _sqlite_on_begin):
        raise ValueError(
            "a SQLite engine for the conductor must come from "
            "services.conductor.db.create_engine (WAL, foreign keys, BEGIN IMMEDIATE writers)"
        )


def for_writes(engine: Engine) -> Engine:
    """The same engine, marking its transactions as writers (``BEGIN IMMEDIATE`` on SQLite)."""
    return engine.execution_options(**{_WRITE_OPTION: True})


def _sqlite_engine(url: URL, busy_timeout: float, echo: bool) -> Engine:
    if url.database in (None, "", ":memory:") or (url.database or "").startswith("file::memory"):
        raise ValueError(f"in-memory SQLite cannot be shared between connections: {url}")
    Path(url.database or "").parent.mkdir(parents=True, exist_ok=True)
    engine = sqlalchemy.create_engine(
        url,
        echo=echo,
        connect_args={"timeout": busy_timeout, "check_same_thread": False},
    )
    event.listen(engine, "connect", sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Set up each new SQLite connection: WAL journal, NORMAL sync, foreign keys."""
    dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself
    cursor = dbapi_connection.cursor()
    try:
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the lock.

    SQLite answers the switch "database is locked" at once, without its busy
    handler, when two connections open a new database together (two
    conductors starting, or migrating, at the same moment).
    """
    deadline = time.monotonic() + DEFAULT_BUSY_TIMEOUT
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _sqlite_on_begin(connection: Connection) -> None:
    writer = connection.get_execution_options().get(_WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")
