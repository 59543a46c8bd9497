"""memory:// accounts with grants: the bus refuses what an account's Access does not name."""

from __future__ import annotations

import queue
import uuid
from collections.abc import Callable, Iterator

import pytest

import rpclib
from rpclib.access import Access, Account, provision, render
from rpclib.transports.base import Address, Guarantee, Incoming
from rpclib.transports.memory import add_account, reset_bus
from rpclib.transports.memory_grants import AccessRefused

EX = "rpclib"
COMPUTE = (
    Access("compute-1")
    .serve(rpclib.Target(topic="compute", server="compute-1"))
    .call(rpclib.Target(topic="conductor"))
)
CONDUCTOR = (
    Access("conductor-1")
    .serve(rpclib.Target(topic="conductor", server="conductor-1"))
    .notify("notifications")
)
BILLING = Access("billing-1").listen("notifications", "billing")
OPEN = "open"  # an account without grants: today's behaviour


@pytest.fixture
def secure_bus() -> Iterator[str]:
    """Overrides the conftest's bus: accounts with grants (and OPEN without one)."""
    name = f"grants{uuid.uuid4().hex[:12]}"
    provision(
        f"memory://{name}",
        [Account(a, a.principal * 2) for a in (COMPUTE, CONDUCTOR, BILLING)],
    )
    add_account(name, OPEN, OPEN * 2)
    yield name
    reset_bus(name)


def test_a_server_may_consume_its_own_queues(
    as_principal: Callable[[str], rpclib.Transport],
) -> None:
    driver = as_principal("compute-1").driver
    for address in (
        Address(EX, "compute", server="compute-1"),
        Address(EX, "compute"),
        Address(EX, "compute", fanout=True),
    ):
        driver.listen(address, lambda m: m.ack()).close()


@pytest.mark.parametrize(
    ("address", "group"),
    [
        (Address(EX, "compute", server="compute-2"), None),  # another node's builds
        (Address(EX, "conductor"), None),  # the conductor's requests
        (Address(EX, "notifications.info"), "billing"),  # billing's notifications
    ],
)
def test_consuming_a_queue_not_granted_is_refused_naming_principal_and_address(
    as_principal: Callable[[str], rpclib.Transport], address: Address, group: str | None
) -> None:
    with pytest.raises(AccessRefused) as refused:
        as_principal("compute-1").driver.listen(address, lambda m: m.ack(), group=group)
    assert "'compute-1' may not consume from" in str(refused.value)
    assert str(address) in str(refused.value)


def test_a_refusal_is_logged_with_principal_and_address(
    as_principal: Callable[[str], rpclib.Transport], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(AccessRefused):
        as_principal("compute-1").driver.listen(Address(EX, "conductor"), lambda m: m.ack())
    assert any(
        r.levelname == "WARNING"
        and "'compute-1' may not consume from rpclib/conductor" in r.message
        for r in caplog.records
    )


def test_declaring_a_queue_not_granted_is_refused(
    as_principal: Callable[[str], rpclib.Transport],
) -> None:
    with pytest.raises(AccessRefused, match="'compute-1' may not declare rpclib/compute.compute-2"):
        as_principal("compute-1").driver.declare(Address(EX, "compute", server="compute-2"))


def test_a_notifier_may_declare_the_pools_of_the_topics_it_sends_to(
    as_principal: Callable[[str], rpclib.Transport],
) -> None:
    as_principal("conductor-1").driver.declare(Address(EX, "notifications.info"), group="billing")


def test_sending_to_a_topic_not_granted_is_refused(
    as_principal: Callable[[str], rpclib.Transport],
) -> None:
    as_principal("billing-1").driver.listen(
        Address(EX, "notifications.info"), lambda m: m.ack(), group="billing"
    )
    forbidden = "'compute-1' may not send to rpclib/notifications.info"
    with pytest.raises(AccessRefused, match=forbidden):
        as_principal("compute-1").driver.send(
            Address(EX, "notifications.info"), b"forged", guarantee=Guarantee.AT_LEAST_ONCE
        )


def test_a_granted_send_arrives_with_its_sender(
    as_principal: Callable[[str], rpclib.Transport],
) -> None:
    got: queue.Queue[Incoming] = queue.Queue()
    server = Address(EX, "conductor", server="conductor-1")
    as_principal("conductor-1").driver.listen(server, got.put)
    as_principal("compute-1").driver.send(server, b"hi", guarantee=Guarantee.AT_MOST_ONCE)
    incoming = got.get(timeout=10)
    incoming.ack()
    assert (incoming.body, incoming.sender) == (b"hi", "compute-1")


@pytest.mark.parametrize("operation", ["advertise", "withdraw"])
def test_writing_another_servers_advert_is_refused(
    as_principal: Callable[[str], rpclib.Transport], operation: str
) -> None:
    driver = as_principal("compute-1").driver
    other = Address(EX, "compute", server="compute-2")
    forbidden = "'compute-1' may not advertise rpclib/compute.compute-2"
    with pytest.raises(AccessRefused, match=forbidden):
        if operation == "advertise":
            driver.advertise(other, b"{}", ttl=10)
        else:
            driver.withdraw(other)


def test_watching_adverts_not_granted_is_refused(
    as_principal: Callable[[str], rpclib.Transport],
) -> None:
    driver = as_principal("compute-1").driver
    driver.watch_adverts(EX, "conductor", lambda s, b: None).close()
    forbidden = "'compute-1' may not watch the adverts of rpclib/compute"
    with pytest.raises(AccessRefused, match=forbidden):
        driver.watch_adverts(EX, "compute", lambda s, b: None)


def test_replies_go_to_any_inbox(as_principal: Callable[[str], rpclib.Transport]) -> None:
    got: queue.Queue[bytes] = queue.Queue()
    inbox = as_principal("compute-1").driver.open_inbox(got.put)
    as_principal("billing-1").driver.send_to_inbox(inbox.address, b"reply")
    assert got.get(timeout=10) == b"reply"


def test_an_account_without_grants_may_do_anything(
    as_principal: Callable[[str], rpclib.Transport],
) -> None:
    driver = as_principal(OPEN).driver
    driver.listen(Address(EX, "compute", server="compute-2"), lambda m: m.ack()).close()
    driver.declare(Address(EX, "anything"))
    driver.send(Address(EX, "anything"), b"x", guarantee=Guarantee.AT_LEAST_ONCE)


def test_changed_grants_apply_to_connected_drivers(
    secure_bus: str, as_principal: Callable[[str], rpclib.Transport]
) -> None:
    driver = as_principal("compute-1").driver
    wider = COMPUTE.serve(rpclib.Target(topic="compute", server="compute-2"))
    provision(f"memory://{secure_bus}", [Account(wider, "compute-1" * 2)])
    driver.listen(Address(EX, "compute", server="compute-2"), lambda m: m.ack()).close()


def test_a_refused_cast_is_not_retried_by_the_client(
    as_principal: Callable[[str], rpclib.Transport],
) -> None:
    client = rpclib.RPCClient(as_principal("billing-1"), rpclib.Target(topic="conductor"))
    with pytest.raises(AccessRefused, match="'billing-1' may not send to rpclib/conductor"):
        client.cast({}, "heartbeat")


def test_render_lists_each_principals_grants_without_passwords(secure_bus: str) -> None:
    text = render(f"memory://{secure_bus}", [Account(COMPUTE, "s3cret-password")])
    assert "account compute-1" in text
    assert "consume   rpclib/compute.compute-1" in text
    assert "send      rpclib/conductor" in text
    assert "s3cret" not in text


def test_the_admin_url_takes_no_credentials() -> None:
    with pytest.raises(rpclib.InvalidTransportURL, match="takes no credentials"):
        provision("memory://a:b@bus", [Account(COMPUTE, "x")])
