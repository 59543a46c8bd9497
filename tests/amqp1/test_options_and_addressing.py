"""URL options and addressing strategies of amqp1:// (pure logic: nothing connects)."""

from __future__ import annotations

import pytest

from rpclib.exceptions import InvalidTransportURL, TransportError
from rpclib.transports.amqp1.addressing import (
    ArtemisAddressing,
    RabbitMQAddressing,
    Route,
    check_address,
    pick_strategy,
    queue_name,
)
from rpclib.transports.amqp1.options import parse_options
from rpclib.transports.base import Address
from rpclib.transports.url import parse_url


def options(url: str):  # type: ignore[no-untyped-def]
    return parse_options(parse_url(url))


def test_defaults_are_the_local_broker_as_guest_on_vhost_slash() -> None:
    opts = options("amqp1://")
    host = opts.hosts[0]
    assert (host.address, host.user, host.password) == ("localhost:5672", "guest", "guest")
    assert (opts.virtual_host, opts.addressing, opts.queue_type) == ("/", "auto", "classic")


@pytest.mark.parametrize(
    ("url", "queue_type"),
    [
        ("amqp1://h1/v", "classic"),
        ("amqp1://h1,h2,h3/v", "quorum"),
        ("amqp1://h1,h2/v?queue_type=classic", "classic"),
        ("amqp1://h1/v?queue_type=quorum", "quorum"),
    ],
)
def test_queue_type_auto_is_quorum_for_several_hosts_else_classic(
    url: str, queue_type: str
) -> None:
    assert options(url).queue_type == queue_type


def test_qpid_scheme_is_an_alias() -> None:
    assert options("qpid://u:p@h:5673/v").hosts[0].address == "h:5673"


def test_several_hosts_fail_over_in_order_with_their_own_credentials() -> None:
    opts = options("amqp1://a:1@h1:5672,b:2@h2:5673/v")
    assert [(h.address, h.user, h.password) for h in opts.hosts] == [
        ("h1:5672", "a", "1"),
        ("h2:5673", "b", "2"),
    ]


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("prefech=3", "unknown option(s) prefech"),
        (
            "addressing=dispatch",
            "addressing='dispatch' must be one of auto, rabbitmq, rabbitmq4, artemis, qpid",
        ),
        ("queue_type=stream", "queue_type='stream' must be one of auto, classic, quorum"),
        ("prefetch=0", "prefetch=0 must be >= 1"),
        ("send_timeout=0", "send_timeout=0 must be a positive"),
        ("retry_backoff=2&retry_backoff_max=1", "retry_backoff_max=1 is below retry_backoff=2"),
        ("heartbeat=soon", "heartbeat='soon' is not a number"),
    ],
)
def test_bad_options_are_named(query: str, complaint: str) -> None:
    with pytest.raises(
        InvalidTransportURL, match=complaint.replace("(", r"\(").replace(")", r"\)")
    ):
        options(f"amqp1://h/v?{query}")


def test_other_schemes_are_refused() -> None:
    with pytest.raises(InvalidTransportURL, match="not amqp1, amqps or qpid"):
        parse_options(parse_url("rabbit://h/v"))


@pytest.mark.parametrize(
    ("address", "group", "complaint"),
    [
        (Address("x", "t@s"), None, "contains '@'"),
        (Address("x", "t/u"), None, "contains '/'"),
        (Address("x", "t.live"), None, "ends with a suffix"),
        (Address("x", "t.fanout"), None, "ends with a suffix"),
        (Address("amq.topic", "t"), None, "'amq.' prefix is reserved"),
        (Address("x", "t", server="s#1"), None, "contains '#'"),
        (Address("x", "t", server="s"), "g", "groups apply to topics only"),
        (Address("rpclib", "dead-letters"), None, "is the driver's own"),
        (Address("rpclib", "dead-letters.bounded"), None, "is the driver's own"),
        (Address("x", "t" * 300), None, "exceed 255 bytes"),
    ],
)
def test_names_that_could_collide_are_refused(
    address: Address, group: str | None, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        check_address(address, group)


def test_queue_names_follow_the_documented_scheme() -> None:
    topic = Address("nova", "compute")
    assert queue_name(topic) == "nova.compute"
    assert queue_name(topic, "billing") == "nova.compute#billing"
    assert queue_name(Address("nova", "compute", server="h1"), live=True) == "nova.compute@h1.live"


def rabbitmq() -> RabbitMQAddressing:
    return RabbitMQAddressing(options("amqp1://h/v"), "test")


@pytest.mark.parametrize(
    ("address", "at_least_once", "route"),
    [
        (Address("nova", "compute"), True, Route("/exchange/nova", "compute")),
        (Address("nova", "compute"), False, Route("/exchange/nova", "compute.live")),
        (Address("nova", "compute", server="h1"), True, Route("/exchange/nova", "compute@h1")),
        (
            Address("nova", "compute", server="h1"),
            False,
            Route("/exchange/nova", "compute@h1.live"),
        ),
        (Address("nova", "compute", fanout=True), False, Route("/exchange/nova", "compute.fanout")),
        (Address("nova", "compute", fanout=True), True, Route("/exchange/nova", "compute.fanout")),
    ],
)
def test_rabbitmq_sends_to_the_control_exchange_with_the_key_as_subject(
    address: Address, at_least_once: bool, route: Route
) -> None:
    assert rabbitmq().send_route(address, at_least_once) == route


def test_rabbitmq_picks_the_vhost_by_the_open_frames_hostname() -> None:
    strategy = RabbitMQAddressing(options("amqp1://h/prod"), "test")
    assert strategy.hostname() == "vhost:prod"


def test_rabbitmq_inboxes_are_reached_through_the_private_exchange_and_read_pre_settled() -> None:
    strategy = rabbitmq()
    name = "guest:rpclib.reply.h.1.2"
    assert strategy.private_route(name) == Route("/exchange/rpclib:private", name)
    source = strategy.private_source(name)
    assert (source.node, source.settled) == (f"/amq/queue/{name}", True)


def test_rabbitmq_private_nodes_start_with_the_urls_user() -> None:
    strategy = RabbitMQAddressing(options("amqp1://compute-1:pw@h/v"), "test")
    assert strategy.private_name("rpclib.reply").startswith("compute-1:rpclib.reply.")


def test_artemis_uses_multicast_addresses_and_fully_qualified_group_queues() -> None:
    strategy = ArtemisAddressing(options("amqp1://h/v?addressing=artemis"))
    topic = Address("nova", "compute")
    assert strategy.send_route(topic, True) == Route("nova.compute")
    [source] = strategy.prepare_listen(topic, "billing")
    assert source.node == "nova.compute::nova.compute#billing"
    [server] = strategy.prepare_listen(Address("nova", "compute", server="h1"), None)
    assert server.node == "nova.compute@h1"


@pytest.mark.parametrize(
    ("product", "version", "strategy"),
    [
        ("RabbitMQ", "3.10.8", "rabbitmq"),
        ("RabbitMQ", "4.0.5", "rabbitmq4"),
        ("RabbitMQ", "4.3.0", "rabbitmq4"),
    ],
)
def test_auto_picks_the_strategy_from_the_peers_product_and_version(
    product: str, version: str, strategy: str
) -> None:
    assert pick_strategy({"product": product, "version": version}) == strategy


def test_auto_refuses_to_guess_for_a_peer_that_is_not_rabbitmq() -> None:
    with pytest.raises(TransportError) as refused:
        pick_strategy({"product": "apache-activemq-artemis", "version": "2.31.2"})
    assert "apache-activemq-artemis" in str(refused.value)
    assert "addressing=artemis" in str(refused.value)
