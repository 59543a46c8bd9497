"""A call's deadline bounds the whole call: the time its send took is not given again.

The driver here is the memory one with a slow ``send`` (a driver reconnecting
before it can publish, as a RabbitMQ node's loss makes it).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import rpclib
from rpclib.transports.base import Address

SEND_DELAY = 2.0
TIMEOUT = 3.0


def test_a_slow_send_counts_against_the_calls_timeout(transport: rpclib.Transport) -> None:
    driver = transport.driver
    # A consumer that takes requests and never answers (nor sends progress).
    silent = driver.listen(
        Address(transport.default_exchange, "silent"), lambda incoming: incoming.ack()
    )
    send = driver.send

    def slow_send(*args: Any, **kwargs: Any) -> None:
        time.sleep(SEND_DELAY)
        send(*args, **kwargs)

    driver.send = slow_send  # type: ignore[method-assign]
    try:
        client = rpclib.RPCClient(transport, rpclib.Target(topic="silent"), timeout=TIMEOUT)
        started = time.monotonic()
        with pytest.raises(rpclib.ReplyTimeout):
            client.call({}, "anything")
        elapsed = time.monotonic() - started
    finally:
        driver.send = send  # type: ignore[method-assign]
        silent.close()
    # Without the bound the call took SEND_DELAY + TIMEOUT.
    assert elapsed < TIMEOUT + SEND_DELAY / 2, f"the call took {elapsed:.1f}s"
