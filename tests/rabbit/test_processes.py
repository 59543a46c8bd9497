"""rpclib over RabbitMQ between separate processes, on RabbitMQ 3.10 and 4.x (``broker``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import rpclib
from tests.rpc.helpers import wait_until
from tests.support.processes import WorkerProcess
from tests.support.rabbit_brokers import Broker

WAIT = 30.0


@pytest.fixture
def topic() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def rabbit_url(broker: Broker) -> str:
    """This module's URL: the session's vhost on each broker generation in turn."""
    return broker.url


@pytest.fixture
def transport(rabbit_url: str) -> Iterator[rpclib.Transport]:
    t = rpclib.get_transport(rabbit_url)
    yield t
    t.close()


def test_call_between_two_processes(
    tmp_path: Path, rabbit_url: str, transport: rpclib.Transport, topic: str
) -> None:
    with WorkerProcess(tmp_path, rabbit_url, name="alpha", topic=topic):
        client = rpclib.RPCClient(transport, rpclib.Target(topic=topic), timeout=WAIT)
        assert client.call({}, "whoami") == "alpha"
        with pytest.raises(rpclib.NoSuchMethod):
            client.call({}, "nosuch")


def test_call_to_a_stopped_server_is_undeliverable_at_once(
    tmp_path: Path, rabbit_url: str, transport: rpclib.Transport, topic: str
) -> None:
    with WorkerProcess(tmp_path, rabbit_url, name="alpha", topic=topic):
        pass
    client = rpclib.RPCClient(transport, rpclib.Target(topic=topic, server="alpha"), timeout=WAIT)
    with pytest.raises(rpclib.Undeliverable):
        client.call({}, "whoami")


def test_competing_servers_share_a_topic(
    tmp_path: Path, rabbit_url: str, transport: rpclib.Transport, topic: str
) -> None:
    workers = [WorkerProcess(tmp_path, rabbit_url, name=n, topic=topic) for n in ("a", "b")]
    for w in workers:
        w.start()
    try:
        client = rpclib.RPCClient(transport, rpclib.Target(topic=topic), at_least_once=True)
        for n in range(40):
            client.cast({}, "record", n=n)
        wait_until(lambda: sum(len(w.events()) for w in workers) >= 40, WAIT, "40 casts")
    finally:
        for w in workers:
            w.stop()
    seen = sorted(e["n"] for w in workers for e in w.events())
    assert seen == list(range(40))  # each cast handled exactly once
    assert all(w.events() for w in workers)  # and both servers took a share


def test_fanout_reaches_three_server_processes_once_each(
    tmp_path: Path, rabbit_url: str, transport: rpclib.Transport, topic: str
) -> None:
    workers = [WorkerProcess(tmp_path, rabbit_url, name=n, topic=topic) for n in ("a", "b", "c")]
    for w in workers:
        w.start()
    try:
        rpclib.RPCClient(transport, rpclib.Target(topic=topic, fanout=True)).cast({}, "record", n=7)
        wait_until(lambda: all(w.events() for w in workers), WAIT, "all three to get it")
    finally:
        for w in workers:
            w.stop()
    assert [[e["n"] for e in w.events()] for w in workers] == [[7], [7], [7]]


def test_auto_cap_follows_a_rolling_upgrade_across_processes(
    tmp_path: Path, rabbit_url: str, transport: rpclib.Transport, topic: str
) -> None:
    a = WorkerProcess(tmp_path, rabbit_url, name="a", topic=topic, version="1.2").start()
    b = WorkerProcess(tmp_path, rabbit_url, name="b", topic=topic, version="1.2").start()
    client = rpclib.RPCClient(
        transport, rpclib.Target(topic=topic), version_cap="auto", timeout=WAIT
    )
    try:
        assert client.version_cap == "1.2"
        a.stop()
        a = WorkerProcess(tmp_path, rabbit_url, name="a", topic=topic, version="1.3").start()
        wait_until(lambda: client.prepare(server="a").version_cap == "1.3", WAIT, "a at 1.3")
        assert client.version_cap == "1.2"
        b.stop()
        b = WorkerProcess(tmp_path, rabbit_url, name="b", topic=topic, version="1.3").start()
        wait_until(lambda: client.version_cap == "1.3", WAIT, "the cluster at 1.3")
        assert client.prepare(version="1.3").call({}, "version") == "1.3"
    finally:
        a.stop()
        b.stop()


def test_notification_pools_across_processes(
    tmp_path: Path, rabbit_url: str, transport: rpclib.Transport, topic: str
) -> None:
    billing = [
        WorkerProcess(tmp_path, rabbit_url, name=n, topic=topic, role="listener", pool="billing")
        for n in ("bill1", "bill2")
    ]
    audit = WorkerProcess(
        tmp_path, rabbit_url, name="audit", topic=topic, role="listener", pool="audit"
    )
    listeners = [*billing, audit]
    for w in listeners:
        w.start()
    try:
        notifier = rpclib.Notifier(transport, publisher_id="compute.h1", topics=[topic])
        for n in range(20):
            notifier.info({}, "instance.exists", {"n": n})
        assert notifier.flush(WAIT)
        wait_until(
            lambda: sum(len(w.events()) for w in billing) >= 20 and len(audit.events()) >= 20,
            WAIT,
            "both pools to get every notification",
        )
    finally:
        for w in listeners:
            w.stop()
    billed = sorted(e["payload"]["n"] for w in billing for e in w.events())
    assert billed == list(range(20))  # the billing pool got each once, split between two
    assert sorted(e["payload"]["n"] for e in audit.events()) == list(range(20))
