"""A node flooding a server with garbage or forbidden requests fills neither its log nor its day."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

import rpclib
from rpclib.transports.base import Address, Guarantee
from tests.rpc.helpers import wait_until

FLOOD = 2000


class Echo:
    target = rpclib.Target(namespace="svc", version="1.0")

    def echo(self, ctx: dict[str, Any], value: int) -> int:
        return value


def test_a_flood_of_garbage_is_counted_exactly_and_logged_in_a_few_lines(
    as_principal: Callable[[str], rpclib.Transport], caplog: pytest.LogCaptureFixture
) -> None:
    policy = rpclib.Policy([rpclib.Allow("scheduler", namespace="svc", methods=["echo"])])
    server = rpclib.RPCServer(
        as_principal("conductor"), rpclib.Target(topic="svc", server="s1"), [Echo()], policy=policy
    )
    rogue = as_principal("compute-1")
    with caplog.at_level(logging.WARNING, "rpclib.server"):
        server.start()
        address = Address("rpclib", "svc", server="s1")
        for i in range(FLOOD):
            rogue.driver.send(address, b"\x93garbage%d" % i, guarantee=Guarantee.AT_MOST_ONCE)
        forbidden = rpclib.RPCClient(
            rogue, rpclib.Target(topic="svc", namespace="svc", version="1.0"), at_least_once=True
        )
        for i in range(FLOOD):
            forbidden.cast({}, "echo", value=i)
        wait_until(
            lambda: (server.stats.malformed, server.stats.forbidden) == (FLOOD, FLOOD),
            what="every bad message counted",
        )
        caller = rpclib.RPCClient(
            as_principal("scheduler"), rpclib.Target(topic="svc", namespace="svc"), timeout=10
        )
        assert caller.call({}, "echo", value=7) == 7
        server.stop()
        server.wait()
    records = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(records) <= 6, records
    held = sum(
        int(m.split(" more ")[0].rsplit(" ", 1)[-1].lstrip("(")) for m in records if " more " in m
    )
    # One line at once per kind (malformed, forbidden, and shed once the rogue is over its
    # share of the server's queue), every other bad message counted in a summary.
    at_once = [m for m in records if " more " not in m]
    assert held + len(at_once) == 2 * FLOOD, records
