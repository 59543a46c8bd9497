"""Calls waiting on an inbox whose connection dropped get ConnectionLost, not a vague timeout."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import rpclib
from rpclib.transports.base import Inbox, InboxEventHandler, InboxHandler
from rpclib.transports.memory import MemoryDriver
from rpclib.transports.url import parse_url
from tests.rpc.helpers import WAIT, Gate, serve, stop


class FlakyConnectionDriver(MemoryDriver):
    """A memory bus whose test can report connection events to the inbox."""

    def open_inbox(self, handler: InboxHandler, on_event: InboxEventHandler | None = None) -> Inbox:
        self.inbox_events = on_event
        return super().open_inbox(handler, on_event)


@pytest.fixture
def flaky(bus_url: str) -> Any:
    transport = rpclib.Transport(FlakyConnectionDriver(parse_url(bus_url)))
    yield transport
    transport.close()


def call_in_background(client: rpclib.RPCClient) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(client.call({}, "wait"))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


class Waiting:
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def wait(self, ctx: dict[str, Any]) -> str:
        self.gate.pass_through()
        return "answered"


def test_lost_inbox_fails_waiting_calls_at_once(flaky: rpclib.Transport) -> None:
    gate = Gate()
    server = serve(flaky, [Waiting(gate)])
    thread, outcome = call_in_background(
        rpclib.RPCClient(flaky, rpclib.Target(topic="svc"), timeout=WAIT * 3)
    )
    try:
        assert gate.entered.wait(WAIT)
        flaky.driver.inbox_events("lost")  # type: ignore[attr-defined]
        thread.join(WAIT)  # well before the 30 s timeout
        assert not thread.is_alive()
        assert isinstance(outcome[0], rpclib.ConnectionLost)
    finally:
        gate.release.set()
        stop(server)


def test_disconnected_at_the_deadline_is_connection_lost(flaky: rpclib.Transport) -> None:
    gate = Gate()
    server = serve(flaky, [Waiting(gate)])
    server._heartbeats.stop()  # a dead connection carries no progress either
    thread, outcome = call_in_background(
        rpclib.RPCClient(flaky, rpclib.Target(topic="svc"), timeout=0.5)
    )
    try:
        assert gate.entered.wait(WAIT)
        flaky.driver.inbox_events("disconnected")  # type: ignore[attr-defined]
        thread.join(WAIT)
        assert isinstance(outcome[0], rpclib.ConnectionLost)
        assert "connection was down" in str(outcome[0])
    finally:
        gate.release.set()
        stop(server)


def test_reconnected_inbox_still_delivers_the_reply(flaky: rpclib.Transport) -> None:
    gate = Gate()
    server = serve(flaky, [Waiting(gate)])
    thread, outcome = call_in_background(
        rpclib.RPCClient(flaky, rpclib.Target(topic="svc"), timeout=WAIT)
    )
    try:
        assert gate.entered.wait(WAIT)
        flaky.driver.inbox_events("disconnected")  # type: ignore[attr-defined]
        flaky.driver.inbox_events("reconnected")  # type: ignore[attr-defined]
        gate.release.set()
        thread.join(WAIT)
        assert outcome == ["answered"]
    finally:
        gate.release.set()
        stop(server)
