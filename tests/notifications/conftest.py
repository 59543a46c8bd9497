"""Notification tests run each on its own memory bus, dropped afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rpclib.transports.memory import reset_bus


@pytest.fixture(autouse=True)
def _drop_bus(bus_url: str) -> Iterator[None]:
    yield
    reset_bus(bus_url.removeprefix("memory://"))
