"""The driver contract over etcds:// with a client certificate *and* a user and password.

On the session's ``etcd_auth_server`` (HTTPS with client certificates,
authentication on, tokens ending after a second unused), as user ``rpc``
whose role covers only ``/rpc-...``: the whole contract, with re-authentication
happening whenever a driver idled.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rpclib.transports import load_driver
from rpclib.transports.base import Driver
from rpclib.transports.etcd import EtcdDriver
from tests.support.etcd import RPC_PASSWORD, RPC_USER, EtcdServer
from tests.transports.driver_contract import DriverContract, MakeDriver


class TestEtcdTlsAuthContract(DriverContract):
    """Everything on, as on plain etcd (tests/etcd/test_etcd_contract.py)."""

    @pytest.fixture
    def make_driver(self, etcd_auth_server: EtcdServer) -> Iterator[MakeDriver]:
        etcd_auth_server.start()  # in case an auth test left it stopped
        url = etcd_auth_server.url(user=RPC_USER, password=RPC_PASSWORD)
        assert url.startswith("etcds://") and "ssl_cert=" in url
        drivers: list[Driver] = []

        def make() -> Driver:
            drivers.append(driver := load_driver(url))
            assert isinstance(driver, EtcdDriver) and driver.client.token is not None
            return driver

        yield make
        for driver in drivers:
            driver.close()
