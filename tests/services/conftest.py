"""A conductor on memory:// with a real SQLite database, for service tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import rpclib
from services.conductor.db import ConductorDB, create_engine, migrations
from services.conductor.manager import ConductorManager
from services.conductor.rpcapi import ConductorAPI


@dataclass
class Conductor:
    db: ConductorDB
    server: rpclib.RPCServer
    notifier: rpclib.Notifier


@pytest.fixture
def conductor(tmp_path: Path, transport: rpclib.Transport) -> Iterator[Conductor]:
    engine = create_engine(state_dir=tmp_path)
    migrations.upgrade(engine)
    db = ConductorDB(engine)
    notifier = rpclib.Notifier(transport, publisher_id="conductor.c1", ensure_pools=["billing"])
    server = rpclib.RPCServer(
        transport,
        rpclib.Target(topic="conductor", server="c1"),
        [ConductorManager(db, notifier), rpclib.ObjectBackportEndpoint()],
    )
    server.start()
    yield Conductor(db, server, notifier)
    server.stop()
    server.wait(10)
    notifier.close()
    engine.dispose()


@pytest.fixture
def api(transport: rpclib.Transport, conductor: Conductor) -> ConductorAPI:
    return ConductorAPI(transport, timeout=10)
