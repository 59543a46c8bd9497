"""A flooding sender's backlog ahead of another caller's call delays that call by its share only.

A server's transport queue is FIFO: a rogue node's backlog sits ahead of
everyone else's requests. The server takes deliveries off the queue under
their authenticated sender and serves senders round robin, shedding what a
sender over its share sends that is malformed or forbidden at-most-once. So
a valid call queued behind 20,000 bad messages is answered before the server
has handled that backlog; a FIFO server answers it only after all of them.

Made deterministic: the server has one worker, which a first (allowed) call
keeps busy until the server has taken in the whole backlog and the call;
only then is it let go. ``memory://`` here; ``rabbit://`` in
test_flood_backlog_rabbit.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import rpclib
from rpclib.transports.base import Address, Guarantee
from tests.rpc.helpers import wait_until

BACKLOG = 20_000
SHARE = 4
"""The server's sender_limit: how many of one sender's messages wait before it is over its share."""
TOPIC = Address("rpclib", "svc")
POLICY = rpclib.Policy([rpclib.Allow("scheduler", namespace="svc", methods=["echo", "hold"])])


class Gated:
    """``hold`` keeps the server's only worker until ``gate`` opens."""

    target = rpclib.Target(namespace="svc", version="1.0")

    def __init__(self) -> None:
        self.holding = threading.Event()
        self.gate = threading.Event()

    def hold(self, ctx: dict[str, Any]) -> str:
        self.holding.set()
        self.gate.wait(60)
        return "held"

    def echo(self, ctx: dict[str, Any], value: int) -> int:
        return value


class Caller:
    """Calls from a thread of their own; their answers, by name."""

    def __init__(self, transport: rpclib.Transport) -> None:
        self.client = rpclib.RPCClient(
            transport, rpclib.Target(topic="svc", namespace="svc", version="1.0"), timeout=120
        )
        self.answers: dict[str, Any] = {}
        self.threads: list[threading.Thread] = []

    def start(self, name: str, method: str, **kwargs: Any) -> None:
        def run() -> None:
            try:
                self.answers[name] = self.client.call({}, method, **kwargs)
            except Exception as exc:  # the test's assertions name it
                self.answers[name] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(120)


def test_a_call_behind_another_senders_backlog_is_answered_before_that_backlog_is_handled(
    as_principal: Callable[[str], rpclib.Transport],
) -> None:
    server_transport = as_principal("conductor")
    rogue = as_principal("compute-1")
    caller = Caller(as_principal("scheduler"))
    endpoint = Gated()
    # The server is not consuming yet: a stand-in consumer of the topic takes the first
    # message (the caller's `hold`) and keeps it, so everything after it queues up.
    taken: list[Any] = []
    stand_in = server_transport.driver.listen(TOPIC, taken.append, prefetch=1)
    caller.start("hold", "hold")
    wait_until(lambda: len(taken) == 1, what="the stand-in to take the first call")
    for i in range(BACKLOG):
        rogue.driver.send(TOPIC, b"\x93garbage %d" % i, guarantee=Guarantee.AT_MOST_ONCE)
    caller.start("echo", "echo", value=7)
    ready = server_transport.driver.stats  # type: ignore[attr-defined]
    wait_until(lambda: ready()["ready"] == BACKLOG + 1, what="the backlog and the call queued")
    stand_in.close()  # `hold` goes back to the head of the queue
    server = rpclib.RPCServer(
        server_transport,
        rpclib.Target(topic="svc", server="s1"),
        [endpoint],
        policy=POLICY,
        executor_threads=1,
        sender_limit=SHARE,
    )
    server.start()
    try:
        wait_until(endpoint.holding.is_set, what="the first call to hold the worker")
        # Every message taken in: all but the rogue's share were looked at on arrival.
        wait_until(
            lambda: ready()["ready"] == 0 and server.stats.malformed >= BACKLOG - SHARE,
            what="the backlog taken in",
            timeout=60,
        )
        endpoint.gate.set()
        wait_until(lambda: "echo" in caller.answers, what="the answer", timeout=60)
        handled_in_full = server.stats.malformed - server.stats.shed
    finally:
        endpoint.gate.set()
        caller.join()
        server.stop()
        server.wait()
    assert caller.answers == {"hold": "held", "echo": 7}
    # At most the rogue's share (and the one it was serving) went before the call.
    assert handled_in_full <= SHARE + 1, handled_in_full
    assert server.stats.shed >= BACKLOG - SHARE - 1
