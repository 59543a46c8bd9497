"""The key scheme: what lives in etcd while rpclib runs, and that nothing piles up."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import rpclib
from rpclib.listener import NotificationListener
from rpclib.notifier import Notifier
from rpclib.transports.base import Address, Guarantee, Incoming
from tests.support.etcd import EtcdServer

WAIT = 20.0


class Service:
    """An RPC endpoint and a notification endpoint, counting what it handled."""

    def __init__(self) -> None:
        self.handled = 0
        self._lock = threading.Lock()

    def _count(self) -> None:
        with self._lock:
            self.handled += 1

    def echo(self, ctx: dict[str, Any], value: Any) -> Any:
        return value

    def note(self, ctx: dict[str, Any], n: int) -> None:
        self._count()


class NoteTaker(Service):
    """The notification side (an endpoint must not mix RPC methods and priorities)."""

    def info(
        self, ctx: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any
    ) -> None:
        self._count()


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def run_workload(server_side: rpclib.Transport, client_side: rpclib.Transport) -> None:
    """Calls, casts of both guarantees, fanout, adverts, notifications to a pool of two."""
    services = [Service(), Service()]
    notes = [NoteTaker(), NoteTaker()]
    servers = [
        rpclib.RPCServer(server_side, rpclib.Target(topic="work", server=f"s{i}"), [svc])
        for i, svc in enumerate(services)
    ]
    pool = [
        NotificationListener(server_side, [rpclib.Target(topic="notes")], [svc], pool="billing")
        for svc in notes
    ]
    for runner in (*servers, *pool):
        runner.start()
    client = rpclib.RPCClient(client_side, rpclib.Target(topic="work"), timeout=WAIT)
    assert [client.call({}, "echo", value=i) for i in range(20)] == list(range(20))
    for n in range(20):
        client.cast({}, "note", n=n)
        client.prepare(at_least_once=True).cast({}, "note", n=n)
    client.prepare(fanout=True).cast({}, "note", n=-1)
    with Notifier(client_side, "test.host", topics="notes") as notifier:
        for n in range(10):
            notifier.info({}, "thing.happened", {"n": n})
    wait_until(lambda: sum(s.handled for s in services) == 42, "every cast")
    wait_until(lambda: sum(s.handled for s in notes) == 10, "every notification")
    for runner in (*servers, *pool):
        runner.stop()
        runner.wait()


def test_running_keys_have_leases_except_declarations_and_stored_messages(
    etcd_server: EtcdServer,
) -> None:
    prefix = f"keys{uuid.uuid4().hex[:8]}"
    consumer, sender = (rpclib.get_transport(etcd_server.url(prefix)) for _ in range(2))
    try:
        topic = Address("ex", "queue")
        held: list[Incoming] = []
        consumer.driver.listen(topic, held.append)
        consumer.driver.listen(Address("ex", "queue", fanout=True), held.append)
        consumer.driver.open_inbox(lambda body: None)
        consumer.driver.advertise(Address("ex", "queue", server="s1"), b"v1", ttl=30)
        sender.driver.send(topic, b"held", guarantee=Guarantee.AT_LEAST_ONCE)
        wait_until(lambda: len(held) == 1, "the message")
        keys = etcd_server.keys(prefix)
        message_id = next(k for k in keys if "/q/" in k).rpartition("/")[2]
        assert sorted(key for key, lease in keys.items() if not lease) == [
            f"/{prefix}/decl/ex/queue/g/@",  # the durable queue
            f"/{prefix}/n/ex/queue/g/@/{message_id}",  # its delivery counter
            f"/{prefix}/q/ex/queue/g/@/m/{message_id}",  # the message, until acked
        ]
        assert f"/{prefix}/q/ex/queue/g/@/c/{message_id}" in keys  # claimed, with a lease
        assert {key.split("/")[2] for key in keys} == {"decl", "live", "q", "n", "inbox", "adv"}
    finally:
        consumer.close()
        sender.close()


def test_nothing_is_left_after_a_workload_but_the_queue_declarations(
    etcd_server: EtcdServer,
) -> None:
    prefix = f"keys{uuid.uuid4().hex[:8]}"
    server_side, client_side = (rpclib.get_transport(etcd_server.url(prefix)) for _ in range(2))
    try:
        run_workload(server_side, client_side)
    finally:
        server_side.close()
        client_side.close()
    assert sorted(etcd_server.keys(prefix)) == [
        f"/{prefix}/decl/rpclib/notes.info/g/billing",
        f"/{prefix}/decl/rpclib/work/g/@",
        f"/{prefix}/decl/rpclib/work/s/s0",
        f"/{prefix}/decl/rpclib/work/s/s1",
    ]
