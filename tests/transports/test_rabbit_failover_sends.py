"""What a RabbitMQ send does while the broker fails over: refusals retried, deadlines kept.

A quorum queue nacks publishes while it elects a new leader, so an
at-least-once send (and a pipelined one) retries a broker's ``basic.nack``
within its deadline (a full ``x-overflow=reject-publish`` queue refuses the
same way, on demand). A
send given ``expires_at`` (a call's deadline) never blocks past it, even
while the driver reconnects. The cluster itself is exercised in
``tests/rabbit/test_cluster_failover.py``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import amqp
import pytest

from rpclib.exceptions import SendTimedOut, TransportError, Undeliverable
from rpclib.transports import load_driver
from rpclib.transports.base import Address, Guarantee
from rpclib.transports.rabbit import RabbitDriver, naming
from tests.rpc.helpers import wait_until
from tests.support.rabbit import BROKER, PASSWORD, USER
from tests.support.rabbit_node import RabbitNode

WAIT = 15.0
SLACK = 3.0
"""Allowed beyond a deadline (a loaded machine), far below the send_timeout set here."""


@pytest.fixture
def make_driver() -> Iterator[Callable[[str], RabbitDriver]]:
    opened: list[RabbitDriver] = []

    def make(url: str) -> RabbitDriver:
        driver = load_driver(url)
        assert isinstance(driver, RabbitDriver)
        opened.append(driver)
        return driver

    yield make
    for driver in opened:
        driver.close()


def full_queue(vhost: str, address: Address) -> amqp.Connection:
    """Declare ``address``'s durable queue holding at most one message, refusing more."""
    conn = amqp.Connection(BROKER, userid=USER, password=PASSWORD, virtual_host=vhost)
    conn.connect()
    channel = conn.channel()
    channel.exchange_declare(address.exchange, "topic", durable=True, auto_delete=False)
    queue = naming.queue_name(address, None)
    channel.queue_declare(
        queue,
        durable=True,
        auto_delete=False,
        arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
    )
    channel.queue_bind(queue, address.exchange, naming.routing_key(address))
    return conn


def test_at_least_once_send_retries_a_broker_refusal_until_it_is_taken(
    rabbit_url: str,
    rabbit_vhost: str,
    make_driver: Callable[[str], RabbitDriver],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rpclib.transports.rabbit")
    address = Address(f"refusals-{uuid.uuid4().hex[:8]}", "t")
    admin = full_queue(rabbit_vhost, address)
    try:
        driver = make_driver(rabbit_url)
        driver.send(address, b"first", guarantee=Guarantee.AT_LEAST_ONCE)
        outcome: dict[str, Any] = {}

        def send_second() -> None:
            try:
                driver.send(address, b"second", guarantee=Guarantee.AT_LEAST_ONCE)
                outcome["sent"] = True
            except Exception as exc:
                outcome["error"] = exc

        sender = threading.Thread(target=send_second)
        sender.start()
        wait_until(
            lambda: "basic.nack" in caplog.text or bool(outcome), WAIT, "the broker's refusal"
        )
        assert not outcome, f"the refused send ended instead of retrying: {outcome}"
        queue = naming.queue_name(address, None)
        channel = admin.channel()
        first = channel.basic_get(queue, no_ack=True)  # room for one again
        assert first is not None and bytes(first.body) == b"first"
        sender.join(WAIT)
        assert outcome == {"sent": True}
        second = channel.basic_get(queue, no_ack=True)
        assert second is not None and bytes(second.body) == b"second"
    finally:
        admin.collect()


def test_a_refused_pipelined_send_is_sent_again_until_it_is_taken(
    rabbit_url: str,
    rabbit_vhost: str,
    make_driver: Callable[[str], RabbitDriver],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rpclib.transports.rabbit")
    address = Address(f"refusals-{uuid.uuid4().hex[:8]}", "t")
    admin = full_queue(rabbit_vhost, address)
    try:
        driver = make_driver(rabbit_url)
        driver.send(address, b"first", guarantee=Guarantee.AT_LEAST_ONCE)
        outcomes: queue.Queue[BaseException | None] = queue.Queue()
        driver.send_pipelined(address, b"second", on_outcome=outcomes.put)
        wait_until(
            lambda: "basic.nack" in caplog.text or not outcomes.empty(),
            WAIT,
            "the broker's refusal",
        )
        assert outcomes.empty(), f"the refused send ended instead of retrying: {outcomes.get()}"
        name = naming.queue_name(address, None)
        channel = admin.channel()
        first = channel.basic_get(name, no_ack=True)  # room for one again
        assert first is not None and bytes(first.body) == b"first"
        assert outcomes.get(timeout=WAIT) is None
        second = channel.basic_get(name, no_ack=True)
        assert second is not None and bytes(second.body) == b"second"
    finally:
        admin.collect()


def test_a_refusal_that_outlasts_the_deadline_raises_naming_it(
    rabbit_url: str, rabbit_vhost: str, make_driver: Callable[[str], RabbitDriver]
) -> None:
    address = Address(f"refusals-{uuid.uuid4().hex[:8]}", "t")
    admin = full_queue(rabbit_vhost, address)
    try:
        driver = make_driver(rabbit_url + "?send_timeout=1")
        driver.send(address, b"fills it", guarantee=Guarantee.AT_LEAST_ONCE)
        with pytest.raises(TransportError, match=r"basic\.nack"):
            driver.send(address, b"refused", guarantee=Guarantee.AT_LEAST_ONCE)
        # At most once: refused at once, not retried (it would risk nothing, but
        # nobody asked for the message to be kept).
        with pytest.raises((TransportError, Undeliverable)):
            driver.send(
                address, b"refused", guarantee=Guarantee.AT_MOST_ONCE, expires_at=time.time() + 60
            )
    finally:
        admin.collect()


@pytest.fixture
def broker_down(rabbit_node: RabbitNode) -> Iterator[Callable[[], None]]:
    """``stop()`` stops the private node's RabbitMQ application (refusing connections);
    it is started again after the test."""
    stopped: list[bool] = []

    def stop() -> None:
        rabbit_node.rabbitmqctl("stop_app")
        stopped.append(True)

    yield stop
    if stopped:
        rabbit_node.rabbitmqctl("start_app")


@pytest.mark.parametrize(
    ("guarantee", "with_callback"),
    [(Guarantee.AT_MOST_ONCE, True), (Guarantee.AT_LEAST_ONCE, False)],
    ids=["call", "at-least-once"],
)
def test_a_send_never_blocks_past_its_expiry_while_reconnecting(
    rabbit_node: RabbitNode,
    broker_down: Callable[[], None],
    make_driver: Callable[[str], RabbitDriver],
    guarantee: Guarantee,
    with_callback: bool,
) -> None:
    driver = make_driver(rabbit_node.url + "?send_timeout=60")
    address = Address(f"deadline-{uuid.uuid4().hex[:8]}", "t")
    events: list[str] = []
    driver.open_inbox(lambda body: None, events.append)
    broker_down()
    wait_until(lambda: "disconnected" in events, WAIT, "the driver to see the broker gone")
    expiry = 1.5
    started = time.monotonic()
    # A call waits out its deadline (SendTimedOut); an at-least-once send may give up
    # sooner, when the next reconnect attempt would fall after it.
    expected = SendTimedOut if with_callback else TransportError
    with pytest.raises(expected):
        driver.send(
            address,
            b"m",
            guarantee=guarantee,
            expires_at=time.time() + expiry,
            on_undeliverable=(lambda exc: None) if with_callback else None,
        )
    elapsed = time.monotonic() - started
    assert elapsed < expiry + SLACK, f"the send blocked {elapsed:.1f}s past a {expiry}s expiry"
