"""Three private RabbitMQ nodes joined into one cluster, for failover tests.

Each node is a :class:`~tests.support.rabbit_node.RabbitNode` on its own free
127.0.0.1 ports and temp dir; the three share one Erlang cookie and one epmd
(the machine's if it runs, else one started here) so they can find each
other. They boot in parallel; the second and third then join the first
(``rabbitmqctl stop_app``, ``join_cluster``, ``start_app``). Tests crash a
node with :meth:`RabbitCluster.kill9` (SIGKILL of that node's beam.smp, by
pid) and bring it back with :meth:`RabbitCluster.restart`; it rejoins the
cluster from its own data. The cluster is built once per session
(``rabbit_cluster_session``); the ``rabbit_cluster`` fixture hands it to a
test with every node running again.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from tests.support.rabbit_node import (
    HOST,
    PASSWORD,
    SYSTEM_EPMD_PORT,
    USER,
    NodeError,
    RabbitNode,
    _port_open,
    start_epmd,
    stop_process,
)

SIZE = 3
JOIN_TIMEOUT = 120.0


class RabbitCluster:
    """``SIZE`` private nodes in one cluster; nothing runs until ``start()``."""

    def __init__(self, size: int = SIZE, *, config: str = "") -> None:
        cookie = secrets.token_hex(16).upper()
        self._epmd: subprocess.Popen[bytes] | None = None
        epmd_port = SYSTEM_EPMD_PORT if _port_open(SYSTEM_EPMD_PORT) else self._start_epmd()
        self.nodes = [
            RabbitNode(cookie=cookie, epmd_port=epmd_port, config=config) for _ in range(size)
        ]
        self._closed = False
        atexit.register(self.close)

    def url(self, first: int = 0) -> str:
        """An rpclib URL listing every node, node ``first`` first (clients connect there)."""
        order = self.nodes[first:] + self.nodes[:first]
        hosts = ",".join(f"{USER}:{PASSWORD}@{HOST}:{node.port}" for node in order)
        return f"rabbit://{hosts}/"

    def start(self) -> None:
        """Boot every node in parallel, then join the others to the first."""
        for node in self.nodes:
            node.launch()  # from this (main) thread: see RabbitNode.launch
        for node in self.nodes:
            node.wait_ready()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.rabbitmqctl("stop_app", timeout=JOIN_TIMEOUT)
            node.rabbitmqctl("join_cluster", first.nodename, timeout=JOIN_TIMEOUT)
            node.rabbitmqctl("start_app", timeout=JOIN_TIMEOUT)
        running = self.running_nodes(first)
        if set(running) != {node.nodename for node in self.nodes}:
            raise NodeError(f"the cluster formed with {running} only")

    def running_nodes(self, via: RabbitNode) -> list[str]:
        """The nodes ``via`` sees running in its cluster (``rabbitmqctl cluster_status``)."""
        out = via.rabbitmqctl("cluster_status", "--formatter", "json")
        return list(json.loads(out).get("running_nodes", []))

    def kill9(self, node: RabbitNode) -> int:
        """Crash ``node``: SIGKILL of its beam.smp by pid (see RabbitNode.kill9)."""
        return node.kill9()

    def restart(self, node: RabbitNode) -> None:
        """Reap what is left of a killed (or stopped) node and start it: it rejoins."""
        node.stop()
        node.start()

    def ensure_running(self) -> None:
        """Start again any node an earlier test left down (in parallel), wait for all."""
        down = [node for node in self.nodes if not node.running]
        for node in down:
            node.stop()  # reap a killed node's leftovers
            node.launch()
        for node in down:
            node.wait_ready()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for node in self.nodes:
                with contextlib.suppress(NodeError):
                    node.close()
        finally:
            if self._epmd is not None:
                stop_process(self._epmd)
            atexit.unregister(self.close)

    def _start_epmd(self) -> int:
        """An epmd of our own on a free port (no system one runs); stopped by its pid."""
        self._epmd, port = start_epmd()
        return port

    def __repr__(self) -> str:
        return f"<RabbitCluster {', '.join(repr(node) for node in self.nodes)}>"


@pytest.fixture(scope="session")
def rabbit_cluster_session() -> Iterator[RabbitCluster]:
    """Three private RabbitMQ nodes in one cluster, built once per session."""
    try:
        cluster = RabbitCluster()
    except NodeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        cluster.start()
    except (NodeError, subprocess.TimeoutExpired) as exc:
        tails = "\n".join(node.log_tail(10) for node in cluster.nodes)
        cluster.close()
        pytest.fail(f"the RabbitMQ cluster did not form: {exc}\n{tails}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def rabbit_cluster(rabbit_cluster_session: RabbitCluster) -> RabbitCluster:
    """The session's cluster with every node running (a node killed earlier restarted)."""
    try:
        rabbit_cluster_session.ensure_running()
    except NodeError as exc:
        pytest.fail(str(exc), pytrace=False)
    return rabbit_cluster_session
