"""Pipelined at-least-once casts: returned before the confirm, never lost from the books.

``HeldDriver`` keeps each pipelined send's outcome until the test releases
it, as a broker's late confirm would; the memory bus still delivers the
message at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import rpclib
from rpclib.exceptions import TransportError, Undeliverable
from rpclib.transports.base import Address, Guarantee, SendOutcomeHandler
from rpclib.transports.memory import MemoryDriver
from rpclib.transports.url import parse_url
from tests.rpc.helpers import Recorder, serve, stop


class HeldDriver(MemoryDriver):
    """Delivers pipelined sends at once but reports their outcome only when released."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held: list[SendOutcomeHandler] = []
        self.refuse: BaseException | None = None
        self.refusals = 0
        """How many of the next sends fail as a dropped connection would."""
        self.attempts = 0

    def send_pipelined(
        self,
        address: Address,
        body: bytes,
        *,
        on_outcome: SendOutcomeHandler,
        expires_at: float | None = None,
    ) -> None:
        self.attempts += 1
        if self.refuse is not None:
            raise self.refuse
        if self.refusals:
            self.refusals -= 1
            raise TransportError("connection reset by peer")
        self.send(address, body, guarantee=Guarantee.AT_LEAST_ONCE, expires_at=expires_at)
        self.held.append(on_outcome)

    def release(self, error: BaseException | None = None) -> None:
        """Report every held send's outcome."""
        outcomes, self.held = self.held, []
        for outcome in outcomes:
            outcome(error)


class Sink(Recorder):
    def note(self, ctx: dict[str, Any], n: int) -> None:
        self.record("note", n=n)


@pytest.fixture
def held(bus_url: str) -> Iterator[tuple[rpclib.Transport, HeldDriver]]:
    driver = HeldDriver(parse_url(bus_url))
    transport = rpclib.Transport(driver)
    yield transport, driver
    driver.release()
    transport.close()


def pipelined_client(transport: rpclib.Transport, **kwargs: Any) -> rpclib.RPCClient:
    return rpclib.RPCClient(
        transport, rpclib.Target(topic="svc"), at_least_once=True, pipelined=True, **kwargs
    )


def test_pipelined_cast_returns_before_its_outcome_and_is_delivered(
    held: tuple[rpclib.Transport, HeldDriver],
) -> None:
    transport, _driver = held
    sink = Sink()
    server = serve(transport, [sink])
    try:
        pipelined_client(transport).cast({}, "note", n=1)
        assert transport.pipeline.in_flight == 1
        assert sink.next() == ("note", {"n": 1})
    finally:
        stop(server)


def test_flush_times_out_while_casts_are_unconfirmed(
    held: tuple[rpclib.Transport, HeldDriver],
) -> None:
    transport, _driver = held
    client = pipelined_client(transport)
    transport.driver.declare(Address("rpclib", "svc"))
    client.cast({}, "note", n=1)
    with pytest.raises(TimeoutError, match="1 pipelined cast"):
        client.flush(timeout=0.05)


def test_flush_returns_once_every_cast_is_confirmed(
    held: tuple[rpclib.Transport, HeldDriver],
) -> None:
    transport, driver = held
    transport.driver.declare(Address("rpclib", "svc"))
    client = pipelined_client(transport)
    for n in range(3):
        client.cast({}, "note", n=n)
    threading.Timer(0.1, driver.release).start()
    client.flush(timeout=10)
    assert transport.pipeline.in_flight == 0


def test_failed_cast_goes_to_on_cast_error_and_the_next_flush(
    held: tuple[rpclib.Transport, HeldDriver],
) -> None:
    transport, driver = held
    transport.driver.declare(Address("rpclib", "svc"))
    failures: list[rpclib.CastFailure] = []
    client = pipelined_client(transport, on_cast_error=failures.append)
    client.cast({}, "note", n=1)
    driver.release(Undeliverable("rpclib/svc", "no queue is bound to it"))
    assert len(failures) == 1
    assert failures[0].method == "note"
    assert len(failures[0].message_id) == 32
    assert isinstance(failures[0].error, Undeliverable)
    with pytest.raises(TransportError, match="1 pipelined cast.*'note'.*no queue is bound"):
        client.flush(timeout=1)
    client.flush(timeout=1)  # reported once: the next flush is clean


def test_failed_cast_without_a_handler_is_logged(
    held: tuple[rpclib.Transport, HeldDriver], caplog: pytest.LogCaptureFixture
) -> None:
    transport, driver = held
    transport.driver.declare(Address("rpclib", "svc"))
    pipelined_client(transport).cast({}, "note", n=1)
    with caplog.at_level(logging.ERROR, logger="rpclib.pipeline"):
        driver.release(TransportError("basic.nack"))
    assert "was not stored: basic.nack" in caplog.text
    with pytest.raises(TransportError):
        transport.flush(timeout=1)


def test_a_send_the_driver_refuses_raises_and_is_not_counted(
    held: tuple[rpclib.Transport, HeldDriver],
) -> None:
    transport, driver = held
    driver.refuse = TransportError("window full")
    with pytest.raises(TransportError, match="window full"):
        pipelined_client(transport).cast({}, "note", n=1)
    assert transport.pipeline.in_flight == 0


def test_retry_covers_handing_a_pipelined_cast_to_the_driver(
    held: tuple[rpclib.Transport, HeldDriver],
) -> None:
    transport, driver = held
    transport.driver.declare(Address("rpclib", "svc"))
    driver.refusals = 2
    pipelined_client(transport, retry=2).cast({}, "note", n=1)
    assert (driver.attempts, len(driver.held)) == (3, 1)
    assert transport.pipeline.in_flight == 1


def test_an_outcome_reported_twice_counts_once(
    held: tuple[rpclib.Transport, HeldDriver], caplog: pytest.LogCaptureFixture
) -> None:
    transport, driver = held
    transport.driver.declare(Address("rpclib", "svc"))
    client = pipelined_client(transport)
    client.cast({}, "note", n=1)
    client.cast({}, "note", n=2)
    first = driver.held[0]
    with caplog.at_level(logging.ERROR, logger="rpclib.pipeline"):
        first(None)
        first(None)
    assert "reported twice" in caplog.text
    assert transport.pipeline.in_flight == 1


def test_closing_the_transport_waits_for_unconfirmed_casts(
    held: tuple[rpclib.Transport, HeldDriver],
) -> None:
    transport, driver = held
    transport.driver.declare(Address("rpclib", "svc"))
    pipelined_client(transport).cast({}, "note", n=1)
    threading.Timer(0.2, driver.release).start()
    started = time.monotonic()
    transport.close()
    assert transport.pipeline.in_flight == 0
    assert time.monotonic() - started >= 0.1


def test_closing_gives_up_on_casts_never_confirmed_and_says_so(
    held: tuple[rpclib.Transport, HeldDriver], caplog: pytest.LogCaptureFixture
) -> None:
    transport, _driver = held
    transport.driver.declare(Address("rpclib", "svc"))
    pipelined_client(transport).cast({}, "note", n=1)
    with caplog.at_level(logging.ERROR, logger="rpclib.pipeline"):
        transport.close(flush_timeout=0.05)
    assert "1 pipelined cast(s) still unconfirmed" in caplog.text


def test_pipelined_only_changes_at_least_once_casts(bus_url: str) -> None:
    with rpclib.get_transport(bus_url) as transport:
        sink = Sink()
        server = serve(transport, [sink])
        try:
            client = rpclib.RPCClient(transport, rpclib.Target(topic="svc"), pipelined=True)
            client.cast({}, "note", n=1)  # at-most-once: sent as before
            assert sink.next() == ("note", {"n": 1})
            assert transport.pipeline.in_flight == 0
        finally:
            stop(server)


def test_drivers_without_pipelining_store_before_returning(bus_url: str) -> None:
    with rpclib.get_transport(bus_url) as transport:
        sink = Sink()
        server = serve(transport, [sink])
        try:
            client = pipelined_client(transport)
            client.cast({}, "note", n=7)
            assert transport.pipeline.in_flight == 0  # the default send_pipelined is synchronous
            client.flush(timeout=0)
            assert sink.next() == ("note", {"n": 7})
        finally:
            stop(server)
