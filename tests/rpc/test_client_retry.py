"""retry: transport errors on send are retried as the client asks, never past a deadline."""

from __future__ import annotations

from typing import Any

import pytest

import rpclib
from rpclib.exceptions import TransportError
from rpclib.transports.base import Address, Guarantee
from rpclib.transports.memory import MemoryDriver
from rpclib.transports.url import parse_url
from tests.rpc.helpers import WAIT, Recorder, serve, stop


class BlinkingDriver(MemoryDriver):
    """A memory bus whose next ``failures`` sends fail as a broken connection would."""

    failures = 0
    attempts = 0

    def send(self, address: Address, body: bytes, *, guarantee: Guarantee, **kw: Any) -> None:
        BlinkingDriver.attempts += 1
        if BlinkingDriver.failures > 0:
            BlinkingDriver.failures -= 1
            raise TransportError("connection reset by peer")
        super().send(address, body, guarantee=guarantee, **kw)


class Sink(Recorder):
    def note(self, ctx: dict[str, Any], n: int) -> None:
        self.record("note", n=n)


@pytest.fixture
def blinking(bus_url: str) -> Any:
    BlinkingDriver.failures = BlinkingDriver.attempts = 0
    transport = rpclib.Transport(BlinkingDriver(parse_url(bus_url)))
    yield transport
    transport.close()


def test_no_retry_by_default(blinking: rpclib.Transport) -> None:
    BlinkingDriver.failures = 1
    with pytest.raises(TransportError, match="connection reset"):
        rpclib.RPCClient(blinking, rpclib.Target(topic="svc")).cast({}, "note", n=1)
    assert BlinkingDriver.attempts == 1


def test_cast_is_retried_up_to_retry_times(blinking: rpclib.Transport) -> None:
    sink = Sink()
    server = serve(blinking, [sink])
    try:
        BlinkingDriver.failures = 2
        client = rpclib.RPCClient(blinking, rpclib.Target(topic="svc")).prepare(retry=2)
        client.cast({}, "note", n=1)
        assert sink.next() == ("note", {"n": 1})
        assert BlinkingDriver.attempts == 3
    finally:
        stop(server)


def test_retries_give_up_after_the_limit(blinking: rpclib.Transport) -> None:
    BlinkingDriver.failures = 5
    client = rpclib.RPCClient(blinking, rpclib.Target(topic="svc"), retry=1)
    with pytest.raises(TransportError):
        client.cast({}, "note", n=1)
    assert BlinkingDriver.attempts == 2


def test_unlimited_retry_stops_at_the_calls_deadline(blinking: rpclib.Transport) -> None:
    BlinkingDriver.failures = 10**6
    client = rpclib.RPCClient(blinking, rpclib.Target(topic="svc"), timeout=0.5, retry=None)
    with pytest.raises(TransportError):
        client.call({}, "note", n=1)
    assert 1 < BlinkingDriver.attempts < 10


def test_undeliverable_is_never_retried(blinking: rpclib.Transport) -> None:
    client = rpclib.RPCClient(blinking, rpclib.Target(topic="svc"), retry=3, timeout=WAIT)
    with pytest.raises(rpclib.Undeliverable):
        client.call({}, "note", n=1)
    assert BlinkingDriver.attempts == 1


def test_bad_retry_values_are_refused(transport: rpclib.Transport) -> None:
    with pytest.raises(ValueError, match="retry"):
        rpclib.RPCClient(transport, rpclib.Target(topic="svc"), retry=-1)
    with pytest.raises(ValueError, match="retry"):
        rpclib.RPCClient(transport, rpclib.Target(topic="svc")).prepare(retry=1.5)  # type: ignore[arg-type]
