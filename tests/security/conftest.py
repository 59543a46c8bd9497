"""A memory bus with accounts, one per principal, and a transport per principal."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

import rpclib
from rpclib.transports.memory import add_account, reset_bus

PRINCIPALS = ("conductor", "scheduler", "compute-1", "compute-2", "cli")


@pytest.fixture
def secure_bus() -> Iterator[str]:
    """A bus whose every driver must log in; one account per principal (password = name*2)."""
    name = f"sec{uuid.uuid4().hex[:12]}"
    for principal in PRINCIPALS:
        add_account(name, principal, principal * 2)
    yield name
    reset_bus(name)


@pytest.fixture
def as_principal(secure_bus: str) -> Iterator[Callable[[str], rpclib.Transport]]:
    """A transport logged in as the given principal (closed after the test)."""
    opened: list[rpclib.Transport] = []

    def login(principal: str) -> rpclib.Transport:
        transport = rpclib.get_transport(f"memory://{principal}:{principal * 2}@{secure_bus}")
        opened.append(transport)
        return transport

    yield login
    for transport in opened:
        transport.close()


# --- rabbit:// accounts on a private RabbitMQ node ------------------------------------------

RABBIT_VHOST = "rpclib-security"


@pytest.fixture(scope="session", params=["3.10", "4.x"])
def rabbit_security_node(request: pytest.FixtureRequest) -> Iterator[object]:
    """A private RabbitMQ node of each generation (4.x: every deprecated feature denied)
    with the management API on a free 127.0.0.1 port."""
    from tests.support.rabbit_node import free_ports, node_for_session

    (management_port,) = free_ports(1)
    config = f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {management_port}\n"
    generation = 4 if request.param == "4.x" else 3
    for node in node_for_session(("rabbitmq_management",), generation=generation, config=config):
        node.management_port = management_port  # type: ignore[attr-defined]
        yield node
