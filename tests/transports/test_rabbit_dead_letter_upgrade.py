"""Upgrading over the unbounded dead-letter queue of older releases: reported, never written."""

from __future__ import annotations

import logging
import queue
import uuid
from collections.abc import Iterator

import amqp
import pytest

from rpclib.transports import load_driver
from rpclib.transports.base import Address, Guarantee, Incoming
from rpclib.transports.rabbit import RabbitDriver, naming
from tests.rpc.helpers import wait_until
from tests.support.rabbit import BROKER, PASSWORD, USER, list_queues


@pytest.fixture
def legacy_queue(rabbit_vhost: str) -> Iterator[None]:
    """The old unbounded ``rpclib.dead-letters`` holding one message, as an older rpclib left it."""
    conn = amqp.Connection(BROKER, userid=USER, password=PASSWORD, virtual_host=rabbit_vhost)
    conn.connect()
    channel = conn.channel()
    channel.queue_declare(naming.LEGACY_DEAD_LETTER_QUEUE, durable=True, auto_delete=False)
    channel.basic_publish(
        amqp.Message(b"old", delivery_mode=2), "", naming.LEGACY_DEAD_LETTER_QUEUE
    )
    yield
    channel.queue_delete(naming.LEGACY_DEAD_LETTER_QUEUE)
    conn.close()


@pytest.fixture
def driver(rabbit_url: str) -> Iterator[RabbitDriver]:
    made = load_driver(rabbit_url)
    assert isinstance(made, RabbitDriver)
    yield made
    made.close()


def test_dead_letters_go_to_the_bounded_queue_and_the_old_one_is_reported(
    legacy_queue: None,
    driver: RabbitDriver,
    rabbit_vhost: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = Address(f"upgrade-{uuid.uuid4().hex[:8]}", "t")
    got: queue.Queue[Incoming] = queue.Queue()
    sub = driver.listen(topic, got.put)
    body = uuid.uuid4().bytes
    with caplog.at_level(logging.WARNING, "rpclib.transports.rabbit"):
        driver.send(topic, body, guarantee=Guarantee.AT_LEAST_ONCE)
        got.get(timeout=15).dead_letter("poison")
        wait_until(  # dead_letter() returns before the broker has confirmed the copy
            lambda: [d.reason for d in driver.dead_letters(10_000) if d.body == body] == ["poison"],
            what="the dead letter in the bounded queue",
        )
    sub.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(naming.LEGACY_DEAD_LETTER_QUEUE in m and "(1 messages)" in m for m in warnings), (
        warnings
    )
    assert list_queues(rabbit_vhost)[naming.LEGACY_DEAD_LETTER_QUEUE] == 1
