"""Both RabbitMQ generations for rabbit:// tests: the shared 3.10 and the session's private 4.x.

The 4.x node (``rabbit4_node_session``, every deprecated feature denied) is
started once per session and shared; tests get vhosts of their own on it as
they do on the shared broker. A plugin of tests/conftest.py.

:class:`Broker` gives a test what it needs of either: its URL, vhost and a
``rabbitmqctl`` scoped to the right node.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.support import rabbit as shared
from tests.support.rabbit_node import NodeError, RabbitNode, running

GENERATIONS = ("3.10", "4.x")


@dataclass(frozen=True)
class Broker:
    """A vhost on one RabbitMQ generation."""

    generation: str
    url: str
    vhost: str
    ctl: Callable[..., str]
    """``rabbitmqctl`` on this broker's node (fails the test on error)."""

    def url_with(self, query: str) -> str:
        return self.url + (f"?{query}" if query else "")

    def queues(self) -> dict[str, dict[str, str]]:
        """Queue name -> type, durable, auto_delete, exclusive, arguments, consumers, messages."""
        columns = ("type", "durable", "auto_delete", "exclusive", "arguments", "consumers")
        out = self.ctl(
            "list_queues", "-p", self.vhost, "-q", "--no-table-headers", "name", *columns
        )
        found: dict[str, dict[str, str]] = {}
        for line in out.splitlines():
            parts = line.split("\t")  # quorum queues leave "exclusive" empty
            if len(parts) == len(columns) + 1:
                found[parts[0]] = dict(zip(columns, parts[1:], strict=True))
        return found

    def connection_count(self) -> int:
        out = self.ctl("list_connections", "-q", "--no-table-headers", "vhost")
        return sum(1 for line in out.splitlines() if line.strip() == self.vhost)

    def drop_connections(self) -> None:
        self.ctl("close_all_connections", "-p", self.vhost, "test: simulated connection loss")


def _node_ctl(node: RabbitNode) -> Callable[..., str]:
    def ctl(*args: str) -> str:
        try:
            return node.rabbitmqctl(*args)
        except NodeError as exc:
            pytest.fail(str(exc), pytrace=False)

    return ctl


def _new_vhost(ctl: Callable[..., str]) -> str:
    vhost = f"rpclib-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    ctl("add_vhost", vhost)
    ctl("set_permissions", "-p", vhost, shared.USER, ".*", ".*", ".*")
    return vhost


def _url(node: RabbitNode, vhost: str) -> str:
    return f"rabbit://{shared.USER}:{shared.PASSWORD}@127.0.0.1:{node.port}/{vhost}"


@pytest.fixture(scope="session")
def rabbit4_vhost(rabbit4_node_session: RabbitNode) -> Iterator[str]:
    """A vhost of this session on the RabbitMQ 4 node."""
    ctl = _node_ctl(running(rabbit4_node_session))
    vhost = _new_vhost(ctl)
    yield vhost
    if rabbit4_node_session.running:
        ctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def rabbit4_url(rabbit4_node_session: RabbitNode, rabbit4_vhost: str) -> str:
    """A rabbit:// URL for the session's vhost on the RabbitMQ 4 node (deprecations denied)."""
    return _url(rabbit4_node_session, rabbit4_vhost)


@pytest.fixture(params=GENERATIONS)
def broker(request: pytest.FixtureRequest) -> Broker:
    """The session's vhost on each broker generation in turn."""
    if request.param == "3.10":
        vhost = request.getfixturevalue("rabbit_vhost")
        return Broker("3.10", request.getfixturevalue("rabbit_url"), vhost, shared.rabbitmqctl)
    node = running(request.getfixturevalue("rabbit4_node_session"))
    return Broker(
        "4.x", request.getfixturevalue("rabbit4_url"), request.getfixturevalue("rabbit4_vhost"),
        _node_ctl(node),
    )  # fmt: skip


@pytest.fixture(params=GENERATIONS)
def fresh_broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A rabbit:// URL on a vhost of this test's own, on each broker generation in turn."""
    if request.param == "3.10":
        yield request.getfixturevalue("fresh_rabbit_url")
        return
    node = running(request.getfixturevalue("rabbit4_node_session"))
    ctl = _node_ctl(node)
    vhost = _new_vhost(ctl)
    yield _url(node, vhost)
    if node.running:
        ctl("delete_vhost", vhost)


@pytest.fixture(params=GENERATIONS)
def fresh_broker_admin_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Like ``fresh_broker_url``, with the options rpclib.access needs to administer it
    (``rpclib.access.login_url`` drops them for the accounts it makes)."""
    if request.param == "3.10":
        yield request.getfixturevalue("fresh_rabbit_url")  # the rabbitmqctl on PATH
        return
    node = running(request.getfixturevalue("rabbit4_node_session"))
    ctl = _node_ctl(node)
    vhost = _new_vhost(ctl)
    yield f"{_url(node, vhost)}?rabbitmqctl={node.ctl_script()}"
    if node.running:
        ctl("delete_vhost", vhost)
