"""pytest fixtures for testing code built on rpclib (registered by entry point).

- ``rpclib_bus``: an isolated in-memory bus (:class:`rpclib.testing.TestBus`), dropped
  after the test;
- ``rpclib_transport``: a transport on that bus;
- ``rpclib_stub_server``: ``rpclib_stub_server(target, answers)`` starts a
  :class:`rpclib.testing.StubServer` on the bus (stopped after the test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from rpclib.target import Target
from rpclib.testing.bus import TestBus
from rpclib.testing.stub import StubServer
from rpclib.transport import Transport


@pytest.fixture
def rpclib_bus() -> Iterator[TestBus]:
    """An in-memory bus no other test sees."""
    with TestBus() as bus:
        yield bus


@pytest.fixture
def rpclib_transport(rpclib_bus: TestBus) -> Transport:
    """A transport on this test's bus."""
    return rpclib_bus.transport()


@pytest.fixture
def rpclib_stub_server(
    rpclib_bus: TestBus,
) -> Iterator[Callable[..., StubServer]]:
    """``start(target, answers, **server_options)``: a running stub server on the test's bus."""
    started: list[StubServer] = []

    def start(target: Target, answers: Mapping[str, Any], **options: Any) -> StubServer:
        stub = StubServer(rpclib_bus.transport(), target, answers, **options)
        stub.start()
        started.append(stub)
        return stub

    yield start
    for stub in started:
        stub.stop()
