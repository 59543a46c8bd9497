"""The AMQP 1.0 driver passes the whole driver contract on both broker generations:
RabbitMQ 3.10's AMQP 1.0 plugin and RabbitMQ 4's native AMQP 1.0 (deprecated features denied),
each reached with the default ``addressing=auto``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rpclib.transports import load_driver
from rpclib.transports.base import Driver
from tests.transports.driver_contract import DriverContract, MakeDriver


class TestAmqp1Contract(DriverContract):
    # Replies are pre-settled and never wait for the broker (the hot path of every call);
    # RabbitMQ's plugin accepts a message to a deleted queue silently, so there is nothing
    # to detect without a broker round trip per reply.
    supports_closed_inbox_detection = False

    @pytest.fixture
    def make_driver(self, any_amqp1_url: str) -> Iterator[MakeDriver]:
        drivers: list[Driver] = []

        def make() -> Driver:
            drivers.append(driver := load_driver(any_amqp1_url))
            return driver

        yield make
        for driver in drivers:
            driver.close()
