"""At-least-once on etcd: claims by transaction, deleted only after the handler, leases."""

from __future__ import annotations

import queue
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rpclib.transports import load_driver
from rpclib.transports.base import Address, Driver, Guarantee, Incoming
from tests.etcd.peers import Peer
from tests.support.etcd import EtcdServer

WAIT = 20.0
LEASE_TTL = "2"  # the dead peer's claims expire after this many seconds


@pytest.fixture
def url(etcd_server: EtcdServer) -> str:
    return etcd_server.url(lease_ttl=LEASE_TTL)


@pytest.fixture
def drivers(url: str) -> Iterator[Callable[[], Driver]]:
    opened: list[Driver] = []

    def make() -> Driver:
        opened.append(driver := load_driver(url))
        return driver

    yield make
    for driver in opened:
        driver.close()


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Callable[..., Peer]]:
    started: list[Peer] = []

    def start(*args: str) -> Peer:
        started.append(p := Peer(*args, log=tmp_path / f"peer{len(started)}.err"))
        return p

    yield start
    for p in started:
        p.stop()


def topic() -> Address:
    return Address("claims", f"t{uuid.uuid4().hex[:8]}")


def test_a_claimed_message_is_deleted_only_after_its_handler_acks(
    etcd_server: EtcdServer,
) -> None:
    prefix = f"claims{uuid.uuid4().hex[:8]}"
    consumer, sender = (load_driver(etcd_server.url(prefix)) for _ in range(2))
    address = topic()
    got: queue.Queue[Incoming] = queue.Queue()
    try:
        consumer.listen(address, got.put)
        sender.send(address, b"work", guarantee=Guarantee.AT_LEAST_ONCE)
        incoming = got.get(timeout=WAIT)

        def stored() -> list[str]:
            keys = etcd_server.keys(prefix)
            return sorted(k.split("/")[-2] for k in keys if f"/q/claims/{address.topic}/" in k)

        assert stored() == ["c", "m"]  # claimed, still stored while the handler works
        incoming.ack()
    finally:
        consumer.close()  # closing flushes the driver's pending settlements
        sender.close()
    assert stored() == []


def test_a_killed_servers_claim_expires_and_another_server_gets_the_message(
    url: str, drivers: Callable[[], Driver], peers: Callable[..., Peer]
) -> None:
    address = topic()
    holder = peers("hold", url, address.exchange, address.topic)
    holder.expect(lambda line: line == "ready", WAIT, "the holding server")
    drivers().send(address, b"job", guarantee=Guarantee.AT_LEAST_ONCE)
    holder.expect(lambda line: line == "got job 1", WAIT, "the first delivery")
    got: queue.Queue[Incoming] = queue.Queue()
    drivers().listen(address, got.put)  # a second server, idle: the message is claimed
    with pytest.raises(queue.Empty):
        got.get(timeout=0.3)
    holder.kill()  # dies mid-handler: its claim goes with its lease
    incoming = got.get(timeout=WAIT)
    assert (incoming.body, incoming.attempts) == (b"job", 2)
    incoming.ack()


def test_a_killed_server_restarted_gets_its_message_back(
    url: str, drivers: Callable[[], Driver], peers: Callable[..., Peer]
) -> None:
    address = topic()
    first = peers("hold", url, address.exchange, address.topic)
    first.expect(lambda line: line == "ready", WAIT, "the holding server")
    drivers().send(address, b"job", guarantee=Guarantee.AT_LEAST_ONCE)
    first.expect(lambda line: line == "got job 1", WAIT, "the first delivery")
    first.kill()
    again = peers("hold", url, address.exchange, address.topic)
    again.expect(lambda line: line == "got job 2", WAIT, "the redelivery after the restart")
