"""addressing=qpid: the node names for qpidd and Qpid Dispatch / skupper routers (pure logic).

The names are what operators configure their routers and brokers for
(docs/transports/amqp1.md), so each mapping is pinned here; nothing connects.
"""

from __future__ import annotations

import pytest

from rpclib.exceptions import TransportError
from rpclib.transports.amqp1.addressing import QpidAddressing, Route, Source, make_addressing
from rpclib.transports.amqp1.options import parse_options
from rpclib.transports.base import Address
from rpclib.transports.url import parse_url

TOPIC = Address("nova", "compute")
SERVER = Address("nova", "compute", server="h1")
FANOUT = Address("nova", "compute", fanout=True)


def qpid(url: str = "amqp1://h/?addressing=qpid") -> QpidAddressing:
    return QpidAddressing(parse_options(parse_url(url)))


def test_the_url_option_selects_the_qpid_strategy() -> None:
    strategy = make_addressing(parse_options(parse_url("qpid://h/?addressing=qpid")), "test")
    assert isinstance(strategy, QpidAddressing)


@pytest.mark.parametrize(
    ("address", "at_least_once", "node"),
    [
        (TOPIC, True, "rpclib/queue/nova.compute"),
        (TOPIC, False, "rpclib/anycast/nova.compute"),
        (SERVER, True, "rpclib/queue/nova.compute@h1"),
        (SERVER, False, "rpclib/unicast/nova.compute@h1"),
        (FANOUT, True, "rpclib/multicast/nova.compute.fanout"),
        (FANOUT, False, "rpclib/multicast/nova.compute.fanout"),
    ],
)
def test_the_guarantee_and_kind_of_address_pick_the_prefix(
    address: Address, at_least_once: bool, node: str
) -> None:
    assert qpid().send_route(address, at_least_once) == Route(node)


def test_a_topic_listener_consumes_the_stored_node_unsettled_and_the_live_one_settled() -> None:
    assert qpid().prepare_listen(TOPIC, None) == [
        Source("rpclib/queue/nova.compute", settled=False),
        Source("rpclib/anycast/nova.compute", settled=True),
    ]


def test_a_server_listener_consumes_its_stored_and_its_closest_node() -> None:
    assert qpid().prepare_listen(SERVER, None) == [
        Source("rpclib/queue/nova.compute@h1", settled=False),
        Source("rpclib/unicast/nova.compute@h1", settled=True),
    ]


def test_a_fanout_listener_attaches_to_the_multicast_address_itself() -> None:
    assert qpid().prepare_listen(FANOUT, None) == [
        Source("rpclib/multicast/nova.compute.fanout", settled=True)
    ]


def test_a_named_consumer_group_is_refused_with_the_reason_and_the_alternatives() -> None:
    with pytest.raises(TransportError, match="cannot give consumer group 'billing'") as info:
        qpid().prepare_listen(TOPIC, "billing")
    assert "group=None" in str(info.value)
    assert "addressing=rabbitmq or artemis" in str(info.value)


def test_declaring_a_named_group_is_refused_too() -> None:
    with pytest.raises(TransportError, match="cannot give consumer group 'billing'"):
        qpid().declare(TOPIC, "billing")


def test_declaring_the_default_group_needs_nothing_from_the_peer() -> None:
    assert qpid().declare(TOPIC, None) is None


def test_inboxes_are_closest_delivery_nodes_read_pre_settled() -> None:
    strategy = qpid()
    name = strategy.new_private("rpclib.reply", [])
    assert name.startswith("rpclib.reply.")
    assert strategy.private_route(name) == Route(f"rpclib/unicast/{name}")
    assert strategy.private_source(name) == Source(f"rpclib/unicast/{name}", settled=True)


def test_each_private_node_gets_a_name_of_its_own() -> None:
    strategy = qpid()
    assert strategy.new_private("rpclib.reply", []) != strategy.new_private("rpclib.reply", [])


def test_dead_letters_live_in_a_stored_queue_read_unsettled() -> None:
    strategy = qpid()
    assert strategy.dead_letter_route() == Route("rpclib/queue/rpclib.dead-letters")
    assert strategy.dead_letter_source() == Source(
        "rpclib/queue/rpclib.dead-letters", settled=False
    )


def test_adverts_and_sync_requests_are_multicast_per_topic() -> None:
    strategy = qpid()
    assert strategy.adverts_route("nova", "compute") == Route(
        "rpclib/multicast/nova.adverts.compute"
    )
    assert strategy.adverts_route("nova", "compute.sync") == Route(
        "rpclib/multicast/nova.adverts.compute.sync"
    )


def test_adverts_cannot_be_watched() -> None:
    assert qpid().watches_adverts is False


def test_routability_is_left_to_the_peers_outcomes() -> None:
    assert qpid().routable(SERVER, False) is None


def test_dead_letters_cannot_be_counted() -> None:
    assert qpid().dead_letter_count() is None


def test_the_open_frame_names_the_host_when_the_url_has_no_vhost() -> None:
    assert qpid("amqp1://router.example:5672/?addressing=qpid").hostname() == "router.example"


def test_the_open_frame_names_the_vhost_when_the_url_has_one() -> None:
    assert qpid("amqp1://router.example/tenant-a?addressing=qpid").hostname() == "tenant-a"


def test_a_node_name_longer_than_255_bytes_with_its_prefix_is_refused() -> None:
    long_topic = Address("x", "t" * 240)
    with pytest.raises(ValueError, match="would exceed 255 bytes"):
        qpid().send_route(long_topic, False)
