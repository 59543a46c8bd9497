"""A server given a policy serves only what it allows, and says who was refused and why."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

import rpclib
from tests.rpc.helpers import wait_until
from tests.support.conductor_endpoint import RecordingConductor

ROLES = {"compute": ["compute-*"]}
POLICY = rpclib.Policy(
    [
        rpclib.Allow("role:compute", namespace="conductor", methods=["heartbeat"]),
        rpclib.Allow("scheduler", namespace="conductor", methods=["*"]),
    ],
    roles=ROLES,
)


@pytest.fixture
def conductor(as_principal: Callable[[str], rpclib.Transport]) -> Any:
    endpoint = RecordingConductor()
    server = rpclib.RPCServer(
        as_principal("conductor"),
        rpclib.Target(topic="conductor", server="c1"),
        [endpoint],
        policy=POLICY,
    )
    server.start()
    yield endpoint, server
    server.stop()
    server.wait()


def client(transport: rpclib.Transport, **kw: Any) -> rpclib.RPCClient:
    target = rpclib.Target(topic="conductor", namespace="conductor", version="1.0")
    return rpclib.RPCClient(transport, target, timeout=10, **kw)


def test_handlers_see_the_authenticated_sender(conductor: Any, as_principal: Any) -> None:
    assert client(as_principal("compute-1")).call({}, "heartbeat") == "compute-1"
    assert client(as_principal("scheduler")).call({}, "heartbeat") == "scheduler"


def test_a_call_the_policy_does_not_allow_raises_forbidden_and_never_runs(
    conductor: Any, as_principal: Any, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint, server = conductor
    with (
        caplog.at_level(logging.WARNING, "rpclib.server"),
        pytest.raises(rpclib.Forbidden) as refused,
    ):
        client(as_principal("compute-1")).call({}, "list_instances")
    assert (refused.value.principal, refused.value.method) == ("compute-1", "list_instances")
    assert refused.value.rule == "default deny: no rule allows it"
    assert endpoint.calls == []
    assert server.stats.forbidden == 1
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "'compute-1' may not call conductor.list_instances (default deny" in logged


def test_a_refused_sender_learns_nothing_of_the_api(conductor: Any, as_principal: Any) -> None:
    with pytest.raises(rpclib.Forbidden):
        client(as_principal("compute-1")).call({}, "no_such_method")
    with pytest.raises(rpclib.NoSuchMethod):
        client(as_principal("scheduler")).call({}, "no_such_method")


def test_a_refused_cast_is_dead_lettered_with_the_reason(conductor: Any, as_principal: Any) -> None:
    endpoint, _server = conductor
    client(as_principal("compute-2"), at_least_once=True).cast({}, "list_instances")
    driver = as_principal("cli").driver
    wait_until(lambda: len(driver.dead_letters()) == 1, what="the refused cast's dead letter")
    (dead,) = driver.dead_letters()
    assert "Forbidden: 'compute-2' may not call conductor.list_instances" in dead.reason
    assert endpoint.calls == []


def test_an_unauthenticated_sender_is_refused(bus_url: str) -> None:
    server = rpclib.RPCServer(
        rpclib.get_transport(bus_url),
        rpclib.Target(topic="conductor", server="c1"),
        [RecordingConductor()],
        policy=POLICY,
    )
    server.start()
    try:
        with pytest.raises(rpclib.Forbidden, match="an unauthenticated sender may not call"):
            client(rpclib.get_transport(bus_url)).call({}, "heartbeat")
    finally:
        server.stop()
        server.wait()


def test_without_a_policy_everything_is_served(as_principal: Any) -> None:
    endpoint = RecordingConductor()
    server = rpclib.RPCServer(
        as_principal("conductor"), rpclib.Target(topic="conductor", server="c1"), [endpoint]
    )
    server.start()
    try:
        assert client(as_principal("compute-1")).call({}, "list_instances")
    finally:
        server.stop()
        server.wait()


def test_a_flooding_sender_does_not_hide_another_senders_first_refusal(
    conductor: Any,
    as_principal: Callable[[str], rpclib.Transport],
    caplog: pytest.LogCaptureFixture,
) -> None:
    flooder = client(as_principal("compute-1"))
    with caplog.at_level(logging.WARNING, "rpclib.server"):
        for _ in range(20):
            with pytest.raises(rpclib.Forbidden):
                flooder.call({}, "list_instances")
        with pytest.raises(rpclib.Forbidden):
            client(as_principal("compute-2")).call({}, "list_instances")
    lines = [r.getMessage() for r in caplog.records]
    assert sum("'compute-1'" in line for line in lines) == 1  # the rest are counted
    assert any("'compute-2'" in line for line in lines)
