"""Watches that never go quiet: etcd restarts, compaction, silent streams.

These tests restart, compact or cut off etcd, so they use the module's own
server (``private_etcd``) and, to cut or silence one client's connections
only, a TCP proxy in front of it.
"""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rpclib.transports import load_driver
from rpclib.transports.base import Address, Guarantee
from rpclib.transports.etcd import EtcdDriver
from tests.etcd.counting import Counter
from tests.etcd.etcd_proxy import Proxy
from tests.etcd.peers import Peer, read_records
from tests.support.etcd import EtcdServer

WAIT = 30.0
CASTS = 2000
RESTART_AFTER = 700


@pytest.fixture
def etcd(private_etcd: EtcdServer) -> EtcdServer:
    private_etcd.start()  # in case an earlier test left it stopped
    return private_etcd


@pytest.fixture
def proxy(etcd: EtcdServer) -> Iterator[Proxy]:
    p = Proxy(etcd.port)
    yield p
    p.close()


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Callable[..., Peer]]:
    started: list[Peer] = []

    def start(*args: str) -> Peer:
        started.append(p := Peer(*args, log=tmp_path / f"peer{len(started)}.err"))
        return p

    yield start
    for p in started:
        p.stop()


def test_casts_survive_an_etcd_restart_mid_stream(
    etcd: EtcdServer, tmp_path: Path, peers: Callable[..., Peer]
) -> None:
    url = etcd.url()
    topic = f"stream-{uuid.uuid4().hex[:8]}"
    record = tmp_path / "handled.txt"
    record.touch()
    server = peers("serve", url, topic, str(record))
    server.expect(lambda line: line == "ready", WAIT, "server start")
    client = peers("cast", url, topic, str(CASTS))
    client.expect(lambda line: line == f"sent {RESTART_AFTER}", 120, "casts before the restart")

    etcd.restart()

    assert len(read_records(record)) < CASTS, "the restart came after the stream had ended"
    client.expect(lambda line: line == "done", 120, "the rest of the casts")
    assert client.stop() == 0, str(client)
    deadline = time.monotonic() + 60
    while len(read_records(record)) < CASTS and time.monotonic() < deadline:
        time.sleep(0.2)
    seqs = sorted(seq for seq, _, _ in read_records(record))
    missing = sorted(set(range(CASTS)) - set(seqs))
    assert not missing, f"{len(missing)} casts never handled, first {missing[:10]}\n{server}"
    assert seqs == list(range(CASTS)), "a cast reached its handler twice"


def test_a_watch_resumes_after_compaction_with_every_message_once(
    etcd: EtcdServer, proxy: Proxy
) -> None:
    prefix = f"compact{uuid.uuid4().hex[:6]}"
    options = {"retry_backoff": "0.05", "retry_backoff_max": "0.2"}
    consumer = load_driver(f"etcd://{proxy.endpoint}/{prefix}?" + "&".join(
        f"{k}={v}" for k, v in options.items()
    ))  # fmt: skip
    sender = load_driver(etcd.url(prefix))
    address = Address("ex", "compacted")
    got = Counter(WAIT)
    try:
        sub = consumer.listen(address, got)
        bodies = [b"m%d" % i for i in range(300)]
        for body in bodies[:100]:
            sender.send(address, body, guarantee=Guarantee.AT_LEAST_ONCE)
        got.wait_for(100)
        proxy.block()  # the consumer is cut off: its watch stops at some revision
        for body in bodies[100:200]:
            sender.send(address, body, guarantee=Guarantee.AT_LEAST_ONCE)
        etcd.compact()  # ... which is now history etcd no longer has
        proxy.unblock()
        for body in bodies[200:]:
            sender.send(address, body, guarantee=Guarantee.AT_LEAST_ONCE)
        got.wait_for(300)
        assert got.seen == dict.fromkeys(bodies, 1)
        assert sub._watch is not None and sub._watch.resyncs >= 1  # type: ignore[attr-defined]
    finally:
        consumer.close()
        sender.close()


def test_a_silent_watch_stream_is_detected_and_reestablished(
    etcd: EtcdServer, proxy: Proxy
) -> None:
    prefix = f"silent{uuid.uuid4().hex[:6]}"
    query = "watch_idle=0.5&watch_timeout=1&request_timeout=1&retry_backoff=0.05"
    consumer = load_driver(f"etcd://{proxy.endpoint}/{prefix}?{query}")
    sender = load_driver(etcd.url(prefix))
    address = Address("ex", "silent")
    got = Counter(WAIT)
    try:
        sub = consumer.listen(address, got)
        sender.send(address, b"before", guarantee=Guarantee.AT_LEAST_ONCE)
        got.wait_for(1)
        proxy.freeze()  # every open connection goes silent, none is closed
        sender.send(address, b"after", guarantee=Guarantee.AT_LEAST_ONCE)
        got.wait_for(2)
        assert got.seen == {b"before": 1, b"after": 1}
        assert sub._watch is not None and sub._watch.reconnects >= 2  # type: ignore[attr-defined]
    finally:
        consumer.close()
        sender.close()


def test_inbox_hears_of_the_outage_and_of_the_return(etcd: EtcdServer, proxy: Proxy) -> None:
    prefix = f"inbox{uuid.uuid4().hex[:6]}"
    owner = load_driver(f"etcd://{proxy.endpoint}/{prefix}?retry_backoff=0.05")
    sender = load_driver(etcd.url(prefix))
    events: queue.Queue[str] = queue.Queue()
    replies: queue.Queue[bytes] = queue.Queue()
    try:
        inbox = owner.open_inbox(replies.put, events.put)
        proxy.block()
        assert events.get(timeout=WAIT) == "disconnected"
        sender.send_to_inbox(inbox.address, b"while away")  # kept in the inbox's box
        proxy.unblock()
        assert events.get(timeout=WAIT) == "reconnected"
        assert replies.get(timeout=WAIT) == b"while away"
    finally:
        owner.close()
        sender.close()


def test_driver_keeps_working_after_an_etcd_restart(etcd: EtcdServer) -> None:
    prefix = f"restart{uuid.uuid4().hex[:6]}"
    consumer, sender = (load_driver(etcd.url(prefix)) for _ in range(2))
    address = Address("ex", "again")
    got = Counter(WAIT)
    try:
        assert isinstance(consumer, EtcdDriver)
        consumer.listen(address, got)
        sender.send(address, b"one", guarantee=Guarantee.AT_MOST_ONCE)
        got.wait_for(1)
        etcd.restart()
        sender.send(address, b"two", guarantee=Guarantee.AT_MOST_ONCE)
        sender.send(address, b"three", guarantee=Guarantee.AT_LEAST_ONCE)
        got.wait_for(3)
        assert got.seen == {b"one": 1, b"two": 1, b"three": 1}
    finally:
        consumer.close()
        sender.close()


class _BlockingSink:
    """A watch sink that cuts etcd off right after the watch's first read."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.states: queue.Queue[str] = queue.Queue()

    def snapshot(self, kvs: object, revision: int) -> None:
        self.proxy.block()  # the first stream cannot be established

    def events(self, events: object) -> None:
        pass

    def connection(self, state: str) -> None:
        self.states.put(state)


def test_a_watch_cut_off_before_its_first_stream_reports_the_outage_and_the_return(
    etcd: EtcdServer, proxy: Proxy
) -> None:
    """Up from its first read: an outage before etcd created the watch is reported too."""
    driver = load_driver(f"etcd://{proxy.endpoint}/first{uuid.uuid4().hex[:6]}?retry_backoff=0.05")
    assert isinstance(driver, EtcdDriver)
    sink = _BlockingSink(proxy)
    watch = driver.make_watch(f"{driver.options.prefix}w/", sink, "first")
    try:
        watch.start()
        assert sink.states.get(timeout=WAIT) == "disconnected"
        proxy.unblock()
        assert sink.states.get(timeout=WAIT) == "reconnected"
    finally:
        watch.stop()
        driver.close()
