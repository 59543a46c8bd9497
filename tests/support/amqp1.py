"""Fixtures for the AMQP 1.0 transport's tests: the plugin on the shared broker, a vhost.

``amqp1_plugin`` enables ``rabbitmq_amqp1_0`` on the shared broker once per
session (idempotent; about 5 s the first time) and fails loudly if it cannot:
a missing plugin is an environment error, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.rabbit import BROKER, PASSWORD, USER, rabbitmqctl
from tests.support.rabbit_node import RabbitNode, free_ports, node_for_session, running

PLUGIN = "rabbitmq_amqp1_0"


@pytest.fixture(scope="session")
def amqp1_plugin() -> None:
    """Enable the AMQP 1.0 plugin on the shared broker (online, idempotent)."""
    exe = shutil.which("rabbitmq-plugins")
    if exe is None:
        pytest.fail("rabbitmq-plugins is not installed: the amqp1 tests need the broker's tools")
    result = subprocess.run([exe, "enable", PLUGIN], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        pytest.fail(f"could not enable {PLUGIN}: {result.stderr or result.stdout}")


def new_vhost() -> str:
    vhost = f"rpclib-amqp1-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, USER, ".*", ".*", ".*")
    return vhost


@pytest.fixture(scope="session")
def amqp1_vhost(amqp1_plugin: None) -> Iterator[str]:
    """A vhost for this test session's amqp1 tests, deleted after it."""
    vhost = new_vhost()
    yield vhost
    rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def amqp1_url(amqp1_vhost: str) -> str:
    """An amqp1:// URL for the session's vhost on the shared broker."""
    return f"amqp1://{USER}:{PASSWORD}@{BROKER}/{amqp1_vhost}"


@pytest.fixture
def fresh_amqp1_url(amqp1_plugin: None) -> Iterator[str]:
    """An amqp1:// URL on a vhost of this test's own (deleted after it)."""
    vhost = new_vhost()
    yield f"amqp1://{USER}:{PASSWORD}@{BROKER}/{vhost}"
    rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def amqp1_node_session() -> Iterator[RabbitNode]:
    """A private RabbitMQ node with ``rabbitmq_amqp1_0`` for tests that restart it."""
    yield from node_for_session(plugins=(PLUGIN,))


@pytest.fixture
def amqp1_node(amqp1_node_session: RabbitNode) -> RabbitNode:
    """The private amqp1 node, running (started again if an earlier test left it stopped)."""
    return running(amqp1_node_session)


def node_url(node: RabbitNode, query: str = "") -> str:
    """The amqp1:// URL of a private node's default vhost."""
    return f"amqp1://{USER}:{PASSWORD}@127.0.0.1:{node.port}/{'?' + query if query else ''}"


def node_tls_url(node: RabbitNode, query: str = "", host: str = "localhost") -> str:
    """The amqps:// URL of a private node's TLS listener: its test CA, the client certificate.

    ``localhost`` by default: proton checks a certificate's DNS names only, and
    the node's certificate names ``localhost`` (and 127.0.0.1 as an IP entry).
    """
    extra = f"&{query}" if query else ""
    return f"amqps://{USER}:{PASSWORD}@{host}:{node.tls_port}/?{node.certs.url_query()}{extra}"


# --- private nodes with the management plugin (least-privilege accounts) ---------------


@dataclass(frozen=True)
class ManagedNode:
    """A private node of one generation running the management plugin on a free port of
    its own: how rpclib.transports.amqp1.access provisions accounts."""

    node: RabbitNode
    generation: int
    management_port: int

    @property
    def strategy(self) -> str:
        return "rabbitmq" if self.generation == 3 else "rabbitmq4"

    def admin_url(self, vhost: str = "") -> str:
        """The administrator's amqp1:// URL of ``vhost`` (default: ``/``)."""
        return (
            f"amqp1://{USER}:{PASSWORD}@127.0.0.1:{self.node.port}/{vhost}"
            f"?addressing={self.strategy}&management_port={self.management_port}"
        )


def managed_node(generation: int) -> Iterator[ManagedNode]:
    """Start a node of ``generation`` with ``rabbitmq_management`` (and, on 3.x, the AMQP 1.0
    plugin), yield it, stop it (a fixture's body)."""
    port = free_ports(1)[0]
    config = f"management.tcp.port = {port}\nmanagement.tcp.ip = 127.0.0.1\n"
    plugins = ("rabbitmq_management",) + ((PLUGIN,) if generation == 3 else ())
    for node in node_for_session(plugins, generation=generation, config=config):
        yield ManagedNode(node, generation, port)


@pytest.fixture(scope="session")
def amqp1_managed_node3() -> Iterator[ManagedNode]:
    """The session's RabbitMQ 3.x node with the AMQP 1.0 and management plugins."""
    yield from managed_node(3)


@pytest.fixture(scope="session")
def amqp1_managed_node4() -> Iterator[ManagedNode]:
    """The session's RabbitMQ 4 node (native AMQP 1.0) with the management plugin."""
    yield from managed_node(4)


# --- RabbitMQ 4 (native AMQP 1.0, every deprecated feature denied) -------------------------

GENERATIONS = ("rabbitmq3", "rabbitmq4")
"""The broker generations the amqp1 suites run against: the shared 3.10 broker's plugin,
and the session's private RabbitMQ 4 node (``rabbit4_node_session``)."""


def new_node_vhost(node: RabbitNode) -> str:
    vhost = f"rpclib-amqp1-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    node.rabbitmqctl("add_vhost", vhost)
    node.rabbitmqctl("set_permissions", "-p", vhost, USER, ".*", ".*", ".*")
    return vhost


@pytest.fixture
def amqp1_rabbit4_url(rabbit4_node: RabbitNode) -> str:
    """An amqp1:// URL (default addressing) on the RabbitMQ 4 node's default vhost."""
    return node_url(rabbit4_node)


@pytest.fixture
def fresh_amqp1_rabbit4_url(rabbit4_node: RabbitNode) -> Iterator[str]:
    """An amqp1:// URL on a vhost of this test's own on the RabbitMQ 4 node."""
    vhost = new_node_vhost(rabbit4_node)
    yield f"amqp1://{USER}:{PASSWORD}@127.0.0.1:{rabbit4_node.port}/{vhost}"
    rabbit4_node.rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(params=GENERATIONS)
def any_amqp1_url(request: pytest.FixtureRequest) -> str:
    """The session's amqp1:// URL on each broker generation in turn."""
    name = "amqp1_url" if request.param == "rabbitmq3" else "amqp1_rabbit4_url"
    return str(request.getfixturevalue(name))


@pytest.fixture(params=GENERATIONS)
def any_fresh_amqp1_url(request: pytest.FixtureRequest) -> str:
    """A vhost of the test's own, on each broker generation in turn."""
    name = "fresh_amqp1_url" if request.param == "rabbitmq3" else "fresh_amqp1_rabbit4_url"
    return str(request.getfixturevalue(name))


class CutProxy:
    """A TCP forwarder to a broker that a test can cut: a broker that becomes unreachable.

    ``cut()`` closes every forwarded connection and the listening socket, so
    the client's connection drops and every reconnect is refused, as when a
    broker's host goes away; the broker itself keeps serving other tests.
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = False
        threading.Thread(target=self._accept, name="cut-proxy", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._cut:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            sockets, self._sockets = self._sockets, []
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture(params=GENERATIONS)
def fresh_amqp1_admin_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The administrator's URL of a vhost of the test's own on each generation's managed
    node, with the options rpclib.access needs to provision accounts in it."""
    managed: ManagedNode = request.getfixturevalue(
        "amqp1_managed_node3" if request.param == "rabbitmq3" else "amqp1_managed_node4"
    )
    node = running(managed.node)
    vhost = new_node_vhost(node)
    yield managed.admin_url(vhost)
    if node.running:
        node.rabbitmqctl("delete_vhost", vhost)
