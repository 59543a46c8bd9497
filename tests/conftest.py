"""Fixtures shared by the whole suite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import rpclib
from rpclib.transports.memory import reset_bus

# The shared contract suites' asserts get pytest's rewriting, whichever test package
# (tests/etcd, tests/amqp1...) imports them first.
pytest.register_assert_rewrite(
    "tests.transports.driver_contract", "tests.transports.envelope_contract"
)

pytest_plugins = [
    "tests.support.rabbit",
    "tests.support.rabbit_node",
    "tests.support.rabbit_brokers",
    "tests.support.rabbit_cluster",
    "tests.support.libvirtd",
    "tests.support.etcd",
    "tests.support.amqp1",
]


@pytest.fixture
def bus_url() -> Iterator[str]:
    """A memory:// URL naming a bus no other test uses (dropped afterwards)."""
    name = f"t{uuid.uuid4().hex[:12]}"
    yield f"memory://{name}"
    reset_bus(name)


@pytest.fixture
def transport(bus_url: str) -> Iterator[rpclib.Transport]:
    t = rpclib.get_transport(bus_url)
    yield t
    t.close()


@pytest.fixture
def make_transport(bus_url: str) -> Iterator[object]:
    """Open more transports on the same bus (models separate processes)."""
    opened: list[rpclib.Transport] = []

    def make() -> rpclib.Transport:
        t = rpclib.get_transport(bus_url)
        opened.append(t)
        return t

    yield make
    for t in opened:
        t.close()
