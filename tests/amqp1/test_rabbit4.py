"""RabbitMQ 4's native AMQP 1.0 with every deprecated feature denied (RabbitMQ 4.3's defaults).

The default ``addressing=auto`` picks the strategy from the broker's ``open``
frame; refusals (a declaration, an attach, the 3.x strategy on 4.x) reach
the caller as TransportError quoting the broker, and leave the connection
serving; a send never blocks past its deadline, even with the broker gone (on
both generations: that holds for every amqp1:// peer).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterator

import pytest

from rpclib.exceptions import SendTimedOut, TransportError
from rpclib.transports import load_driver
from rpclib.transports.amqp1 import Amqp1Driver
from rpclib.transports.amqp1.addressing import DEAD_LETTER_QUEUE, Route
from rpclib.transports.amqp1.options import parse_options
from rpclib.transports.amqp1.rabbit4 import RabbitMQ4Addressing
from rpclib.transports.base import Address, Guarantee
from rpclib.transports.url import parse_url
from tests.support.amqp1 import GENERATIONS, CutProxy, new_node_vhost
from tests.support.rabbit import BROKER
from tests.support.rabbit_node import RabbitNode
from tests.transports.driver_contract import Collector, InboxCollector

WAIT = 10.0


def amqp1(url: str) -> Amqp1Driver:
    driver = load_driver(url)
    assert isinstance(driver, Amqp1Driver)
    return driver


def test_auto_picks_v2_addressing_on_rabbitmq_4(amqp1_rabbit4_url: str) -> None:
    driver = amqp1(amqp1_rabbit4_url)
    try:
        assert driver.addressing.name == "rabbitmq4"
    finally:
        driver.close()


def test_auto_keeps_the_plugin_strategy_on_rabbitmq_3(amqp1_url: str) -> None:
    driver = amqp1(amqp1_url)
    try:
        assert driver.addressing.name == "rabbitmq"
    finally:
        driver.close()


def test_v1_addressing_on_rabbitmq_4_fails_with_the_brokers_reason_and_the_fix(
    amqp1_rabbit4_url: str,
) -> None:
    driver = amqp1(amqp1_rabbit4_url + "?addressing=rabbitmq")
    try:
        with pytest.raises(TransportError) as refused:
            driver.listen(Address("v1", "compute"), lambda message: message.ack())
        assert "transient_nonexcl_queues" in str(refused.value)
        assert "addressing=rabbitmq4" in str(refused.value)
    finally:
        driver.close()


@pytest.fixture
def limited_user(rabbit4_node: RabbitNode) -> Iterator[tuple[RabbitNode, str, str]]:
    """A vhost and a user of the test's own (permissions set by the test): (node, vhost, user)."""
    vhost = new_node_vhost(rabbit4_node)
    user = f"u{uuid.uuid4().hex[:8]}"
    rabbit4_node.rabbitmqctl("add_user", user, "pw")
    yield rabbit4_node, vhost, user
    rabbit4_node.rabbitmqctl("delete_user", user)
    rabbit4_node.rabbitmqctl("delete_vhost", vhost)


def user_url(node: RabbitNode, vhost: str, user: str) -> str:
    return f"amqp1://{user}:pw@127.0.0.1:{node.port}/{vhost}"


def test_a_refused_declaration_fails_listen_with_the_brokers_reason(
    limited_user: tuple[RabbitNode, str, str],
) -> None:
    node, vhost, user = limited_user
    node.rabbitmqctl("set_permissions", "-p", vhost, user, "^$", ".*", ".*")  # configure nothing
    driver = amqp1(user_url(node, vhost, user))
    try:
        with pytest.raises(TransportError) as refused:
            driver.listen(Address("ro", "compute"), lambda message: message.ack())
        assert "configure access" in str(refused.value)  # the broker's words
        assert "permissions" in str(refused.value)  # what to change
    finally:
        driver.close()


def test_a_refused_attach_fails_listen_with_the_reason_and_the_connection_keeps_serving(
    limited_user: tuple[RabbitNode, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    node, vhost, user = limited_user
    # may declare and bind everything, but not read the at-most-once (.live) queues
    node.rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", r"^(?!.*\.live$).*")
    driver = amqp1(user_url(node, vhost, user))
    try:
        with (
            caplog.at_level(logging.WARNING, "rpclib.transports.amqp1"),
            pytest.raises(TransportError) as refused,
        ):
            driver.listen(Address("ro", "compute"), lambda message: message.ack())
        assert "compute.live" in str(refused.value)
        assert "access" in str(refused.value)
        assert not [
            r for r in caplog.records if "connection" in r.getMessage() and "lost" in r.getMessage()
        ]
        replies = InboxCollector(WAIT)
        inbox = driver.open_inbox(replies)
        driver.send_to_inbox(inbox.address, b"still serving")
        assert replies.get() == b"still serving"
    finally:
        driver.close()


@pytest.fixture(params=GENERATIONS)
def cut_driver(request: pytest.FixtureRequest) -> Iterator[tuple[Amqp1Driver, Address]]:
    """A driver that sent once to a declared address, then lost its broker for good."""
    if request.param == "rabbitmq4":
        proxy, vhost = CutProxy(request.getfixturevalue("rabbit4_node").port), ""
    else:
        host, port = BROKER.rsplit(":", 1)
        proxy, vhost = CutProxy(int(port), host), request.getfixturevalue("amqp1_vhost")
    driver = amqp1(f"amqp1://guest:guest@127.0.0.1:{proxy.port}/{vhost}?send_timeout=60")
    address = Address("deadline", "compute")
    driver.declare(address)
    driver.send(address, b"reachable", guarantee=Guarantee.AT_LEAST_ONCE)
    proxy.cut()
    yield driver, address
    driver.close()


def test_an_at_least_once_send_fails_at_its_deadline_while_the_broker_is_unreachable(
    cut_driver: tuple[Amqp1Driver, Address],
) -> None:
    driver, address = cut_driver
    expires_at = time.time() + 1.0
    with pytest.raises(SendTimedOut) as late:
        driver.send(address, b"x", guarantee=Guarantee.AT_LEAST_ONCE, expires_at=expires_at)
    assert time.time() < expires_at + 30  # bounded by the deadline, not by send_timeout=60
    assert "deadline" in str(late.value)


def test_an_at_most_once_send_never_blocks_past_its_deadline_while_the_broker_is_unreachable(
    cut_driver: tuple[Amqp1Driver, Address],
) -> None:
    driver, address = cut_driver
    for _ in range(3):  # whether or not the driver has noticed the loss yet
        expires_at = time.time() + 1.0
        with contextlib.suppress(TransportError):
            driver.send(address, b"x", guarantee=Guarantee.AT_MOST_ONCE, expires_at=expires_at)
        assert time.time() < expires_at + 30


def test_queue_type_quorum_makes_the_at_least_once_targets_quorum_queues(
    fresh_amqp1_rabbit4_url: str, rabbit4_node: RabbitNode
) -> None:
    driver = amqp1(fresh_amqp1_rabbit4_url + "?queue_type=quorum")
    vhost = fresh_amqp1_rabbit4_url.rsplit("/", 1)[1]
    try:
        address = Address("q", "compute")
        got = Collector(WAIT)
        driver.listen(address, got)
        driver.send(address, b"stored", guarantee=Guarantee.AT_LEAST_ONCE)
        assert got.get().body == b"stored"
        out = rabbit4_node.rabbitmqctl(
            "list_queues", "-p", vhost, "-q", "--no-table-headers", "name", "type"
        )
        types = dict(line.split() for line in out.splitlines() if line.strip())
        assert types["q.compute"] == types[DEAD_LETTER_QUEUE] == "quorum"
        assert types["q.compute.live"] == "classic"  # at-most-once: auto-delete, never quorum
    finally:
        driver.close()


def test_a_private_node_of_this_release_is_reached_through_the_private_exchange() -> None:
    strategy = RabbitMQ4Addressing(parse_options(parse_url("amqp1://u:p@h/")), None)  # type: ignore[arg-type]
    route = strategy.private_route("u:rpclib.reply.+h.1.2")
    assert route == Route("", to="/exchanges/rpclib%3Aprivate/u%3Arpclib.reply.%2Bh.1.2")


def test_an_older_clients_private_node_is_reached_by_its_queue_name() -> None:
    """Rolling upgrades: its inbox is bound to nothing (docs/transports/amqp1.md)."""
    strategy = RabbitMQ4Addressing(parse_options(parse_url("amqp1://u:p@h/")), None)  # type: ignore[arg-type]
    assert strategy.private_route("u:rpclib.reply.h.1.2") == Route(
        "", to="/queues/u%3Arpclib.reply.h.1.2"
    )
