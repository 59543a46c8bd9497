"""Delivery guarantees: at-least-once casts survive crashes, faults and absences."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import rpclib
from tests.rpc.helpers import WAIT, Recorder, serve, stop, wait_until


class Flaky(Recorder):
    """Fails the first ``failures`` attempts of every message."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def update(self, ctx: dict[str, Any], seq: int) -> None:
        info = rpclib.current_request()
        assert info is not None
        if info.attempts <= self.failures:
            raise RuntimeError(f"transient failure on attempt {info.attempts}")
        self.record("update", seq=seq, attempts=info.attempts, id=info.message_id)


def reliable(transport: rpclib.Transport, **target: Any) -> rpclib.RPCClient:
    return rpclib.RPCClient(transport, rpclib.Target(topic="svc", **target), at_least_once=True)


def test_failed_at_least_once_cast_is_redelivered(transport: rpclib.Transport) -> None:
    endpoint = Flaky(failures=1)
    server = serve(transport, [endpoint])
    try:
        reliable(transport).cast({}, "update", seq=1)
        _, seen = endpoint.next()
        assert (seen["seq"], seen["attempts"]) == (1, 2)
    finally:
        stop(server)


def test_poison_cast_is_dead_lettered_with_its_reason_after_max_attempts(
    transport: rpclib.Transport,
) -> None:
    endpoint = Flaky(failures=100)
    server = serve(transport, [endpoint], max_attempts=3)
    try:
        reliable(transport).cast({}, "update", seq=1)
        wait_until(lambda: bool(transport.driver.dead_letters()), what="a dead letter")
        (letter,) = transport.driver.dead_letters()
        assert "RuntimeError: transient failure on attempt 3" in letter.reason
        assert "after 3 attempts" in letter.reason
        assert server.stats.requeued == 2
    finally:
        stop(server)


def test_poison_cast_does_not_block_the_queue(transport: rpclib.Transport) -> None:
    class Picky(Recorder):
        def update(self, ctx: dict[str, Any], seq: int) -> None:
            if seq == 0:
                raise RuntimeError("poison")
            self.record("update", seq=seq)

    endpoint = Picky()
    server = serve(transport, [endpoint], max_attempts=2, executor_threads=1)
    try:
        client = reliable(transport)
        for seq in range(5):
            client.cast({}, "update", seq=seq)
        assert sorted(endpoint.next()[1]["seq"] for _ in range(4)) == [1, 2, 3, 4]
    finally:
        stop(server)


def test_at_least_once_cast_waits_for_its_server_to_come_back(transport: rpclib.Transport) -> None:
    first = Recorder()
    server = serve(transport, [FlakyFree(first)], server="node1")
    stop(server)
    reliable(transport, server="node1").cast({}, "update", seq=7)
    again = Recorder()
    server = serve(transport, [FlakyFree(again)], server="node1")
    try:
        assert again.next() == ("update", {"seq": 7})
    finally:
        stop(server)


def test_at_most_once_cast_to_an_absent_server_is_undeliverable(
    transport: rpclib.Transport,
) -> None:
    server = serve(transport, [FlakyFree(Recorder())], server="node1")
    stop(server)
    client = rpclib.RPCClient(transport, rpclib.Target(topic="svc", server="node1"))
    with pytest.raises(rpclib.Undeliverable):
        client.cast({}, "update", seq=1)


class FlakyFree:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def update(self, ctx: dict[str, Any], seq: int) -> None:
        self.recorder.record("update", seq=seq)


def test_at_least_once_casts_survive_a_faulty_bus(bus_url: str) -> None:
    """drop + duplicate + reorder: every cast handled, duplicates recognisable by id."""
    faulty = rpclib.get_transport(f"{bus_url}?drop=0.1&duplicate=0.1&reorder=0.2&seed=11")
    handled: dict[int, set[str]] = {}
    lock = threading.Lock()

    class Sink:
        def update(self, ctx: dict[str, Any], seq: int) -> None:
            info = rpclib.current_request()
            assert info is not None
            with lock:
                handled.setdefault(seq, set()).add(info.message_id)

    server = serve(faulty, [Sink()])
    try:
        client = reliable(faulty)
        for seq in range(300):
            client.cast({}, "update", seq=seq)
        wait_until(lambda: len(handled) == 300, what="all 300 casts to be handled")
        assert all(len(ids) == 1 for ids in handled.values())  # a duplicate keeps its id
        counts = faulty.driver.fault_counts  # type: ignore[attr-defined]
        assert counts["dropped"] > 0 and counts["duplicated"] > 0 and counts["reordered"] > 0
    finally:
        stop(server)
        faulty.close()


def test_calls_survive_a_delaying_bus(bus_url: str) -> None:
    slow = rpclib.get_transport(f"{bus_url}?delay=0.02&faults=all&seed=3")
    server = serve(slow, [EchoEndpoint()])
    try:
        client = rpclib.RPCClient(slow, rpclib.Target(topic="svc"), timeout=WAIT)
        assert [client.call({}, "echo", value=i) for i in range(20)] == list(range(20))
        assert slow.driver.fault_counts["delayed"] > 0  # type: ignore[attr-defined]
    finally:
        stop(server)
        slow.close()


def test_lost_replies_end_in_reply_timeout_not_a_hang(bus_url: str) -> None:
    lossy = rpclib.get_transport(f"{bus_url}?drop=1.0&faults=replies&seed=1")
    server = serve(lossy, [EchoEndpoint()])
    try:
        client = rpclib.RPCClient(lossy, rpclib.Target(topic="svc"), timeout=0.3)
        with pytest.raises(rpclib.ReplyTimeout):
            client.call({}, "echo", value=1)
    finally:
        stop(server)
        lossy.close()


class EchoEndpoint:
    def echo(self, ctx: dict[str, Any], value: Any) -> Any:
        return value


def test_permanent_error_is_dead_lettered_at_once(transport: rpclib.Transport) -> None:
    class Strict:
        def update(self, ctx: dict[str, Any], seq: int) -> None:
            raise rpclib.PermanentError(f"sequence {seq} belongs to another host")

    server = serve(transport, [Strict()], max_attempts=5)
    try:
        reliable(transport).cast({}, "update", seq=3)
        wait_until(lambda: bool(transport.driver.dead_letters()), what="a dead letter")
        (letter,) = transport.driver.dead_letters()
        assert letter.attempts == 1
        assert "permanent error, not retried" in letter.reason
        assert server.stats.requeued == 0
    finally:
        stop(server)


def test_any_exception_marked_not_retryable_is_permanent(transport: rpclib.Transport) -> None:
    class Forged(ValueError):
        retryable = False

    class Strict:
        def update(self, ctx: dict[str, Any], seq: int) -> None:
            raise Forged("not yours")

    server = serve(transport, [Strict()], max_attempts=5)
    try:
        reliable(transport).cast({}, "update", seq=3)
        wait_until(lambda: bool(transport.driver.dead_letters()), what="a dead letter")
        assert transport.driver.dead_letters()[0].attempts == 1
    finally:
        stop(server)


def test_server_counters_are_exact_under_concurrent_updates() -> None:
    """Driver and worker threads bump the same counters: none may be lost."""
    from rpclib.server import ServerStats

    stats = ServerStats()

    def bump() -> None:
        for _ in range(20_000):
            stats.add("handled")

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.handled == 160_000
