"""A send never outlives its message's deadline, even when etcd never answers.

The client reaches etcd through a TCP proxy that the test stalls: every
connection, open or new, is accepted and never answered (a member that hangs,
or one cut off from a dead leader). ``send_timeout`` is long (30 s), so only
the message's own deadline can end the send.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import rpclib
from rpclib.exceptions import MessagingTimeout
from rpclib.transports import load_driver
from rpclib.transports.base import Address, Guarantee
from rpclib.transports.etcd.client import SendTimedOut
from tests.etcd.counting import Counter
from tests.etcd.etcd_proxy import Proxy
from tests.support.etcd import EtcdServer

TIMEOUT = 1.0
SLACK = 3.0
"""How far past its deadline the error may come (a busy machine; unbounded, it took 10 s+)."""


class Pong:
    def ping(self, ctx: dict[str, Any]) -> str:
        return "pong"


@pytest.fixture
def proxy(etcd_server: EtcdServer) -> Iterator[Proxy]:
    p = Proxy(etcd_server.port)
    yield p
    p.thaw()  # so that closing what used it does not wait on it
    p.close()


def test_a_call_fails_with_send_timed_out_within_its_timeout_when_etcd_never_answers(
    etcd_server: EtcdServer, proxy: Proxy
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    topic = "deadline"
    with (
        rpclib.get_transport(etcd_server.url(prefix)) as server_side,
        rpclib.get_transport(f"etcd://{proxy.endpoint}/{prefix}?send_timeout=30") as client_side,
    ):
        server = rpclib.RPCServer(server_side, rpclib.Target(topic=topic, server="s"), [Pong()])
        server.start()
        try:
            client = rpclib.RPCClient(client_side, rpclib.Target(topic=topic), timeout=TIMEOUT)
            assert client.call({}, "ping") == "pong"  # routes known, connection open
            proxy.stall()
            started = time.monotonic()
            with pytest.raises(SendTimedOut) as caught:
                client.call({}, "ping")
            elapsed = time.monotonic() - started
            proxy.thaw()
        finally:
            server.stop()
            server.wait()
    assert isinstance(caught.value, MessagingTimeout)
    assert elapsed < TIMEOUT + SLACK, f"the call failed {elapsed:.1f}s after it began"


def test_an_at_least_once_send_gives_up_at_its_expiry_when_etcd_never_answers(
    etcd_server: EtcdServer, proxy: Proxy
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    address = Address("ex", "expiring")
    receiver = load_driver(etcd_server.url(prefix))
    sender = load_driver(f"etcd://{proxy.endpoint}/{prefix}?send_timeout=30")
    try:
        got = Counter()
        receiver.listen(address, got)
        sender.send(address, b"first", guarantee=Guarantee.AT_LEAST_ONCE)
        got.wait_for(1)
        proxy.stall()
        started = time.monotonic()
        with pytest.raises(SendTimedOut, match="before its deadline"):
            sender.send(
                address,
                b"second",
                guarantee=Guarantee.AT_LEAST_ONCE,
                expires_at=time.time() + TIMEOUT,
            )
        elapsed = time.monotonic() - started
        proxy.thaw()
    finally:
        sender.close()
        receiver.close()
    assert elapsed < TIMEOUT + SLACK, f"the send gave up {elapsed:.1f}s after it began"
