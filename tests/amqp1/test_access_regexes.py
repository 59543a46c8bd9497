"""The permission regexes amqp1:// derives for a principal, matched against amqp1's node names
(what the broker does with them is tested on real nodes in test_security.py)."""

from __future__ import annotations

import re

import pytest

from rpclib.access import Access, Account
from rpclib.target import Target
from rpclib.transports.amqp1.access import (
    ADMIN_OPTIONS,
    NOTHING,
    Permissions,
    admin_target,
    permissions,
    render,
)
from rpclib.transports.rabbitmq_management import TopicPermission

COMPUTE = (
    Access("compute-1")
    .serve(Target(topic="compute", server="compute-1"))
    .call(Target(topic="conductor"))
)
BILLING = Access("billing").listen("instance", "billing")
CALLER = Access("scheduler").call(Target(topic="conductor"))


def perms(access: Access, strategy: str) -> Permissions:
    return permissions(Account(access, "pw"), strategy)


def matches(regex: str, name: str) -> bool:
    return re.search(regex, name) is not None  # RabbitMQ searches, unanchored


@pytest.mark.parametrize("strategy", ["rabbitmq", "rabbitmq4"])
@pytest.mark.parametrize(
    "name",
    [
        "rpclib.compute@compute-1",
        "rpclib.compute@compute-1.live",
        "compute-1:rpclib.reply.h.1.2",
        "compute-1:rpclib.reply.h.1.2.mark",
        "compute-1:rpclib.compute.fanout.h.1.3",
        "compute-1:rpclib.adverts.h.1.4",
    ],
)
def test_a_compute_node_reads_its_own_queues(strategy: str, name: str) -> None:
    assert matches(perms(COMPUTE, strategy).read, name)


@pytest.mark.parametrize("strategy", ["rabbitmq", "rabbitmq4"])
@pytest.mark.parametrize(
    "name",
    [
        "rpclib.compute@compute-2",
        "rpclib.compute@compute-10",
        "compute-2:rpclib.reply.h.1.2",
        "compute-10:rpclib.reply.h.1.2",
        "rpclib.conductor@c1",
        "rpclib.conductor",
        "rpclib.dead-letters",
        "rpclib.instance#billing",
    ],
)
def test_a_compute_node_reads_no_other_queue(strategy: str, name: str) -> None:
    assert not matches(perms(COMPUTE, strategy).read, name)


@pytest.mark.parametrize("strategy", ["rabbitmq", "rabbitmq4"])
def test_no_principal_may_configure_the_shared_exchanges_or_dead_letters(strategy: str) -> None:
    configure = perms(COMPUTE, strategy).configure
    for name in ("rpclib", "rpclib.adverts", "rpclib:private", "rpclib.dead-letters"):
        assert not matches(configure, name)


@pytest.mark.parametrize("strategy", ["rabbitmq", "rabbitmq4"])
def test_a_caller_may_publish_its_topics_keys_only(strategy: str) -> None:
    (rpclib_x,) = [t for t in perms(COMPUTE, strategy).topics if t.exchange == "rpclib"]
    for key in ("conductor", "conductor.live", "conductor@c1", "conductor@c1.live"):
        assert matches(rpclib_x.write, key)
    for key in ("compute@compute-2", "scheduler", "conductors", "instance.info"):
        assert not matches(rpclib_x.write, key)


@pytest.mark.parametrize("strategy", ["rabbitmq", "rabbitmq4"])
def test_a_server_may_bind_its_own_keys_only(strategy: str) -> None:
    (rpclib_x,) = [t for t in perms(COMPUTE, strategy).topics if t.exchange == "rpclib"]
    for key in ("compute@compute-1", "compute@compute-1.live", "compute", "compute.fanout"):
        assert matches(rpclib_x.read, key)
    for key in ("compute@compute-2", "conductor", "conductor@c1", "#"):
        assert not matches(rpclib_x.read, key)


def private(access: Access, strategy: str) -> TopicPermission:
    (topic,) = [t for t in perms(access, strategy).topics if t.exchange == "rpclib:private"]
    return topic


@pytest.mark.parametrize("strategy", ["rabbitmq", "rabbitmq4"])
def test_inboxes_are_bound_by_their_owner_only(strategy: str) -> None:
    assert matches(private(COMPUTE, strategy).read, "compute-1:rpclib.reply.+h.1.2")
    assert not matches(private(COMPUTE, strategy).read, "compute-2:rpclib.reply.+h.1.2")


@pytest.mark.parametrize("strategy", ["rabbitmq", "rabbitmq4"])
def test_no_principal_may_write_to_the_default_exchange(strategy: str) -> None:
    for access in (COMPUTE, BILLING, CALLER):
        assert not matches(perms(access, strategy).write, "amq.default")


def test_a_rolling_upgrade_may_grant_the_default_exchange_again() -> None:
    account = Account(COMPUTE, "pw")
    legacy = permissions(account, "rabbitmq4", legacy_default_exchange=True)
    assert matches(legacy.write, "amq.default")


@pytest.mark.parametrize("strategy", ["rabbitmq", "rabbitmq4"])
@pytest.mark.parametrize(
    "key",
    [
        "compute-2:rpclib.reply.+h.1.2",  # replies go to any caller's inbox
        "compute-2:rpclib.reply.h.1.2",  # an older client's inbox
        "compute-1:rpclib.compute.fanout.+h.1.3",  # its own nodes (requeued copies)
        "rpclib.compute@compute-1",  # the queues it consumes (requeued copies)
        "rpclib.compute@compute-1.live",
        "rpclib.dead-letters.bounded",
    ],
)
def test_a_server_writes_through_the_private_exchange_where_its_role_needs(
    strategy: str, key: str
) -> None:
    assert matches(private(COMPUTE, strategy).write, key)


@pytest.mark.parametrize("strategy", ["rabbitmq", "rabbitmq4"])
@pytest.mark.parametrize(
    "key",
    [
        "rpclib.compute@compute-2",
        "rpclib.compute@compute-2.live",
        "rpclib.conductor@c1",
        "rpclib.instance.info#billing",
        "rpclib.dead-letters",
        "compute-2:rpclib.reply.+h.1.2.mark",
        "compute-2:rpclib.compute.fanout.+h.1.3",
    ],
)
def test_a_server_writes_no_other_queue_through_the_private_exchange(
    strategy: str, key: str
) -> None:
    assert not matches(private(COMPUTE, strategy).write, key)


@pytest.mark.parametrize("strategy", ["rabbitmq", "rabbitmq4"])
def test_a_caller_that_serves_nothing_replies_to_no_inbox(strategy: str) -> None:
    write = private(CALLER, strategy).write
    assert matches(write, "scheduler:rpclib.reply.+h.1.2")  # its own
    assert not matches(write, "compute-2:rpclib.reply.+h.1.2")


@pytest.mark.parametrize("strategy", ["rabbitmq", "rabbitmq4"])
def test_a_listener_pool_reads_its_own_pool_queues(strategy: str) -> None:
    read = perms(BILLING, strategy).read
    assert matches(read, "rpclib.instance.info#billing")
    assert not matches(read, "rpclib.instance.info#audit")


def test_nothing_matches_nothing() -> None:
    for name in ("", "a", "rpclib", ".*"):
        assert not matches(NOTHING, name)


def test_the_admin_url_names_the_management_port_and_strategy() -> None:
    target = admin_target("amqp1://admin:pw@h:5672/prod?addressing=rabbitmq4&management_port=1")
    assert (target.port, target.vhost, target.strategy) == (1, "prod", "rabbitmq4")


def test_an_admin_url_for_another_broker_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="addressing=rabbitmq, rabbitmq4 or auto"):
        admin_target("amqp1://admin:pw@h/?addressing=artemis")


def test_render_prints_the_commands_with_no_impersonator_tag() -> None:
    text = render("amqp1://admin:pw@h/?addressing=rabbitmq4", [Account(COMPUTE, "s3")])
    assert "rabbitmqctl set_user_tags compute-1\n" in text
    assert "rabbitmqctl set_permissions -p / compute-1 " in text
    assert "rabbitmqctl set_topic_permissions -p / compute-1 rpclib " in text
    assert "impersonator" not in text


def test_render_declares_the_bounded_dead_letters_bound_to_the_private_exchange() -> None:
    text = render("amqp1://admin:pw@h/?addressing=rabbitmq4", [Account(COMPUTE, "s3")])
    assert '"x-max-length": 10000' in text
    assert '"x-overflow": "drop-head"' in text
    assert (
        "declare binding source=rpclib:private destination=rpclib.dead-letters.bounded "
        "routing_key=rpclib.dead-letters.bounded"
    ) in text


@pytest.mark.parametrize("strategy", ["rabbitmq", "rabbitmq4"])
def test_render_declares_the_listener_pools_queues(strategy: str) -> None:
    """A notifier may not configure a pool's queue: the admin declares it."""
    text = render(f"amqp1://admin:pw@h/?addressing={strategy}", [Account(BILLING, "s3")])
    assert "declare queue name='rpclib.instance.info#billing' durable=true" in text
    assert (
        "declare binding source=rpclib:private destination='rpclib.instance.info#billing' "
        "routing_key='rpclib.instance.info#billing'"
    ) in text


def test_the_upgrade_option_is_the_admins_only() -> None:
    assert admin_target("amqp1://a:b@h/?legacy_default_exchange=true").legacy_default_exchange
    assert not admin_target("amqp1://a:b@h/").legacy_default_exchange
    assert "legacy_default_exchange" in ADMIN_OPTIONS  # login URLs drop it
