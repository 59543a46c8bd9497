"""On RabbitMQ, a call behind another account's backlog is answered before that backlog is handled.

The ``rabbit://`` twin of test_flood_backlog.py (read it first), on the shared
broker with a broker user per principal: senders are the broker-verified
``user_id``. The server is kept from consuming while the backlog and the call
queue up by holding its I/O thread in the handler of another subscription of
the same connection.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import rpclib
from rpclib.transports.base import Address, Guarantee
from rpclib.transports.rabbit import naming
from tests.rpc.helpers import wait_until
from tests.security.test_flood_backlog import BACKLOG, SHARE, TOPIC, Caller, Gated
from tests.support.rabbit import BROKER, list_queues, rabbitmqctl

PRINCIPALS = ("conductor", "scheduler", "compute-1")
POLICY = rpclib.Policy(
    [rpclib.Allow("backlog-scheduler-*", namespace="svc", methods=["echo", "hold"])]
)


@pytest.fixture
def login(rabbit_vhost: str) -> Iterator[dict[str, rpclib.Transport]]:
    """principal -> a transport on a broker user of its own in the session's vhost."""
    suffix = f"{os.getpid()}-{time.time_ns() % 10**9}"
    users = {p: f"backlog-{p}-{suffix}" for p in PRINCIPALS}
    for user in users.values():
        rabbitmqctl("add_user", user, "secret")
        rabbitmqctl("set_permissions", "-p", rabbit_vhost, user, ".*", ".*", ".*")
    transports = {
        p: rpclib.get_transport(f"rabbit://{u}:secret@{BROKER}/{rabbit_vhost}")
        for p, u in users.items()
    }
    yield transports
    for transport in transports.values():
        transport.close()
    for user in users.values():
        rabbitmqctl("delete_user", user)


def test_a_call_behind_another_accounts_backlog_is_answered_before_that_backlog_is_handled(
    login: dict[str, rpclib.Transport], rabbit_vhost: str
) -> None:
    server_transport, rogue = login["conductor"], login["compute-1"]
    caller = Caller(login["scheduler"])
    endpoint = Gated()
    server = rpclib.RPCServer(
        server_transport,
        rpclib.Target(topic="svc", server="s1"),
        [endpoint],
        policy=POLICY,
        executor_threads=1,
        sender_limit=SHARE,
    )
    server.start()
    plugged, unplug = threading.Event(), threading.Event()

    def hold_the_io_thread(incoming: Any) -> None:
        incoming.ack()
        plugged.set()
        unplug.wait(120)

    plug = Address("rpclib", "plug", server="s1")
    plug_subscription = server_transport.driver.listen(plug, hold_the_io_thread, prefetch=1)
    live_queue = naming.queue_name(TOPIC, live=True)

    def queued() -> int:
        return list_queues(rabbit_vhost).get(live_queue, 0)

    try:
        caller.start("hold", "hold")
        wait_until(endpoint.holding.is_set, what="the first call to hold the worker")
        rogue.driver.send(plug, b"plug", guarantee=Guarantee.AT_MOST_ONCE)
        wait_until(plugged.is_set, what="the server's I/O thread held")
        for i in range(BACKLOG):
            rogue.driver.send(
                TOPIC,
                b"\x93garbage %d" % i,
                guarantee=Guarantee.AT_MOST_ONCE,
                on_undeliverable=lambda _exc: None,
            )
        wait_until(lambda: queued() >= BACKLOG, what="the backlog queued", timeout=60)
        caller.start("echo", "echo", value=7)
        wait_until(lambda: queued() >= BACKLOG + 1, what="the call queued behind it")
        unplug.set()
        # Every message taken in: all but the rogue's share were looked at on arrival.
        wait_until(
            lambda: server.stats.malformed >= BACKLOG - SHARE,
            what="the backlog taken in",
            timeout=120,
        )
        endpoint.gate.set()
        wait_until(lambda: "echo" in caller.answers, what="the answer", timeout=60)
        handled_in_full = server.stats.malformed - server.stats.shed
    finally:
        unplug.set()
        endpoint.gate.set()
        caller.join()
        plug_subscription.close()
        server.stop()
        server.wait()
    assert caller.answers == {"hold": "held", "echo": 7}
    assert handled_in_full <= SHARE + 1, handled_in_full
    assert server.stats.shed >= BACKLOG - SHARE - 1
