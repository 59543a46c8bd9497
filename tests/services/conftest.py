"""A conductor on memory:// with a real SQLite database, for service tests.

These tests are about the conductor's database semantics over RPC, on a bus
without accounts, so the conductor runs with authorization off (it takes
hosts from the arguments). Who may do what is tested in tests/security.
"""

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
        [ConductorManager(db, notifier, authorization=False), rpclib.ObjectBackportEndpoint()],
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
