"""At DEBUG, rpclib writes one line per call, cast and handled message, saying what happened.

Each line names the method, its version, the target, the latency, the
outcome and the ``request_id`` the caller put in ``ctx``; with DEBUG off,
nothing is written (and nothing measured: see bench/bench_rpc.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest

import rpclib
from tests.rpc.helpers import WAIT, serve, stop, wait_until
from tests.rpc.on_transports import any_transport, any_url, unique_topic

__all__ = ["any_transport", "any_url", "unique_topic"]

CTX = {"request_id": "req-1234", "user": "alice"}
MS = r"[0-9.]+ ms"


class Api:
    target = rpclib.Target(version="1.3")

    def echo(self, ctx: dict[str, Any], value: Any) -> Any:
        return value

    def boom(self, ctx: dict[str, Any]) -> None:
        raise ValueError("no such flavor")


@pytest.fixture
def client(any_transport: rpclib.Transport, unique_topic: str) -> Iterator[rpclib.RPCClient]:
    server = serve(any_transport, [Api()], topic=unique_topic, server="node1")
    yield rpclib.RPCClient(
        any_transport, rpclib.Target(topic=unique_topic, version="1.2"), timeout=WAIT
    )
    stop(server)


def lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


@pytest.fixture
def debug(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="rpclib.client")
    caplog.set_level(logging.DEBUG, logger="rpclib.server")
    return caplog


def test_a_call_writes_one_line_on_each_side(
    client: rpclib.RPCClient, debug: pytest.LogCaptureFixture
) -> None:
    topic = client.target.topic
    assert client.call(CTX, "echo", value=1) == 1

    [sent] = lines(debug, "rpclib.client")
    assert re.fullmatch(
        rf"call echo v1\.2 to rpclib/{topic}: ok in {MS} \(request_id=req-1234\)", sent
    ), sent
    [handled] = lines(debug, "rpclib.server")
    assert re.fullmatch(
        rf"handled call echo v1\.2 on rpclib/{topic}\.node1: ok in {MS} \(request_id=req-1234\)",
        handled,
    ), handled


def test_a_failed_call_names_the_error_on_each_side(
    client: rpclib.RPCClient, debug: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError):
        client.call(CTX, "boom")

    [sent] = lines(debug, "rpclib.client")
    assert re.fullmatch(
        rf"call boom v1\.2 to \S+: ValueError: no such flavor in {MS} \(request_id=req-1234\)",
        sent,
    ), sent
    [handled] = [line for line in lines(debug, "rpclib.server") if line.startswith("handled")]
    assert "handled call boom v1.2" in handled and "ValueError: no such flavor" in handled


def test_a_cast_writes_one_line_on_each_side(
    client: rpclib.RPCClient, debug: pytest.LogCaptureFixture
) -> None:
    client.prepare(server="node1").cast({"request_id": "req-cast"}, "echo", value=2)

    [sent] = lines(debug, "rpclib.client")
    assert re.fullmatch(
        rf"cast echo v1\.2 to rpclib/\S+\.node1: ok in {MS} \(request_id=req-cast\)", sent
    ), sent
    wait_until(lambda: bool(lines(debug, "rpclib.server")), what="the server's line")
    [handled] = lines(debug, "rpclib.server")
    assert handled.startswith("handled cast echo v1.2") and "(request_id=req-cast)" in handled


def test_a_call_refused_before_sending_is_logged_with_its_reason(
    client: rpclib.RPCClient, debug: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(rpclib.VersionCapError):
        client.prepare(version_cap="1.0").call(CTX, "echo", value=1)

    [sent] = lines(debug, "rpclib.client")
    assert sent.startswith("call echo v1.2 to ") and "VersionCapError" in sent


def test_nothing_is_written_when_debug_is_off(
    client: rpclib.RPCClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rpclib")
    client.call(CTX, "echo", value=1)
    assert not [r for r in caplog.records if r.levelno < logging.INFO]
