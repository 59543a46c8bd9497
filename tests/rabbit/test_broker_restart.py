"""rpclib over a RabbitMQ node that restarts or drops every connection mid-stream.

Client and server are separate processes (``peer_client.py``,
``peer_server.py``) on the session's private node (``rabbit_node``). Every
at-least-once cast must be handled; a cast handled twice must carry the same
message id both times (that is how a receiver drops duplicates).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import rpclib
from tests.support.processes import PeerScript, read_records
from tests.support.rabbit_node import RabbitNode

CASTS = 5000
PIPELINED_CASTS = 20000  # pipelined casts go out far faster: a longer stream, still mid-way
DISRUPT_AFTER = 2000  # casts sent before the broker goes away
CALL_TIMEOUT = 10.0


def cast_stream_survives(
    node: RabbitNode,
    tmp_path: Path,
    peers: Callable[..., PeerScript],
    disrupt: Callable[[], None],
    *client_args: str,
    casts: int = CASTS,
) -> None:
    topic = f"stream-{uuid.uuid4().hex[:8]}"
    record = tmp_path / "handled.txt"
    record.touch()
    server = peers("peer_server.py", node.url, topic, str(record))
    server.expect(lambda line: line == "ready", 60, "server start")
    client = peers("peer_client.py", node.url, topic, str(casts), *client_args)
    client.expect(lambda line: line == f"sent {DISRUPT_AFTER}", 120, "casts before the disruption")

    disrupt()

    handled_by_then = len(read_records(record))
    assert handled_by_then < casts, "the disruption came after the stream had ended"
    client.expect(lambda line: line == "done", 240, "the rest of the casts")
    assert client.stop() == 0, str(client)
    deadline = time.monotonic() + 120
    while {r[0] for r in read_records(record)} != set(range(casts)):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    records = read_records(record)
    by_seq: dict[int, set[str]] = {}
    for seq, message_id, _ in records:
        by_seq.setdefault(seq, set()).add(message_id)
    missing = sorted(set(range(casts)) - set(by_seq))
    assert not missing, f"{len(missing)} casts never handled, first {missing[:10]}\n{server}"
    ambiguous = {seq: ids for seq, ids in by_seq.items() if len(ids) > 1}
    assert not ambiguous, f"duplicates a receiver cannot tell by message id: {ambiguous}"
    all_ids = [next(iter(ids)) for ids in by_seq.values()]
    assert len(set(all_ids)) == casts, "two different casts carried the same message id"
    duplicates = len(records) - casts
    print(f"{casts} casts handled, {duplicates} redelivered duplicates (same message id)")


def test_casts_survive_a_broker_restart(
    rabbit_node: RabbitNode, tmp_path: Path, peers: Callable[..., PeerScript]
) -> None:
    cast_stream_survives(rabbit_node, tmp_path, peers, rabbit_node.restart)


def test_casts_survive_the_broker_closing_every_connection(
    rabbit_node: RabbitNode, tmp_path: Path, peers: Callable[..., PeerScript]
) -> None:
    cast_stream_survives(rabbit_node, tmp_path, peers, rabbit_node.close_all_connections)


def test_pipelined_casts_survive_a_broker_restart(
    rabbit_node: RabbitNode, tmp_path: Path, peers: Callable[..., PeerScript]
) -> None:
    cast_stream_survives(
        rabbit_node, tmp_path, peers, rabbit_node.restart, "pipelined", casts=PIPELINED_CASTS
    )


def test_pipelined_casts_survive_the_broker_closing_every_connection(
    rabbit_node: RabbitNode, tmp_path: Path, peers: Callable[..., PeerScript]
) -> None:
    cast_stream_survives(
        rabbit_node,
        tmp_path,
        peers,
        rabbit_node.close_all_connections,
        "pipelined",
        casts=PIPELINED_CASTS,
    )


def test_call_in_flight_fails_within_its_deadline_and_later_calls_work(
    rabbit_node: RabbitNode, tmp_path: Path, peers: Callable[..., PeerScript]
) -> None:
    topic = f"inflight-{uuid.uuid4().hex[:8]}"
    server = peers("peer_server.py", rabbit_node.url, topic, str(tmp_path / "unused.txt"))
    server.expect(lambda line: line == "ready", 60, "server start")
    with rpclib.get_transport(rabbit_node.url) as transport:
        client = rpclib.RPCClient(transport, rpclib.Target(topic=topic), timeout=CALL_TIMEOUT)
        assert client.call({}, "echo", value=1) == 1
        outcome: dict[str, Any] = {}

        def in_flight() -> None:
            t0 = time.monotonic()
            try:
                outcome["result"] = client.call({}, "slow", seconds=3.0)
            except Exception as exc:
                outcome["error"] = exc
            outcome["elapsed"] = time.monotonic() - t0

        caller = threading.Thread(target=in_flight)
        caller.start()
        time.sleep(1.0)  # the server is inside slow() now
        rabbit_node.stop()
        caller.join(CALL_TIMEOUT + 10)
        assert not caller.is_alive(), "the call outlived its deadline"
        assert isinstance(outcome.get("error"), rpclib.ConnectionLost | rpclib.ReplyTimeout), (
            outcome
        )
        assert outcome["elapsed"] <= CALL_TIMEOUT + 2.0, outcome
        print(f"in-flight call: {outcome['error']!r} after {outcome['elapsed']:.1f}s")

        rabbit_node.start()
        deadline = time.monotonic() + 60
        failures: list[Exception] = []
        while True:  # the first calls may race the server's resubscription
            try:
                assert client.prepare(timeout=5).call({}, "echo", value="back") == "back"
                break
            except (rpclib.MessagingError, rpclib.TransportError) as exc:
                failures.append(exc)
                if time.monotonic() > deadline:
                    pytest.fail(f"no call succeeded after the restart: {failures[-3:]}\n{server}")
                time.sleep(0.5)
        for i in range(20):
            assert client.call({}, "echo", value=i) == i


def test_tls_end_to_end(rabbit_node: RabbitNode) -> None:
    topic = f"tls-{uuid.uuid4().hex[:8]}"

    class Echo:
        def echo(self, ctx: dict[str, Any], value: Any) -> Any:
            return value

    with rpclib.get_transport(rabbit_node.tls_url) as transport:
        server = rpclib.RPCServer(transport, rpclib.Target(topic=topic, server="tls"), [Echo()])
        server.start()
        try:
            client = rpclib.RPCClient(transport, rpclib.Target(topic=topic), timeout=CALL_TIMEOUT)
            assert client.call({}, "echo", value={"over": "tls"}) == {"over": "tls"}
            out = rabbit_node.rabbitmqctl(
                "list_connections", "-q", "--no-table-headers", "ssl", "peer_cert_subject"
            )
        finally:
            server.stop()
            server.wait()
    tls = [line for line in out.splitlines() if line.startswith("true")]
    assert tls and all("rpclib-test-client" in line for line in tls), out
