"""The driver contract on real etcd 3.4 and 3.5 (each a session-wide server, a prefix per test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rpclib.transports import load_driver
from rpclib.transports.base import Driver
from tests.transports.driver_contract import DriverContract, MakeDriver


class TestEtcdContract(DriverContract):
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
