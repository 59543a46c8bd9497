"""What the driver leaves on the broker: only the durable queues an address asked for, on
RabbitMQ 3.10's plugin and on RabbitMQ 4 (native AMQP 1.0, deprecated features denied).

RabbitMQ's AMQP 1.0 plugin declares the queues *it* creates (for ``/queue``,
``/exchange`` and ``/topic`` nodes) as neither exclusive nor auto-delete, so a
careless client leaves ``amq.gen-*`` queues behind for good. These tests list
the vhost's queues before and after a workout of every kind of node.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from rpclib.transports import load_driver
from rpclib.transports.amqp1 import Amqp1Driver
from rpclib.transports.amqp1.addressing import DEAD_LETTER_QUEUE
from rpclib.transports.base import Address, Guarantee
from tests.support.amqp1 import GENERATIONS
from tests.support.rabbit import list_queues
from tests.support.rabbit_node import RabbitNode
from tests.transports.driver_contract import AdvertCollector, Collector, InboxCollector

WAIT = 10.0


@dataclass(frozen=True)
class Vhost:
    """A vhost of the test's own on one broker generation, and how to list its queues."""

    url: str
    name: str
    list_queues: Callable[[str], set[str]]

    def queues(self) -> set[str]:
        return self.list_queues(self.name)

    def settled_queues(self, expect: set[str]) -> set[str]:
        """The vhost's queues once they equal ``expect`` (auto-delete happens just after a
        consumer leaves), or as they are after WAIT seconds."""
        deadline = time.monotonic() + WAIT
        while True:
            queues = self.queues()
            if queues == expect or time.monotonic() > deadline:
                return queues
            time.sleep(0.2)


def node_queues(node: RabbitNode) -> Callable[[str], set[str]]:
    def queues(vhost: str) -> set[str]:
        out = node.rabbitmqctl("list_queues", "-p", vhost, "-q", "--no-table-headers", "name")
        return {line.strip() for line in out.splitlines() if line.strip()}

    return queues


@pytest.fixture(params=GENERATIONS)
def vhost(request: pytest.FixtureRequest) -> Vhost:
    """On the shared RabbitMQ 3.10's plugin, then on the RabbitMQ 4 node (listed there with
    ``rabbit4_node.rabbitmqctl("list_queues", ...)``)."""
    if request.param == "rabbitmq3":
        url = str(request.getfixturevalue("fresh_amqp1_url"))
        return Vhost(url, url.rsplit("/", 1)[1], lambda name: set(list_queues(name)))
    url = str(request.getfixturevalue("fresh_amqp1_rabbit4_url"))
    node = request.getfixturevalue("rabbit4_node")
    return Vhost(url, url.rsplit("/", 1)[1], node_queues(node))


def workout(url: str, exchange: str) -> None:
    """Every kind of node: topics (both guarantees), groups, servers, fanout, inboxes, adverts."""
    topic = Address(exchange, "compute")
    server = Address(exchange, "compute", server="host1")
    fan = Address(exchange, "compute", fanout=True)
    drivers = [load_driver(url) for _ in range(2)]
    listener, sender = drivers
    try:
        got = Collector(WAIT)
        for address, group in ((topic, None), (topic, "pool"), (server, None), (fan, None)):
            listener.listen(address, got, group=group)
        for address in (topic, server, fan):
            for guarantee in Guarantee:
                sender.send(address, b"x", guarantee=guarantee)
        got.get_many(8)  # topic: (rpc + pool) x 2 guarantees; server x 2; fanout x 2
        replies = InboxCollector(WAIT)
        inbox = sender.open_inbox(replies)
        listener.send_to_inbox(inbox.address, b"re")
        assert replies.get() == b"re"
        listener.advertise(server, b"v1", ttl=60)
        seen = AdvertCollector(WAIT)
        sender.watch_adverts(exchange, "compute", seen)
        assert seen.next_for("host1") == b"v1"
    finally:
        for driver in drivers:
            driver.close()


def test_closing_drivers_leaves_only_the_durable_queues_of_their_addresses(
    vhost: Vhost,
) -> None:
    before = vhost.queues()
    exchange = f"x{uuid.uuid4().hex[:8]}"
    workout(vhost.url, exchange)
    durable = {f"{exchange}.compute", f"{exchange}.compute#pool", f"{exchange}.compute@host1"}
    expected = before | durable | {DEAD_LETTER_QUEUE}
    assert vhost.settled_queues(expected) == expected


def test_nothing_of_the_plugins_own_making_is_left(vhost: Vhost) -> None:
    exchange = f"x{uuid.uuid4().hex[:8]}"
    workout(vhost.url, exchange)
    durable = {f"{exchange}.compute", f"{exchange}.compute#pool", f"{exchange}.compute@host1"}
    queues = vhost.settled_queues(durable | {DEAD_LETTER_QUEUE})
    assert [q for q in queues if q.startswith("amq.gen-") or q.endswith(".live")] == []


def test_closing_a_driver_deletes_its_inbox_queues(vhost: Vhost) -> None:
    driver = load_driver(vhost.url)
    assert isinstance(driver, Amqp1Driver)
    inbox = driver.open_inbox(lambda body: None)
    assert inbox.address in vhost.queues()
    driver.close()
    assert inbox.address not in vhost.queues()
