"""call / cast / fanout over memory://: what gets where, and what errors say."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

import rpclib
from tests.rpc.helpers import WAIT, Gate, Recorder, serve, stop, wait_until


class Compute(Recorder):
    target = rpclib.Target(version="1.3")

    def __init__(self, name: str = "host1") -> None:
        super().__init__()
        self.name = name

    def echo(self, ctx: dict[str, Any], value: Any) -> Any:
        return value

    def whoami(self, ctx: dict[str, Any]) -> str:
        return self.name

    def note(self, ctx: dict[str, Any], text: str) -> None:
        self.record("note", text=text, ctx=ctx, server=self.name)

    def fail(self, ctx: dict[str, Any], kind: str) -> None:
        if kind == "value":
            raise ValueError("bad value 42")
        raise CustomError("custom failure")


class CustomError(Exception):
    pass


@pytest.fixture
def client(transport: rpclib.Transport) -> rpclib.RPCClient:
    return rpclib.RPCClient(transport, rpclib.Target(topic="svc"), timeout=WAIT)


def test_call_returns_the_handlers_result(
    transport: rpclib.Transport, client: rpclib.RPCClient
) -> None:
    server = serve(transport, [Compute()])
    try:
        assert client.call({}, "echo", value={"a": [1, 2.5, None, "x", b"\x00"]}) == {
            "a": [1, 2.5, None, "x", b"\x00"]
        }
    finally:
        stop(server)


def test_ctx_travels_with_the_message(
    transport: rpclib.Transport, client: rpclib.RPCClient
) -> None:
    endpoint = Compute()
    server = serve(transport, [endpoint])
    try:
        client.cast({"request_id": "req-1", "roles": ["admin"]}, "note", text="hi")
        _, seen = endpoint.next()
        assert seen["ctx"] == {"request_id": "req-1", "roles": ["admin"]}
    finally:
        stop(server)


def test_ctx_with_rich_values_is_refused_before_sending(client: rpclib.RPCClient) -> None:
    with pytest.raises(rpclib.SerializationError, match=r"ctx\['when'\] is datetime"):
        from datetime import datetime

        client.cast({"when": datetime.now()}, "note", text="x")


def test_cast_to_topic_reaches_exactly_one_of_competing_servers(
    transport: rpclib.Transport, client: rpclib.RPCClient
) -> None:
    a, b = Compute("a"), Compute("b")
    servers = [serve(transport, [a], server="a"), serve(transport, [b], server="b")]
    try:
        for i in range(20):
            client.cast({}, "note", text=str(i))
        got: list[str] = []
        wait_until(lambda: a.seen.qsize() + b.seen.qsize() >= 20, what="20 casts")
        for r in (a, b):
            while not r.seen.empty():
                got.append(r.next()[1]["text"])
        assert sorted(got, key=int) == [str(i) for i in range(20)]
    finally:
        stop(*servers)


def test_server_directed_message_reaches_only_that_server(
    transport: rpclib.Transport, client: rpclib.RPCClient
) -> None:
    servers = [
        serve(transport, [Compute("a")], server="a"),
        serve(transport, [Compute("b")], server="b"),
    ]
    try:
        assert {client.prepare(server="b").call({}, "whoami") for _ in range(10)} == {"b"}
    finally:
        stop(*servers)


def test_fanout_reaches_every_server_once(
    transport: rpclib.Transport, client: rpclib.RPCClient
) -> None:
    endpoints = [Compute(n) for n in ("a", "b", "c")]
    servers = [serve(transport, [e], server=e.name) for e in endpoints]
    try:
        client.prepare(fanout=True).cast({}, "note", text="all")
        for e in endpoints:
            assert e.next()[1]["text"] == "all"
            e.assert_nothing()
    finally:
        stop(*servers)


def test_call_with_no_server_fails_at_once_as_undeliverable(client: rpclib.RPCClient) -> None:
    with pytest.raises(rpclib.Undeliverable, match="svc"):
        client.call({}, "echo", value=1)


def test_call_to_unknown_server_is_undeliverable(
    transport: rpclib.Transport, client: rpclib.RPCClient
) -> None:
    server = serve(transport, [Compute()])
    try:
        with pytest.raises(rpclib.Undeliverable, match="svc.nosuchhost"):
            client.prepare(server="nosuchhost").call({}, "echo", value=1)
    finally:
        stop(server)


def test_unknown_method_raises_no_such_method(
    transport: rpclib.Transport, client: rpclib.RPCClient
) -> None:
    server = serve(transport, [Compute()])
    try:
        with pytest.raises(rpclib.NoSuchMethod, match="'reboot'"):
            client.call({}, "reboot")
        assert client.call({}, "echo", value="still serving") == "still serving"
    finally:
        stop(server)


def test_private_method_is_not_callable_remotely(
    transport: rpclib.Transport, client: rpclib.RPCClient
) -> None:
    server = serve(transport, [Compute()])
    try:
        with pytest.raises(rpclib.NoSuchMethod):
            client.call({}, "__init__")
    finally:
        stop(server)


def test_bad_arguments_are_reported_to_the_caller(
    transport: rpclib.Transport, client: rpclib.RPCClient
) -> None:
    server = serve(transport, [Compute()])
    try:
        with pytest.raises(rpclib.InvalidArguments, match="missing required argument.*value"):
            client.call({}, "echo")
    finally:
        stop(server)


def test_builtin_exception_is_re_raised_as_itself_with_remote_traceback(
    transport: rpclib.Transport, client: rpclib.RPCClient
) -> None:
    server = serve(transport, [Compute()])
    try:
        with pytest.raises(ValueError, match="bad value 42") as info:
            client.call({}, "fail", kind="value")
        assert "in fail" in info.value.remote_traceback  # type: ignore[attr-defined]
    finally:
        stop(server)


def test_exception_from_a_module_not_allowed_is_a_remote_error(
    transport: rpclib.Transport, client: rpclib.RPCClient
) -> None:
    server = serve(transport, [Compute()])
    try:
        with pytest.raises(rpclib.RemoteError) as info:
            client.call({}, "fail", kind="custom")
        assert info.value.exc_type == f"{__name__}.CustomError"
        assert info.value.value == "custom failure"
        assert "raise CustomError" in info.value.traceback
    finally:
        stop(server)


def test_exception_from_an_allowed_module_is_re_raised_as_its_class(
    transport: rpclib.Transport,
) -> None:
    client = rpclib.RPCClient(
        transport, rpclib.Target(topic="svc"), timeout=WAIT, allowed_remote_exmods=[__name__]
    )
    server = serve(transport, [Compute()])
    try:
        with pytest.raises(CustomError, match="custom failure"):
            client.call({}, "fail", kind="custom")
    finally:
        stop(server)


def test_server_dying_mid_call_gives_reply_timeout(make_transport: Any) -> None:
    gate = Gate()

    class Stuck:
        def wait(self, ctx: dict[str, Any]) -> None:
            gate.pass_through()

    server_transport = make_transport()
    server = serve(server_transport, [Stuck()])
    client = rpclib.RPCClient(make_transport(), rpclib.Target(topic="svc"), timeout=0.5)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            client.call({}, "wait")
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    try:
        assert gate.entered.wait(WAIT)
        server_transport.close()  # the server process is gone: no reply, no heartbeats
        caller.join(WAIT)
        assert len(outcome) == 1 and isinstance(outcome[0], rpclib.ReplyTimeout)
        assert "'wait'" in str(outcome[0]) and "within 0.5s" in str(outcome[0])
    finally:
        gate.release.set()
        server.stop()
        server.wait(WAIT)


def test_progress_heartbeats_keep_a_short_timeout_call_alive(transport: rpclib.Transport) -> None:
    class Slow:
        def work(self, ctx: dict[str, Any], seconds: float) -> str:
            time.sleep(seconds)
            return "done"

    server = serve(transport, [Slow()])
    try:
        client = rpclib.RPCClient(transport, rpclib.Target(topic="svc"), timeout=0.2)
        assert client.call({}, "work", seconds=1.0) == "done"
    finally:
        stop(server)


def test_server_drops_requests_whose_deadline_passed(
    transport: rpclib.Transport, caplog: pytest.LogCaptureFixture
) -> None:
    gate = Gate()
    ran: list[str] = []

    class One:
        def block(self, ctx: dict[str, Any]) -> None:
            gate.pass_through()

        def late(self, ctx: dict[str, Any]) -> None:
            ran.append("late")

    server = serve(transport, [One()], executor_threads=1)
    client = rpclib.RPCClient(transport, rpclib.Target(topic="svc"), timeout=0.2)
    try:
        client.prepare(timeout=WAIT).cast({}, "block")
        assert gate.entered.wait(WAIT)
        with (
            caplog.at_level(logging.WARNING, logger="rpclib.server"),
            pytest.raises(rpclib.ReplyTimeout),
        ):
            client.call({}, "late")
        gate.release.set()
        wait_until(lambda: server.stats.expired == 1, what="the expired request to be dropped")
        assert ran == []
        assert "deadline passed" in caplog.text
    finally:
        gate.release.set()
        stop(server)


def test_calls_from_many_threads_each_get_their_own_reply(
    transport: rpclib.Transport, client: rpclib.RPCClient
) -> None:
    server = serve(transport, [Compute()], executor_threads=4)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(25):
                assert client.call({}, "echo", value=(n, i)) == (n, i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 3)
    stop(server)
    assert errors == []


def test_server_requires_topic_and_server_name(transport: rpclib.Transport) -> None:
    with pytest.raises(ValueError, match="topic and a server name"):
        rpclib.RPCServer(transport, rpclib.Target(topic="svc"), [Compute()])


def test_stop_lets_in_flight_calls_finish(transport: rpclib.Transport) -> None:
    gate = Gate()

    class Busy:
        def work(self, ctx: dict[str, Any]) -> str:
            gate.pass_through()
            return "finished"

    server = serve(transport, [Busy()])
    client = rpclib.RPCClient(transport, rpclib.Target(topic="svc"), timeout=WAIT)
    result: list[str] = []
    caller = threading.Thread(target=lambda: result.append(client.call({}, "work")))
    caller.start()
    assert gate.entered.wait(WAIT)
    server.stop()
    gate.release.set()
    assert server.wait(WAIT)
    caller.join(WAIT)
    assert result == ["finished"]
