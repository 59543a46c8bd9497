"""The driver contract on real etcd 3.4 and 3.5 (each a session-wide server, a prefix per test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rpclib.transports import load_driver
from rpclib.transports.base import Driver
from tests.transports.driver_contract import BoundedDeadLetterContract, MakeDriver


class TestEtcdContract(BoundedDeadLetterContract):
    """Everything on: etcd expires adverts (leases), detects closed inboxes (marker keys)
    and keeps dead letters (under a long lease, at most ``dead_letter_limit``)."""

    dead_letter_bound = 30

    @pytest.fixture
    def make_driver(self, any_etcd_url: str) -> Iterator[MakeDriver]:
        drivers: list[Driver] = []

        def make() -> Driver:
            drivers.append(driver := load_driver(f"{any_etcd_url}?dead_letter_limit=30"))
            return driver

        yield make
        for driver in drivers:
            driver.close()


def test_at_most_once_dead_letters_are_never_written_to_etcd(any_etcd_url: str) -> None:
    import queue

    from rpclib.transports.base import Address, Guarantee, Incoming
    from rpclib.transports.etcd import client as ops
    from rpclib.transports.etcd.driver import EtcdDriver
    from tests.rpc.helpers import wait_until

    driver = load_driver(any_etcd_url)
    assert isinstance(driver, EtcdDriver)
    try:
        got: queue.Queue[Incoming] = queue.Queue()
        driver.listen(Address("x", "t"), got.put)
        driver.send(Address("x", "t"), b"garbage", guarantee=Guarantee.AT_MOST_ONCE)
        got.get(timeout=10).dead_letter("garbage")
        expected = [(b"garbage", "garbage")]
        wait_until(
            lambda: [(d.body, d.reason) for d in driver.dead_letters()] == expected,
            what="the dead letter",
        )
        stored = driver.client.call(
            "kv/range",
            {**ops.range_prefix(driver.keys.dead_prefix())["request_range"], "count_only": True},
        )
        assert int(stored.get("count", 0)) == 0
    finally:
        driver.close()
