"""What the driver leaves on the broker: only the durable queues an address asked for.

RabbitMQ's AMQP 1.0 plugin declares the queues *it* creates (for ``/queue``,
``/exchange`` and ``/topic`` nodes) as neither exclusive nor auto-delete, so a
careless client leaves ``amq.gen-*`` queues behind for good. These tests list
the vhost's queues before and after a workout of every kind of node.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from rpclib.transports import load_driver
from rpclib.transports.amqp1 import Amqp1Driver
from rpclib.transports.base import Address, Guarantee
from tests.support.rabbit import list_queues
from tests.transports.driver_contract import AdvertCollector, Collector, InboxCollector

WAIT = 10.0


def settled_queues(vhost: str, expect: set[str]) -> set[str]:
    """The vhost's queues once they equal ``expect`` (auto-delete happens just after a
    consumer leaves), or as they are after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        queues = set(list_queues(vhost))
        if queues == expect or time.monotonic() > deadline:
            return queues
        time.sleep(0.1)


@pytest.fixture
def vhost_url(fresh_amqp1_url: str) -> Iterator[tuple[str, str]]:
    yield fresh_amqp1_url, fresh_amqp1_url.rsplit("/", 1)[1]


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
    vhost_url: tuple[str, str],
) -> None:
    url, vhost = vhost_url
    before = set(list_queues(vhost))
    exchange = f"x{uuid.uuid4().hex[:8]}"
    workout(url, exchange)
    durable = {f"{exchange}.compute", f"{exchange}.compute#pool", f"{exchange}.compute@host1"}
    expected = before | durable | {"rpclib.dead-letters"}
    assert settled_queues(vhost, expected) == expected


def test_nothing_of_the_plugins_own_making_is_left(vhost_url: tuple[str, str]) -> None:
    url, vhost = vhost_url
    exchange = f"x{uuid.uuid4().hex[:8]}"
    workout(url, exchange)
    durable = {f"{exchange}.compute", f"{exchange}.compute#pool", f"{exchange}.compute@host1"}
    queues = settled_queues(vhost, durable | {"rpclib.dead-letters"})
    assert [q for q in queues if q.startswith("amq.gen-") or q.endswith(".live")] == []


def test_closing_a_driver_deletes_its_inbox_queues(vhost_url: tuple[str, str]) -> None:
    url, vhost = vhost_url
    driver = load_driver(url)
    assert isinstance(driver, Amqp1Driver)
    inbox = driver.open_inbox(lambda body: None)
    assert inbox.address in list_queues(vhost)
    driver.close()
    assert inbox.address not in list_queues(vhost)
