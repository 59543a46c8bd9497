"""rpclib.testing: what a service author gets to test their own code without a broker."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import rpclib
from rpclib.testing import StubServer, TestBus, call_endpoint, handled


class Greeter:
    target = rpclib.Target(namespace="greeter", version="1.2")

    def __init__(self) -> None:
        self.casts: list[str] = []

    def greet(self, ctx: dict[str, Any], name: str) -> str:
        return f"hello {name} from {ctx.get('user', '?')}"

    def whoami(self, ctx: dict[str, Any]) -> str | None:
        request = rpclib.current_request()
        return request.sender if request else None

    def remember(self, ctx: dict[str, Any], name: str) -> None:
        self.casts.append(name)

    def explode(self, ctx: dict[str, Any]) -> None:
        raise ValueError("boom")


GREETER = rpclib.Target(topic="greeter", namespace="greeter", version="1.0")


# --- call_endpoint -------------------------------------------------------------------


def test_call_endpoint_returns_what_a_remote_caller_would_get() -> None:
    assert call_endpoint(Greeter(), "greet", {"user": "ann"}, name="bob") == "hello bob from ann"


def test_call_endpoint_checks_arguments_as_the_server_does() -> None:
    with pytest.raises(rpclib.InvalidArguments, match="unexpected argument"):
        call_endpoint(Greeter(), "greet", name="bob", colour="red")


def test_call_endpoint_serializes_arguments_as_a_bus_would() -> None:
    with pytest.raises(rpclib.SerializationError):
        call_endpoint(Greeter(), "greet", name=object())


def test_call_endpoint_asks_for_the_version_given() -> None:
    with pytest.raises(rpclib.UnsupportedVersion):
        call_endpoint(Greeter(), "greet", version="1.3", name="bob")


def test_call_endpoint_reports_the_methods_exception_as_a_caller_sees_it() -> None:
    with pytest.raises(ValueError, match="boom"):  # built-in exceptions are re-created
        call_endpoint(Greeter(), "explode")


def test_call_endpoint_gives_the_handler_the_sender() -> None:
    assert call_endpoint(Greeter(), "whoami", sender="compute-7") == "compute-7"


def test_call_endpoint_applies_a_policy_to_the_sender() -> None:
    policy = rpclib.Policy([rpclib.Allow("scheduler", namespace="greeter", methods=["greet"])])
    assert call_endpoint(Greeter(), "greet", sender="scheduler", policy=policy, name="x")
    with pytest.raises(rpclib.Forbidden):
        call_endpoint(Greeter(), "greet", sender="compute-1", policy=policy, name="x")


# --- TestBus ----------------------------------------------------------------------


def test_a_test_bus_sees_nothing_sent_on_another() -> None:
    with TestBus() as mine, TestBus() as other:
        server = rpclib.RPCServer(other.transport(), GREETER(server="s1"), [Greeter()])
        with server:
            client = rpclib.RPCClient(mine.transport(), GREETER, timeout=0.5)
            with pytest.raises(rpclib.MessagingError):
                client.call({}, "greet", name="bob")


def test_a_test_bus_logs_transports_in_as_principals() -> None:
    with TestBus() as bus:
        server = rpclib.RPCServer(
            bus.transport(principal="conductor"), GREETER(server="s1"), [Greeter()]
        )
        with server:
            client = rpclib.RPCClient(bus.transport(principal="compute-3"), GREETER)
            assert client.call({}, "whoami") == "compute-3"


def test_a_test_bus_with_accounts_refuses_an_anonymous_transport() -> None:
    with TestBus() as bus:
        bus.transport(principal="conductor")
        with pytest.raises(ValueError, match="needs one too"):
            bus.transport()


def test_a_test_bus_injects_faults_into_a_transports_sends() -> None:
    with TestBus() as bus:
        greeter = Greeter()
        with rpclib.RPCServer(bus.transport(), GREETER(server="s1"), [greeter]) as server:
            lossy = rpclib.RPCClient(bus.transport(faults={"drop": 1.0, "seed": 1}), GREETER)
            with (
                pytest.raises(AssertionError, match="handled 0 of 1"),
                handled(server, timeout=0.5),
            ):
                lossy.cast({}, "remember", name="lost")
        assert greeter.casts == []


def test_a_test_bus_refuses_an_unknown_fault() -> None:
    with TestBus() as bus, pytest.raises(ValueError, match="unknown fault option"):
        bus.transport(faults={"explode": 1})


# --- handled ------------------------------------------------------------------------


def test_handled_waits_until_the_cast_has_run() -> None:
    with TestBus() as bus:
        greeter = Greeter()
        with rpclib.RPCServer(bus.transport(), GREETER(server="s1"), [greeter]) as server:
            client = rpclib.RPCClient(bus.transport(), GREETER)
            with handled(server, count=3):
                for name in ("a", "b", "c"):
                    client.cast({}, "remember", name=name)
            assert sorted(greeter.casts) == ["a", "b", "c"]


def test_handled_says_what_happened_instead() -> None:
    with (
        TestBus() as bus,
        rpclib.RPCServer(bus.transport(), GREETER(server="s1"), [Greeter()]) as server,
    ):
        client = rpclib.RPCClient(bus.transport(), GREETER)
        with pytest.raises(AssertionError, match="'failed': 1"), handled(server, timeout=2):
            client.cast({}, "explode")


# --- StubServer -------------------------------------------------------------------------


def test_a_stub_server_answers_and_records_each_call() -> None:
    with TestBus() as bus:
        target = rpclib.Target(topic="conductor", server="c1", namespace="conductor", version="1.3")
        answers = {"heartbeat": None, "get_host": lambda ctx, host: {"host": host}}
        with StubServer(bus.transport(principal="conductor"), target, answers) as stub:
            client = rpclib.RPCClient(
                bus.transport(principal="compute-2"),
                rpclib.Target(topic="conductor", namespace="conductor", version="1.1"),
            )
            assert client.call({"r": 1}, "get_host", host="h2") == {"host": "h2"}
            assert client.call({}, "heartbeat") is None
        first, second = stub.calls
        assert (first.method, first.ctx, first.kwargs) == ("get_host", {"r": 1}, {"host": "h2"})
        assert (first.version, first.sender) == ("1.1", "compute-2")
        assert stub.calls_to("heartbeat") == [second]


def test_a_stub_server_raises_an_exception_answer_for_the_caller() -> None:
    with TestBus() as bus:
        target = rpclib.Target(topic="t", server="s", namespace="n", version="1.0")
        with StubServer(bus.transport(), target, {"fail": KeyError("nope")}):
            client = rpclib.RPCClient(bus.transport(), rpclib.Target(topic="t", namespace="n"))
            with pytest.raises(KeyError, match="nope"):
                client.call({}, "fail")


def test_a_stub_server_refuses_a_private_method_name() -> None:
    with TestBus() as bus, pytest.raises(ValueError, match="public identifiers"):
        StubServer(bus.transport(), rpclib.Target(topic="t", server="s"), {"_secret": 1})


def test_a_stub_servers_calls_can_be_read_while_it_serves() -> None:
    with TestBus() as bus:
        release = threading.Event()
        target = rpclib.Target(topic="t", server="s", namespace="n", version="1.0")
        with StubServer(bus.transport(), target, {"slow": lambda ctx: release.wait(5)}) as stub:
            client = rpclib.RPCClient(bus.transport(), rpclib.Target(topic="t", namespace="n"))
            calling = threading.Thread(target=client.call, args=({}, "slow"))
            calling.start()
            try:
                from tests.rpc.helpers import wait_until

                wait_until(lambda: len(stub.calls_to("slow")) == 1, what="the call recorded")
            finally:
                release.set()
                calling.join()
