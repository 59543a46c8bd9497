"""Bad input gets a clear error or a dead letter, and the server keeps serving."""

from __future__ import annotations

import logging
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rpclib
from rpclib import envelope
from rpclib.envelope import Kind
from rpclib.transports.base import Address, Guarantee
from tests.rpc.helpers import WAIT, serve, stop, wait_until

TOPIC = Address("rpclib", "svc")


class Echo:
    def echo(self, ctx: dict[str, Any], value: Any) -> Any:
        return value


@pytest.fixture
def running(transport: rpclib.Transport) -> Any:
    server = serve(transport, [Echo()])
    yield server
    stop(server)


def send_raw(transport: rpclib.Transport, data: bytes, guarantee: Guarantee) -> None:
    transport.driver.send(TOPIC, data, guarantee=guarantee)


def still_serving(transport: rpclib.Transport) -> None:
    client = rpclib.RPCClient(transport, rpclib.Target(topic="svc"), timeout=WAIT)
    assert client.call({}, "echo", value="ok") == "ok"


def test_random_bytes_are_dead_lettered_naming_the_problem(
    transport: rpclib.Transport, running: rpclib.RPCServer
) -> None:
    send_raw(transport, b"\x93\x01\xff garbage", Guarantee.AT_LEAST_ONCE)
    wait_until(lambda: bool(transport.driver.dead_letters()), what="a dead letter")
    assert "malformed message" in transport.driver.dead_letters()[0].reason
    still_serving(transport)


def test_unknown_envelope_version_is_dead_lettered_naming_it(
    transport: rpclib.Transport, running: rpclib.RPCServer
) -> None:
    send_raw(transport, msgpack.packb([7, 2, b"i" * 16, {}, None]), Guarantee.AT_LEAST_ONCE)
    wait_until(lambda: bool(transport.driver.dead_letters()), what="a dead letter")
    assert "envelope version 7" in transport.driver.dead_letters()[0].reason
    still_serving(transport)


def test_cast_missing_fields_is_dead_lettered(
    transport: rpclib.Transport, running: rpclib.RPCServer
) -> None:
    data = msgpack.packb([1, int(Kind.CAST), b"i" * 16, {"m": "echo"}, {}])
    send_raw(transport, data, Guarantee.AT_LEAST_ONCE)
    wait_until(lambda: bool(transport.driver.dead_letters()), what="a dead letter")
    assert "lacks header field(s) v, ctx" in transport.driver.dead_letters()[0].reason
    still_serving(transport)


def test_cast_with_arguments_that_are_not_a_map_is_dead_lettered(
    transport: rpclib.Transport, running: rpclib.RPCServer
) -> None:
    header = {envelope.METHOD: "echo", envelope.VERSION: "1.0", envelope.CONTEXT: {}}
    data = msgpack.packb([1, int(Kind.CAST), b"i" * 16, header, [1, 2]])
    send_raw(transport, data, Guarantee.AT_LEAST_ONCE)
    wait_until(lambda: bool(transport.driver.dead_letters()), what="a dead letter")
    assert "arguments must be a map" in transport.driver.dead_letters()[0].reason
    still_serving(transport)


def test_wrong_argument_type_is_reported_to_the_caller(transport: rpclib.Transport) -> None:
    class Typed:
        def resize(self, ctx: dict[str, Any], vcpus: int) -> int:
            return vcpus

    server = serve(transport, [Typed()])
    try:
        client = rpclib.RPCClient(transport, rpclib.Target(topic="svc"), timeout=WAIT)
        with pytest.raises(rpclib.InvalidArguments, match="'vcpus' expects int, got str"):
            client.call({}, "resize", vcpus="4")
        assert client.call({}, "resize", vcpus=4) == 4
    finally:
        stop(server)


def test_oversized_request_is_refused_before_sending(transport: rpclib.Transport) -> None:
    small = rpclib.get_transport(str(transport.url.raw), max_message_size=10_000)
    client = rpclib.RPCClient(small, rpclib.Target(topic="svc"), timeout=WAIT)
    with pytest.raises(rpclib.MessageTooLarge, match="exceeds the limit of 10000"):
        client.cast({}, "echo", value="x" * 20_000)
    small.close()


def test_oversized_message_arriving_is_dead_lettered(make_transport: Any) -> None:
    import rpclib as r

    server_transport = r.get_transport(make_transport().url.raw, max_message_size=10_000)
    server = serve(server_transport, [Echo()])
    try:
        sender = make_transport()
        rpclib.RPCClient(sender, rpclib.Target(topic="svc"), at_least_once=True).cast(
            {}, "echo", value="x" * 20_000
        )
        wait_until(lambda: bool(sender.driver.dead_letters()), what="a dead letter")
        assert "exceeds the limit" in sender.driver.dead_letters()[0].reason
        still_serving(server_transport)
    finally:
        stop(server)
        server_transport.close()


plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)
headers = st.fixed_dictionaries(
    {},
    optional={
        envelope.METHOD: st.one_of(st.sampled_from(["echo", "_private", "nope"]), plain),
        envelope.VERSION: st.one_of(st.sampled_from(["1.0", "1.9", "2.0", "x"]), plain),
        envelope.CONTEXT: st.one_of(st.dictionaries(st.text(max_size=5), plain), plain),
        envelope.NAMESPACE: plain,
        envelope.DEADLINE: st.one_of(st.floats(), plain),
        envelope.AT_LEAST_ONCE: st.booleans(),
    },
)
envelopes = st.one_of(
    st.binary(max_size=64),
    plain.map(lambda v: msgpack.packb(v)),
    st.tuples(
        st.sampled_from([1, 1, 1, 2, 0]),
        st.sampled_from([int(k) for k in Kind] + [0, 99]),
        st.one_of(st.just(b"m" * 16), st.binary(max_size=20)),
        headers,
        plain,
    ).map(lambda t: msgpack.packb(list(t))),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=envelopes)
def test_random_envelopes_never_stop_the_server(
    transport: rpclib.Transport, running: rpclib.RPCServer, data: bytes
) -> None:
    send_raw(transport, data, Guarantee.AT_LEAST_ONCE)
    still_serving(transport)


def test_handler_crash_loops_never_happen_on_bad_input(
    transport: rpclib.Transport, running: rpclib.RPCServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Every bad message is settled by rpclib, so the driver never sees a crashing handler."""
    with caplog.at_level(logging.ERROR):
        for data in (b"", b"\xc1", msgpack.packb([1, 1, b"x" * 16, {"m": 1}, None])):
            send_raw(transport, data, Guarantee.AT_LEAST_ONCE)
        wait_until(lambda: len(transport.driver.dead_letters()) == 3, what="3 dead letters")
    crashes = [r for r in caplog.records if r.name.startswith("rpclib.transports") and r.exc_info]
    assert crashes == []
    still_serving(transport)
