"""A notifier that drops says how many it dropped when the flow resumes and when it closes.

Drop lines are rate-limited (one per ``log_interval`` per cause), so without
these summaries an outage shorter than the interval would show one line for
its first drop and nothing for the rest, and neither would a stop. The
transport's outage is modelled by holding its sends (:class:`HeldSends`)
over a real driver, on ``memory://`` and on the shared RabbitMQ broker.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import rpclib
from rpclib.notifier import Notifier
from rpclib.notify_drivers import MessagingDriver
from rpclib.transport import Transport
from rpclib.transports import load_driver
from rpclib.transports.base import Address, Driver
from tests.notifications.helpers import WAIT
from tests.rpc.on_transports import any_url

__all__ = ["any_url"]

BUFFER = 2
DROPPED = 5


class HeldSends:
    """A real driver whose sends wait while the test holds them (a transport outage)."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self.entered = threading.Event()
        self.released = threading.Event()

    def send(self, address: Address, body: bytes, **kwargs: Any) -> None:
        self.entered.set()
        if not self.released.wait(WAIT):
            raise AssertionError("the test never ended the outage")
        self._driver.send(address, body, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)


@pytest.fixture
def held(any_url: str) -> Iterator[tuple[HeldSends, Transport]]:
    driver = HeldSends(load_driver(any_url))
    transport = Transport(driver, default_exchange=f"n{uuid.uuid4().hex[:10]}")  # type: ignore[arg-type]
    yield driver, transport
    driver.released.set()
    transport.close()


def outage(held: tuple[HeldSends, Transport]) -> Notifier:
    """A notifier whose buffer filled in an outage: 1 in send, BUFFER - 1 queued, DROPPED lost."""
    driver, transport = held
    notifier = Notifier(
        transport,
        "svc",
        driver=MessagingDriver(
            transport, buffer_size=BUFFER, ensure_pools=(None,), log_interval=3600.0
        ),
    )
    notifier.info({}, "first", {})
    assert driver.entered.wait(WAIT)  # the sender is stuck in the outage
    for i in range(BUFFER - 1 + DROPPED):
        notifier.info({}, f"more.{i}", {})
    assert notifier.stats.dropped == DROPPED
    return notifier


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_short_outage_is_summarised_when_the_flow_resumes(
    held: tuple[HeldSends, Transport], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rpclib.notifier")
    notifier = outage(held)
    assert len([w for w in warnings(caplog) if "dropping notification" in w]) == 1

    held[0].released.set()  # the outage ends well within the hour-long log interval
    assert notifier.flush(WAIT)

    [summary] = [w for w in warnings(caplog) if "flowing again" in w]
    assert re.search(rf"\b{DROPPED} notification message\(s\) were dropped over", summary)
    assert f"buffer of {BUFFER} is full" in summary
    assert notifier.stats.sent == BUFFER
    notifier.close()


def test_drops_not_yet_summarised_are_summarised_on_close(
    held: tuple[HeldSends, Transport], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rpclib.notifier")
    notifier = outage(held)

    notifier.close(timeout=0.05)  # still in the outage: what is buffered is dropped too

    [summary] = [w for w in warnings(caplog) if "notifier closing" in w]
    assert re.search(rf"\b{DROPPED} notification message\(s\) were dropped", summary), summary
    assert notifier.stats.dropped >= DROPPED


def test_a_new_spell_of_drops_after_a_summary_is_logged_at_once(
    held: tuple[HeldSends, Transport], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rpclib.notifier")
    driver, _ = held
    notifier = outage(held)
    driver.released.set()
    assert notifier.flush(WAIT)
    driver.released.clear()
    driver.entered.clear()

    notifier.info({}, "second.outage", {})
    assert driver.entered.wait(WAIT)
    for i in range(BUFFER):
        notifier.info({}, f"again.{i}", {})

    assert len([w for w in warnings(caplog) if "dropping notification" in w]) == 2
    driver.released.set()
    notifier.close()


def test_lines_held_back_by_the_rate_limit_are_summarised_on_close(
    any_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="rpclib.notifier")
    transport = rpclib.get_transport(any_url, default_exchange=f"n{uuid.uuid4().hex[:10]}")
    notifier = Notifier(
        transport, "svc", driver=MessagingDriver(transport, log_interval=3600.0)
    )  # nobody listens and nothing is declared: every notification is undeliverable
    try:
        for i in range(3):
            notifier.info({}, f"lost.{i}", {})
        assert notifier.flush(WAIT)
        assert notifier.stats.undeliverable == 3
        assert len(caplog.records) == 1  # the first at once, the next two held back

        notifier.close()

        [summary] = [r.getMessage() for r in caplog.records[1:]]
        assert summary.startswith("2 similar line(s) suppressed; the last: notification lost.2")
    finally:
        transport.close()
