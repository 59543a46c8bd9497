"""A node flooding a server on RabbitMQ harms only itself: calls work, storage stays bounded.

On the shared broker, in the session's vhost, with a broker account per
principal. Senders are established by signatures (rabbit:// does not vouch
for them by itself yet), so the rogue floods two ways, as a compromised node
could: unsigned garbage straight into the server's queues through its own
broker account, and well-signed casts its policy forbids.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rpclib
from rpclib.transports.base import Address, Guarantee
from rpclib.transports.rabbit import naming
from rpclib.transports.rabbit.declarations import DEAD_LETTER_MAX_LENGTH
from tests.rpc.helpers import wait_until
from tests.support.rabbit import BROKER, rabbitmqctl

PRINCIPALS = ("conductor", "scheduler", "compute-1")
GARBAGE = 20_000
"""At-most-once garbage in the big flood: more than the dead-letter queue keeps."""
FORBIDDEN = 500
CALL_TIMEOUT = 10.0


class Echo:
    target = rpclib.Target(namespace="svc", version="1.0")

    def echo(self, ctx: dict[str, Any], value: int) -> int:
        return value


POLICY = rpclib.Policy([rpclib.Allow("scheduler", namespace="svc", methods=["echo"])])


@pytest.fixture
def accounts(rabbit_vhost: str) -> Iterator[dict[str, str]]:
    """principal -> a rabbit:// URL of a broker user of its own on the session vhost."""
    suffix = f"{os.getpid()}-{time.time_ns() % 10**9}"
    users = {p: f"flood-{p}-{suffix}" for p in PRINCIPALS}
    for user in users.values():
        rabbitmqctl("add_user", user, "secret")
        rabbitmqctl("set_permissions", "-p", rabbit_vhost, user, ".*", ".*", ".*")
    yield {p: f"rabbit://{u}:secret@{BROKER}/{rabbit_vhost}" for p, u in users.items()}
    for user in users.values():
        rabbitmqctl("delete_user", user)


@pytest.fixture
def login(accounts: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., rpclib.Transport]]:
    """``login(principal, signed=True)``: a transport on that principal's broker account."""
    import rpclib.signing as signing  # the `signing` extra: missing, it fails here, loudly

    trust_dir = tmp_path / "trust"
    trust_dir.mkdir()
    store = signing.TrustStore(directory=trust_dir)
    keys = {p: signing.SigningKey.generate(p) for p in PRINCIPALS}
    for key in keys.values():
        store.write(key)
    opened: list[rpclib.Transport] = []

    def make(principal: str, signed: bool = True) -> rpclib.Transport:
        seal = signing.Signing(keys[principal], signing.TrustStore(directory=trust_dir))
        transport = rpclib.get_transport(accounts[principal], signing=seal if signed else None)
        opened.append(transport)
        return transport

    yield make
    for transport in opened:
        transport.close()


def dead_letter_queue(vhost: str) -> dict[str, str]:
    """The bounded dead-letter queue's messages, persistent messages and arguments."""
    out = rabbitmqctl(
        "list_queues", "-p", vhost, "-q", "--no-table-headers",
        "name", "messages", "messages_persistent", "arguments",
    )  # fmt: skip
    for line in out.splitlines():
        name, messages, persistent, arguments = line.split("\t")
        if name == naming.DEAD_LETTER_QUEUE:
            return {"messages": messages, "persistent": persistent, "arguments": arguments}
    raise AssertionError(f"no {naming.DEAD_LETTER_QUEUE} in vhost {vhost}: {out}")


def serve(transport: rpclib.Transport) -> rpclib.RPCServer:
    server = rpclib.RPCServer(
        transport, rpclib.Target(topic="svc", server="s1"), [Echo()], policy=POLICY
    )
    server.start()
    return server


def send_garbage(rogue: rpclib.Transport, count: int, guarantee: Guarantee) -> None:
    """Garbage into the server's own queue and the topic's, not waiting for the broker."""
    queues = (Address("rpclib", "svc", server="s1"), Address("rpclib", "svc"))
    for i in range(count):
        body = b"\x93garbage %d" % i
        if guarantee is Guarantee.AT_LEAST_ONCE:
            rogue.driver.send_pipelined(queues[i % 2], body, on_outcome=lambda _e: None)
        else:
            rogue.driver.send(
                queues[i % 2], body, guarantee=guarantee, on_undeliverable=lambda _e: None
            )


def test_calls_keep_working_while_another_account_floods_the_server(
    login: Callable[..., rpclib.Transport],
) -> None:
    server_transport = login("conductor")
    server = serve(server_transport)
    caller = rpclib.RPCClient(
        login("scheduler"),
        rpclib.Target(topic="svc", namespace="svc", version="1.0"),
        timeout=CALL_TIMEOUT,
    )
    assert caller.call({}, "echo", value=-1) == -1
    rogue_raw, rogue = login("compute-1", signed=False), login("compute-1")
    forbidden = rpclib.RPCClient(rogue, rpclib.Target(topic="svc", namespace="svc", version="1.0"))
    flooding = threading.Event()
    flooding.set()
    answers: list[int] = []
    failures: list[BaseException] = []

    def keep_calling() -> None:
        while flooding.is_set():
            try:
                answers.append(caller.call({}, "echo", value=len(answers)))
            except Exception as exc:  # the assertion below names it
                failures.append(exc)

    calling = threading.Thread(target=keep_calling)
    calling.start()
    try:
        # Counted from the flood's first message: a server that drains the flood
        # faster than one call round trip leaves no answer after the last one.
        before = len(answers)
        send_garbage(rogue_raw, GARBAGE, Guarantee.AT_MOST_ONCE)
        send_garbage(rogue_raw, FORBIDDEN, Guarantee.AT_LEAST_ONCE)
        for i in range(FORBIDDEN):
            forbidden.cast({}, "echo", value=i)
            forbidden.prepare(at_least_once=True).cast({}, "echo", value=i)
        wait_until(
            lambda: (
                server_transport.driver.refused == GARBAGE + FORBIDDEN  # type: ignore[attr-defined]
                and server.stats.forbidden == 2 * FORBIDDEN
            ),
            what="every bad message handled",
            timeout=120,
        )
        during = len(answers) - before
    finally:
        flooding.clear()
        calling.join()
        server.stop()
        server.wait()
    assert failures == []
    assert during > 0, "no call was answered while the flood was being handled"
    assert answers == list(range(len(answers)))


def test_the_dead_letter_queue_is_bounded_and_keeps_at_most_once_garbage_transient(
    login: Callable[..., rpclib.Transport], rabbit_vhost: str
) -> None:
    server = serve(login("conductor"))
    rogue = login("compute-1", signed=False)
    try:
        send_garbage(rogue, 1, Guarantee.AT_LEAST_ONCE)  # makes the queue exist
        wait_until(lambda: dead_letter_queue(rabbit_vhost)["messages"] != "0", what="a letter")
        rabbitmqctl("purge_queue", "-p", rabbit_vhost, naming.DEAD_LETTER_QUEUE)
        before = dead_letter_queue(rabbit_vhost)
        assert f'"x-max-length",{DEAD_LETTER_MAX_LENGTH}' in before["arguments"], before
        assert '"x-overflow","drop-head"' in before["arguments"], before
        send_garbage(rogue, 300, Guarantee.AT_MOST_ONCE)
        send_garbage(rogue, 30, Guarantee.AT_LEAST_ONCE)
        wait_until(
            lambda: dead_letter_queue(rabbit_vhost)["messages"] == "330",
            what="330 dead letters",
        )
        assert dead_letter_queue(rabbit_vhost)["persistent"] == "30"
    finally:
        server.stop()
        server.wait()


def test_a_flood_larger_than_the_bound_leaves_at_most_the_bound(
    login: Callable[..., rpclib.Transport], rabbit_vhost: str
) -> None:
    server_transport = login("conductor")
    server = serve(server_transport)
    try:
        send_garbage(login("compute-1", signed=False), GARBAGE, Guarantee.AT_MOST_ONCE)
        wait_until(
            lambda: server_transport.driver.refused == GARBAGE,  # type: ignore[attr-defined]
            what="the flood handled",
            timeout=120,
        )
        # 20,000 copies went in; the queue holds the newest 10,000 (none is waited for).
        wait_until(
            lambda: int(dead_letter_queue(rabbit_vhost)["messages"]) == DEAD_LETTER_MAX_LENGTH,
            what=f"{DEAD_LETTER_MAX_LENGTH} dead letters",
        )
        time.sleep(1.0)
        assert int(dead_letter_queue(rabbit_vhost)["messages"]) == DEAD_LETTER_MAX_LENGTH
    finally:
        server.stop()
        server.wait()
