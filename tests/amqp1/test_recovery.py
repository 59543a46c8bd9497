"""The AMQP 1.0 driver across a broker that drops its connections or restarts.

Runs on private nodes, never on the shared broker: RabbitMQ 3.10 with the AMQP
1.0 plugin (``amqp1_node``) and RabbitMQ 4 with every deprecated feature denied
(``rabbit4_node``). Drivers reconnect with backoff, re-declare and
re-attach their nodes and carry on; inboxes report what happened to replies.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

import rpclib
from rpclib.exceptions import ConnectionLost, TransportError, Undeliverable
from rpclib.transports import load_driver
from rpclib.transports.base import Address, Driver, Guarantee
from tests.support.amqp1 import GENERATIONS, node_url
from tests.support.rabbit_node import RabbitNode
from tests.transports.driver_contract import Collector, EventCollector, InboxCollector

WAIT = 30.0


@pytest.fixture(params=GENERATIONS)
def node(request: pytest.FixtureRequest) -> RabbitNode:
    """The private node of each broker generation in turn, running."""
    name = "amqp1_node" if request.param == "rabbitmq3" else "rabbit4_node"
    node: RabbitNode = request.getfixturevalue(name)
    return node


@pytest.fixture
def make_driver(node: RabbitNode) -> Iterator[Callable[[], Driver]]:
    drivers: list[Driver] = []

    def make() -> Driver:
        drivers.append(driver := load_driver(node_url(node, "retry_backoff_max=0.5")))
        return driver

    yield make
    for driver in drivers:
        driver.close()


def generation4(node: RabbitNode) -> bool:
    """Whether ``node`` is the RabbitMQ 4 node (it runs from the trixie root)."""
    return node.chroot is not None


def eventually(action: Callable[[], None], what: str) -> None:
    """Retry ``action`` until it stops raising (the driver is reconnecting meanwhile)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            action()
            return
        except (TransportError, Undeliverable, AssertionError):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {WAIT}s") from None
            time.sleep(0.2)


def topic() -> Address:
    return Address(f"x{uuid.uuid4().hex[:8]}", "work")


def test_subscription_gets_messages_again_after_connections_are_closed(
    node: RabbitNode, make_driver: Callable[[], Driver]
) -> None:
    address = topic()
    got = Collector(WAIT)
    make_driver().listen(address, got)
    sender = make_driver()
    sender.send(address, b"before", guarantee=Guarantee.AT_MOST_ONCE)
    assert got.get().body == b"before"
    node.close_all_connections()

    def after() -> None:
        sender.send(address, b"after", guarantee=Guarantee.AT_MOST_ONCE)
        assert Collector.get(got).body == b"after"

    got.wait = 2.0
    eventually(after, "a message after the connections were closed")


def test_inbox_reports_disconnected_then_reconnected_when_its_queue_survived(
    node: RabbitNode, make_driver: Callable[[], Driver]
) -> None:
    events: EventCollector[str] = EventCollector(WAIT)
    replies = InboxCollector(WAIT)
    owner = make_driver()
    inbox = owner.open_inbox(replies, events.put)
    node.close_all_connections()
    assert events.get() == "disconnected"
    assert events.get() == "reconnected"
    sender = make_driver()
    sender.send_to_inbox(inbox.address, b"still here")
    assert replies.get() == b"still here"


def test_broker_restart_reports_lost_inbox_and_keeps_durable_messages(
    node: RabbitNode, make_driver: Callable[[], Driver]
) -> None:
    address = topic()
    owner = make_driver()
    events: EventCollector[str] = EventCollector(WAIT)
    owner.open_inbox(lambda body: None, events.put)
    sender = make_driver()
    sender.declare(address, "billing")
    sender.send(address, b"kept", guarantee=Guarantee.AT_LEAST_ONCE)
    node.restart()
    assert events.get() == "disconnected"
    # RabbitMQ 3.x: the reply queue is transient, replies may have been lost. RabbitMQ 4: the
    # reply queue is durable and a graceful restart keeps its (non-persistent) replies.
    assert events.get() == ("reconnected" if generation4(node) else "lost")
    got = Collector(WAIT)
    eventually(lambda: owner.listen(address, got, group="billing") and None, "listen again")
    incoming = got.get()
    assert (incoming.body, incoming.attempts) == (b"kept", 1)


class Slow:
    """An endpoint whose method waits until the test releases it."""

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()

    def wait_here(self, ctx: dict[str, object]) -> str:
        self.started.set()
        self.release.wait(WAIT)
        return "done"


def call_in_flight(url: str, disrupt: Callable[[Slow], None]) -> BaseException | str:
    """Call a Slow server, ``disrupt`` while the call runs; what it returned or raised."""
    endpoint = Slow()
    with rpclib.get_transport(url) as server_t, rpclib.get_transport(url) as client_t:
        name = f"slow{uuid.uuid4().hex[:6]}"
        server = rpclib.RPCServer(server_t, rpclib.Target(topic=name, server="s1"), [endpoint])
        server.start()
        try:
            client = rpclib.RPCClient(client_t, rpclib.Target(topic=name), timeout=WAIT)
            outcome: list[BaseException | str] = []

            def call() -> None:
                try:
                    outcome.append(client.call({}, "wait_here"))
                except BaseException as exc:
                    outcome.append(exc)

            caller = threading.Thread(target=call)
            caller.start()
            assert endpoint.started.wait(WAIT)
            disrupt(endpoint)
            caller.join(WAIT + 5)
            assert not caller.is_alive()
            return outcome[0]
        finally:
            endpoint.release.set()
            server.stop()
            server.wait()


def test_call_in_flight_across_a_broker_restart_fails_fast_or_completes(
    node: RabbitNode,
) -> None:
    def restart(endpoint: Slow) -> None:
        node.restart()
        if generation4(node):
            endpoint.release.set()  # the reply has somewhere to go: send it now

    outcome = call_in_flight(node_url(node, "retry_backoff_max=0.5"), restart)
    if generation4(node):
        assert outcome == "done"  # the durable reply queue and its replies survived
    else:
        assert isinstance(outcome, ConnectionLost)  # not ReplyTimeout: the reply queue is gone


def test_inbox_reports_lost_when_the_broker_kept_its_queue_but_dropped_its_messages(
    rabbit4_node: RabbitNode,
) -> None:
    """RabbitMQ 4: a crash can drop non-persistent replies from the durable reply queue;
    the inbox's marker queue loses its message the same way (simulated by a purge)."""
    owner = load_driver(node_url(rabbit4_node, "retry_backoff_max=0.5"))
    try:
        events: EventCollector[str] = EventCollector(WAIT)
        inbox = owner.open_inbox(lambda body: None, events.put)
        rabbit4_node.rabbitmqctl("purge_queue", f"{inbox.address}.mark")
        rabbit4_node.close_all_connections()
        assert events.get() == "disconnected"
        assert events.get() == "lost"
    finally:
        owner.close()


def test_call_in_flight_completes_when_connections_drop_and_come_back(
    node: RabbitNode,
) -> None:
    def drop_then_finish(endpoint: Slow) -> None:
        node.close_all_connections()
        deadline = time.monotonic() + WAIT
        # both drivers back: the two connections the broker lists (3.10 lists the 0-9-1
        # topology connections only, 4.x the AMQP 1.0 ones; it was `< 4`, always 30 s)
        while node.connection_count() < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        endpoint.release.set()

    outcome = call_in_flight(node_url(node, "retry_backoff_max=0.5"), drop_then_finish)
    assert outcome == "done"  # the reply queue survived: the reply still arrives


def test_at_least_once_sends_lose_nothing_while_connections_drop(
    node: RabbitNode, make_driver: Callable[[], Driver]
) -> None:
    address = topic()
    got = Collector(WAIT)
    make_driver().listen(address, got, prefetch=16)
    sender = make_driver()
    bodies = {b"%d" % i for i in range(400)}
    errors: list[BaseException] = []

    def produce() -> None:
        for body in sorted(bodies):
            try:
                sender.send(address, body, guarantee=Guarantee.AT_LEAST_ONCE)
            except BaseException as exc:
                errors.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    seen = {got.get().body for _ in range(50)}
    node.close_all_connections()  # mid-stream: sends retry, unacked ones come back
    while not bodies <= seen:
        seen.add(got.get().body)  # duplicates are allowed, losses are not
    producer.join(WAIT)
    assert errors == []
