"""A call's total limit (``max_time``) holds however often its server sends progress heartbeats.

``timeout`` is an inactivity limit, restarted by every heartbeat; a handler
stuck in a deadlock while its server still beats would hold its caller
forever without ``max_time``.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import rpclib
from rpclib.transports.base import Address
from tests.rpc.helpers import WAIT, Gate, serve, stop, wait_until
from tests.rpc.on_transports import any_transport, any_url, unique_topic

__all__ = ["any_transport", "any_url", "unique_topic"]


class Stuck:
    """A handler that blocks until the test opens its gate (its server keeps beating)."""

    def __init__(self) -> None:
        self.gate = Gate()
        self.ran: list[str] = []

    def deadlocked(self, ctx: dict[str, Any]) -> str:
        self.gate.pass_through()
        return "finally"

    def late(self, ctx: dict[str, Any]) -> None:
        self.ran.append("late")


def test_a_beating_but_stuck_handler_ends_the_call_at_max_time(
    any_transport: rpclib.Transport, unique_topic: str
) -> None:
    stuck = Stuck()
    server = serve(any_transport, [stuck], topic=unique_topic)
    client = rpclib.RPCClient(
        any_transport, rpclib.Target(topic=unique_topic), timeout=0.3, max_time=1.5
    )
    try:
        with pytest.raises(rpclib.MaxTimeExceeded) as caught:
            client.call({}, "deadlocked")
        error = caught.value
        assert isinstance(error, rpclib.ReplyTimeout)  # callers catching timeouts still do
        assert error.progress_seen  # it was the total limit, not silence, that ended it
        assert (error.timeout, error.max_time) == (0.3, 1.5)
        assert "max_time=1.5s" in str(error) and "timeout=0.3s" in str(error)
    finally:
        stuck.gate.release.set()
        stop(server)


def test_prepare_sets_and_removes_max_time(
    any_transport: rpclib.Transport, unique_topic: str
) -> None:
    stuck = Stuck()
    server = serve(any_transport, [stuck], topic=unique_topic)
    client = rpclib.RPCClient(any_transport, rpclib.Target(topic=unique_topic), timeout=0.3)
    assert client.max_time is None
    assert client.prepare(max_time=2).max_time == 2.0
    assert client.prepare(max_time=2).prepare(max_time=None).max_time is None
    try:
        with pytest.raises(rpclib.MaxTimeExceeded, match="max_time=1s"):
            client.prepare(max_time=1).call({}, "deadlocked")
    finally:
        stuck.gate.release.set()
        stop(server)


def test_the_deadline_sent_to_the_server_is_bounded_by_max_time(
    any_transport: rpclib.Transport, unique_topic: str
) -> None:
    stuck = Stuck()
    server = serve(any_transport, [stuck], topic=unique_topic, executor_threads=1)
    target = rpclib.Target(topic=unique_topic)
    blocker = rpclib.RPCClient(any_transport, target, timeout=WAIT)
    client = rpclib.RPCClient(any_transport, target, timeout=WAIT, max_time=0.5)
    blocked = threading.Thread(target=lambda: blocker.call({}, "deadlocked"))
    blocked.start()
    try:
        assert stuck.gate.entered.wait(WAIT)  # the only worker is busy: "late" must queue
        with pytest.raises(rpclib.MaxTimeExceeded):
            client.call({}, "late")
        stuck.gate.release.set()
        # The inactivity timeout has not run out, but the caller has gone: the server drops it.
        wait_until(lambda: server.stats.expired == 1, what="the expired request to be dropped")
        assert stuck.ran == []
    finally:
        stuck.gate.release.set()
        blocked.join(WAIT)
        stop(server)


@pytest.mark.parametrize("bad", [0, -1.0, "10", True, float("nan")])
def test_bad_max_time_is_refused_naming_it(transport: rpclib.Transport, bad: Any) -> None:
    target = rpclib.Target(topic="svc")
    with pytest.raises(ValueError, match="max_time must be None"):
        rpclib.RPCClient(transport, target, max_time=bad)
    with pytest.raises(ValueError, match="max_time must be None"):
        rpclib.RPCClient(transport, target).prepare(max_time=bad)


def test_a_silent_server_still_ends_the_call_at_the_inactivity_timeout(
    any_transport: rpclib.Transport, unique_topic: str
) -> None:
    # A consumer that takes requests and never answers nor beats (a dead server process).
    silent = any_transport.driver.listen(
        Address(any_transport.default_exchange, unique_topic), lambda incoming: incoming.ack()
    )
    client = rpclib.RPCClient(
        any_transport, rpclib.Target(topic=unique_topic), timeout=0.5, max_time=WAIT
    )
    try:
        with pytest.raises(rpclib.ReplyTimeout) as caught:
            client.call({}, "anything")
        assert not isinstance(caught.value, rpclib.MaxTimeExceeded)
        assert not caught.value.progress_seen
    finally:
        silent.close()
