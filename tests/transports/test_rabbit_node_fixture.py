"""The private RabbitMQ node fixture works: it is up, private, restartable and does TLS."""

from __future__ import annotations

import socket
import ssl
import uuid
from pathlib import Path

import kombu
import pytest

from tests.support.rabbit_node import (
    HOST,
    NodeError,
    RabbitNode,
    alive,
    process_name,
)


def _listening(pids: dict[int, int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the processes listen on, from /proc."""
    inodes: set[str] = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            links = [p.readlink() for p in fd_dir.iterdir()]
        except OSError:
            continue
        inodes.update(str(t)[8:-1] for t in links if str(t).startswith("socket:["))
    found = set()
    for table, size in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            addr, port = cols[1].split(":")
            raw = bytes.fromhex(addr)
            if size == 8:
                found.add((socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)))
            else:
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                found.add((socket.inet_ntop(socket.AF_INET6, words), int(port, 16)))
    return found


def _processes_naming(text: str) -> list[int]:
    """Pids whose command line mentions ``text`` (the node name is on beam.smp's)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _round_trip(conn: kombu.Connection, *, durable: bool = False) -> None:
    """Publish one message to a fresh queue and get it back."""
    name = f"fixture-{uuid.uuid4().hex[:8]}"
    queue = kombu.Queue(name, routing_key=name, durable=durable, auto_delete=not durable)
    body = {"n": 1, "uuid": name}
    with conn.channel() as channel:
        bound = queue(channel)
        bound.declare()
        kombu.Producer(channel).publish(body, routing_key=name, serializer="json")
        message = bound.get(no_ack=True)
        bound.delete()
    assert message is not None and message.decode() == body


def test_node_is_up_on_loopback_only(rabbit_node: RabbitNode) -> None:
    assert rabbit_node.running
    names = {process_name(pid) for pid in rabbit_node.pids()}
    assert "beam.smp" in names
    assert set(_processes_naming(rabbit_node.nodename)) <= set(rabbit_node.pids())
    assert rabbit_node.nodename in rabbit_node.rabbitmqctl("status")
    listening = _listening(rabbit_node.pids())
    ports = {port for _, port in listening}
    assert {rabbit_node.port, rabbit_node.tls_port, rabbit_node.dist_port} <= ports
    assert {addr for addr, _ in listening} == {HOST}, listening
    assert rabbit_node.url == f"rabbit://guest:guest@127.0.0.1:{rabbit_node.port}/"


def test_plain_round_trip(rabbit_node: RabbitNode) -> None:
    with kombu.Connection(rabbit_node.amqp_url, connect_timeout=5) as conn:
        _round_trip(conn)


def test_restart_keeps_durable_queue_and_persistent_message(rabbit_node: RabbitNode) -> None:
    name = f"durable-{uuid.uuid4().hex[:8]}"
    queue = kombu.Queue(name, routing_key=name, durable=True, auto_delete=False)
    options = {"confirm_publish": True}
    with kombu.Connection(rabbit_node.amqp_url, transport_options=options) as conn:
        producer = kombu.Producer(conn.default_channel)
        producer.publish(
            {"kept": name}, routing_key=name, declare=[queue], delivery_mode=2, serializer="json"
        )
    beam_before = {p for p in rabbit_node.pids() if process_name(p) == "beam.smp"}

    rabbit_node.restart()

    beam_after = {p for p in rabbit_node.pids() if process_name(p) == "beam.smp"}
    assert beam_after and not beam_after & beam_before  # really a new VM
    with kombu.Connection(rabbit_node.amqp_url) as conn, conn.channel() as channel:
        bound = queue(channel)
        message = bound.get(no_ack=True)
        bound.delete()
    assert message is not None and message.decode() == {"kept": name}


def test_tls_round_trip_with_client_certificate(rabbit_node: RabbitNode) -> None:
    for path in (rabbit_node.certs.ca, rabbit_node.certs.client_cert, rabbit_node.certs.client_key):
        assert path.is_file()
    assert f"127.0.0.1:{rabbit_node.tls_port}/?ssl_ca=" in rabbit_node.tls_url
    url = f"amqp://guest:guest@{HOST}:{rabbit_node.tls_port}//"
    with kombu.Connection(url, ssl=rabbit_node.kombu_ssl(), connect_timeout=5) as conn:
        conn.connect()
        assert isinstance(conn.connection.transport.sock, ssl.SSLSocket)
        _round_trip(conn)


def test_tls_port_refuses_plain_tcp_and_clients_without_certificate(
    rabbit_node: RabbitNode,
) -> None:
    url = f"amqp://guest:guest@{HOST}:{rabbit_node.tls_port}//"
    with pytest.raises(Exception), kombu.Connection(url, connect_timeout=3) as conn:  # noqa: B017
        conn.connect()
    no_cert = {"ca_certs": str(rabbit_node.certs.ca), "cert_reqs": ssl.CERT_REQUIRED}
    with (
        pytest.raises(Exception),  # noqa: B017
        kombu.Connection(url, ssl=no_cert, connect_timeout=3) as conn,
    ):
        conn.connect()
        _round_trip(conn)


def test_close_all_connections_drops_clients_only(rabbit_node: RabbitNode) -> None:
    with kombu.Connection(rabbit_node.amqp_url, heartbeat=0) as conn:
        conn.connect()
        assert rabbit_node.connection_count() >= 1
        rabbit_node.close_all_connections()
        with pytest.raises(Exception):  # noqa: B017  (ConnectionForced, reset: version-dependent)
            conn.drain_events(timeout=5)
    assert rabbit_node.running
    with kombu.Connection(rabbit_node.amqp_url) as conn:
        _round_trip(conn)


def test_stop_leaves_no_process_and_the_fixture_starts_it_again(
    rabbit_node_session: RabbitNode, request: pytest.FixtureRequest
) -> None:
    node = rabbit_node_session
    assert node.running
    tree = node.pids()
    assert len(tree) >= 3  # script, beam.smp, erl_child_setup (and helpers)

    node.stop()

    assert alive(tree) == []
    assert _processes_naming(node.nodename) == []
    assert not node.running
    with pytest.raises(OSError):
        socket.create_connection((HOST, node.port), timeout=2).close()

    # a later test asking for the node gets it running again, on the same ports
    assert request.getfixturevalue("rabbit_node") is node
    assert node.running and not set(node.pids()) & set(tree)
    with kombu.Connection(node.amqp_url) as conn:
        _round_trip(conn)


def test_a_node_that_cannot_start_fails_with_its_log_and_leaves_nothing() -> None:
    node = RabbitNode()
    try:
        config = node.dir / "rabbitmq.conf"
        config.write_text(config.read_text() + "no_such.setting = 1\n")
        with pytest.raises(NodeError, match="no_such") as info:
            node.start(timeout=60)
        assert str(node.dir) in str(info.value)  # the log tail names its files
        assert not node.running
        assert _processes_naming(node.nodename) == []
    finally:
        node.close()
    assert not node.dir.exists()
