"""A server serves senders round robin and keeps each sender's order (rpclib.fairness)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import rpclib
from rpclib.executor import Admission, WorkerPool
from rpclib.fairness import FairQueue
from rpclib.transports.memory import add_account, reset_bus
from tests.rpc.helpers import serve, stop, wait_until


def test_keys_are_served_round_robin_each_in_its_own_order() -> None:
    queue: FairQueue[str] = FairQueue()
    for i in range(4):
        queue.push("rogue", f"r{i}")
    queue.push("caller", "c0")
    queue.push("caller", "c1")
    out = [queue.pop() for _ in range(6)]
    assert out == ["r0", "c0", "r1", "c1", "r2", "r3"]
    with pytest.raises(IndexError):
        queue.pop()


def test_a_pool_refuses_a_task_beyond_the_keys_limit_and_runs_the_rest() -> None:
    pool = WorkerPool(1, "test-fair")
    gate, ran = threading.Event(), []
    assert pool.submit(gate.wait)  # keeps the only worker busy
    wait_until(lambda: pool.waiting(None) == 0, what="the worker to take the first task")
    results = [pool.submit_within(lambda i=i: ran.append(i), "a", 2) for i in range(3)]
    assert results == [Admission.ACCEPTED, Admission.ACCEPTED, Admission.FULL]
    gate.set()
    assert pool.drain(10)
    assert ran == [0, 1]
    pool.shutdown()
    assert pool.submit_within(lambda: None, "a", 2) is Admission.CLOSED


class Ordered:
    target = rpclib.Target(namespace="svc", version="1.0")

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, int]] = []
        self.gate = threading.Event()
        self.holding = threading.Event()

    def hold(self, ctx: dict[str, Any]) -> None:
        self.holding.set()
        self.gate.wait(30)

    def note(self, ctx: dict[str, Any], value: int) -> None:
        request = rpclib.current_request()
        assert request is not None
        self.seen.append((request.sender, value))


@pytest.fixture
def bus() -> Iterator[str]:
    name = "fair-order"
    for user in ("server", "a", "b"):
        add_account(name, user, "pw")
    yield name
    reset_bus(name)


def test_a_server_runs_each_senders_casts_in_order_and_alternates_between_senders(
    bus: str,
) -> None:
    transports = {u: rpclib.get_transport(f"memory://{u}:pw@{bus}") for u in ("server", "a", "b")}
    endpoint = Ordered()
    server = serve(transports["server"], [endpoint], executor_threads=1, sender_limit=100)
    clients = {
        u: rpclib.RPCClient(transports[u], rpclib.Target(topic="svc", namespace="svc"))
        for u in ("a", "b")
    }
    try:
        clients["a"].cast({}, "hold")
        wait_until(endpoint.holding.is_set, what="the only worker held")
        for i in range(5):
            clients["a"].cast({}, "note", value=i)
        for i in range(3):
            clients["b"].cast({}, "note", value=i)
        wait_until(
            lambda: (server.waiting("a"), server.waiting("b")) == (5, 3),
            what="every cast waiting for the worker",
        )
        endpoint.gate.set()
        wait_until(lambda: len(endpoint.seen) == 8, what="every cast handled")
    finally:
        endpoint.gate.set()
        stop(server)
        for transport in transports.values():
            transport.close()
    assert [v for s, v in endpoint.seen if s == "a"] == [0, 1, 2, 3, 4]
    assert [v for s, v in endpoint.seen if s == "b"] == [0, 1, 2]
    # b's casts did not wait behind a's: they alternate while both have some.
    assert [s for s, _ in endpoint.seen] == ["a", "b", "a", "b", "a", "b", "a", "a"]
