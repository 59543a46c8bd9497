"""What the AMQP 1.0 driver does beyond the shared contract, on the shared broker."""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

import rpclib
from rpclib.exceptions import TransportError, Undeliverable
from rpclib.transports import load_driver
from rpclib.transports.amqp1 import Amqp1Driver
from rpclib.transports.base import Address, Driver, Guarantee
from tests.support.rabbit_node import free_ports
from tests.transports.driver_contract import Collector

WAIT = 10.0


@pytest.fixture
def make_driver(amqp1_url: str) -> Iterator[Callable[..., Driver]]:
    drivers: list[Driver] = []

    def make(url: str = amqp1_url) -> Driver:
        drivers.append(driver := load_driver(url))
        return driver

    yield make
    for driver in drivers:
        driver.close()


def fresh_topic() -> Address:
    return Address(f"x{uuid.uuid4().hex[:8]}", "work")


def test_qpid_scheme_reaches_the_same_broker(
    amqp1_url: str, make_driver: Callable[..., Driver]
) -> None:
    address = fresh_topic()
    got = Collector(WAIT)
    make_driver().listen(address, got)
    sender = make_driver(amqp1_url.replace("amqp1://", "qpid://", 1))
    assert isinstance(sender, Amqp1Driver)
    sender.send(address, b"via qpid://", guarantee=Guarantee.AT_MOST_ONCE)
    assert got.get().body == b"via qpid://"


def test_unroutable_call_is_reported_through_the_callback_not_raised(
    make_driver: Callable[..., Driver],
) -> None:
    reports: queue.Queue[Undeliverable] = queue.Queue()
    address = Address(f"x{uuid.uuid4().hex[:8]}", "work", server="gone")
    make_driver().send(
        address, b"call", guarantee=Guarantee.AT_MOST_ONCE, on_undeliverable=reports.put
    )
    assert "work" in str(reports.get(timeout=WAIT))


def test_rpc_call_to_a_server_nobody_runs_raises_undeliverable(amqp1_url: str) -> None:
    with rpclib.get_transport(amqp1_url) as transport:
        client = rpclib.RPCClient(transport, rpclib.Target(topic=f"t{uuid.uuid4().hex[:8]}"))
        with pytest.raises(Undeliverable):
            client.call({}, "anything")


def test_connecting_where_nobody_listens_raises_transport_error_naming_the_host() -> None:
    port = free_ports(1)[0]
    with pytest.raises(TransportError, match=f"127.0.0.1:{port}"):
        load_driver(f"amqp1://guest:guest@127.0.0.1:{port}/?connect_timeout=1")


def test_expired_message_is_not_handed_to_the_handler(make_driver: Callable[..., Driver]) -> None:
    address = fresh_topic()
    got = Collector(WAIT)
    sender = make_driver()
    sender.declare(address)
    sender.send(address, b"stale", guarantee=Guarantee.AT_LEAST_ONCE, expires_at=time.time() + 0.05)
    sender.send(address, b"fresh", guarantee=Guarantee.AT_LEAST_ONCE)
    time.sleep(0.1)  # the first one's deadline passes while nobody listens
    make_driver().listen(address, got)
    assert got.get().body == b"fresh"
    got.assert_nothing(0.3)


def test_url_prefetch_overrides_what_listen_asks_for(
    amqp1_url: str, make_driver: Callable[..., Driver]
) -> None:
    address = fresh_topic()
    got = Collector(WAIT, ack=False)
    make_driver(f"{amqp1_url}?prefetch=1").listen(address, got, prefetch=50)
    sender = make_driver()
    for body in (b"1", b"2"):
        sender.send(address, body, guarantee=Guarantee.AT_LEAST_ONCE)
    first = got.get()
    got.assert_nothing(0.3)
    first.ack()
    assert got.get().body == b"2"
