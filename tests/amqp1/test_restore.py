"""A subscription the broker refuses to restore after a reconnect is retried until it may.

RabbitMQ 4 (every deprecated feature denied) on the session's private node:
the broker closes the connections, and while the driver reconnects something
makes its restore fail (the subscriber may no longer read its queue, so the
re-attach is refused by ending the session; or its durable queue was
re-created with another type, so the re-declaration is refused). The
subscription is reported "not restored", retried with backoff, and receives
again, once, as soon as the obstacle is gone ("restored").
"""

from __future__ import annotations

import queue
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from rpclib.transports import load_driver
from rpclib.transports.amqp1 import Amqp1Driver
from rpclib.transports.base import Address, ConnectionEvent, Guarantee
from tests.support.amqp1 import new_node_vhost
from tests.support.rabbit_node import RabbitNode
from tests.transports.driver_contract import Collector

WAIT = 30.0


class Events:
    """A driver's ConnectionEvents; waits for one of a kind."""

    def __init__(self, driver: Amqp1Driver) -> None:
        self.events: queue.Queue[ConnectionEvent] = queue.Queue()
        driver.add_event_listener(self.events.put)

    def wait_for(self, kind: str) -> ConnectionEvent:
        while True:
            try:
                event = self.events.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"no {kind!r} event within {WAIT}s") from None
            if event.kind == kind:
                return event


@pytest.fixture
def account(rabbit4_node: RabbitNode) -> Iterator[tuple[str, str]]:
    """A vhost and a user of the test's own, with every permission on it: (vhost, user)."""
    vhost = new_node_vhost(rabbit4_node)
    user = f"u{uuid.uuid4().hex[:8]}"
    rabbit4_node.rabbitmqctl("add_user", user, "pw")
    rabbit4_node.rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    yield vhost, user
    rabbit4_node.rabbitmqctl("delete_user", user)
    rabbit4_node.rabbitmqctl("delete_vhost", vhost)


def consumers(node: RabbitNode, vhost: str, name: str) -> int:
    out = node.rabbitmqctl(
        "list_queues", "-p", vhost, "-q", "--no-table-headers", "name", "consumers"
    )
    counts = dict(line.split() for line in out.splitlines() if line.strip())
    return int(counts.get(name, -1))


def test_a_refused_reattach_is_retried_until_the_subscriber_may_read_again(
    rabbit4_node: RabbitNode, account: tuple[str, str]
) -> None:
    vhost, user = account
    base = f"127.0.0.1:{rabbit4_node.port}/{vhost}"
    listener = load_driver(f"amqp1://{user}:pw@{base}?retry_backoff_max=0.5")
    sender = load_driver(f"amqp1://guest:guest@{base}")
    assert isinstance(listener, Amqp1Driver)
    try:
        events = Events(listener)
        address = Address(f"x{uuid.uuid4().hex[:8]}", "work")
        got = Collector(WAIT)
        listener.listen(address, got)
        # may still declare and bind everything, but no longer read the topic's queues
        rabbit4_node.rabbitmqctl(
            "set_permissions", "-p", vhost, user, ".*", ".*", r"^(?!.*\.work).*"
        )
        rabbit4_node.close_all_connections()
        refused = events.wait_for("not restored")
        assert "work" in refused.what and "access" in refused.detail
        sender.send(address, b"kept meanwhile", guarantee=Guarantee.AT_LEAST_ONCE)
        rabbit4_node.rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        events.wait_for("restored")
        assert got.get().body == b"kept meanwhile"
        assert consumers(rabbit4_node, vhost, f"{address.exchange}.work") == 1  # attached once
    finally:
        listener.close()
        sender.close()


def retype(channel_of: Any, name: str) -> None:
    """Delete queue ``name`` and declare it again as a quorum queue (its listener, which
    reconnects at once, may declare it first: then again)."""
    for _ in range(5):
        channel = channel_of()
        channel.queue_delete(name)
        try:
            channel.queue_declare(
                name, durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"}
            )
            return
        except Exception as exc:  # PRECONDITION_FAILED: the listener was quicker
            last = exc
    raise AssertionError(f"could not re-create {name} as a quorum queue: {last}")


def test_a_refused_redeclaration_is_retried_until_the_queue_may_be_declared_again(
    rabbit4_node: RabbitNode, fresh_amqp1_rabbit4_url: str
) -> None:
    vhost = fresh_amqp1_rabbit4_url.rsplit("/", 1)[1]
    listener = load_driver(f"{fresh_amqp1_rabbit4_url}?retry_backoff_max=0.5&queue_type=classic")
    assert isinstance(listener, Amqp1Driver)
    import amqp  # the RabbitMQ extra: imported here, so collection never needs it

    admin = amqp.Connection(f"127.0.0.1:{rabbit4_node.port}", virtual_host=vhost)
    admin.connect()
    try:
        events = Events(listener)
        address = Address(f"x{uuid.uuid4().hex[:8]}", "work")
        durable = f"{address.exchange}.work"
        got = Collector(WAIT)
        listener.listen(address, got)
        retype(admin.channel, durable)  # the listener's link goes: it reconnects
        refused = events.wait_for("not restored")
        assert durable in refused.detail and "409" in refused.detail
        channel = admin.channel()
        channel.queue_delete(durable)
        events.wait_for("restored")
        channel.basic_publish(amqp.Message(b"after"), routing_key=durable)
        assert got.get().body == b"after"
    finally:
        listener.close()
        admin.collect()
