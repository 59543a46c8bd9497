"""What cannot be sent is refused on the sender's thread, naming it in the caller's terms.

A value the wire cannot carry is named by its argument and method (never by
its place in the envelope); an argument far over the size limit is refused
before the message is built, so refusing it costs no copies of it.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import rpclib
from tests.rpc.helpers import WAIT, serve, stop
from tests.rpc.on_transports import any_transport, any_url, unique_topic

__all__ = ["any_transport", "any_url", "unique_topic"]

LIMIT = 1 << 20
BLOB = 16 * LIMIT


class Thing:
    """Not something the wire carries."""


class Echo:
    def update_instance(self, ctx: dict[str, Any], name: Any = None) -> Any:
        return name

    def thing(self, ctx: dict[str, Any]) -> Any:
        return {"ok": [Thing()]}


@pytest.fixture
def served(any_transport: rpclib.Transport, unique_topic: str) -> Iterator[rpclib.RPCClient]:
    server = serve(any_transport, [Echo()], topic=unique_topic)
    yield rpclib.RPCClient(any_transport, rpclib.Target(topic=unique_topic), timeout=WAIT)
    stop(server)


# --- naming the value ----------------------------------------------------------------


def test_an_unserializable_argument_is_named_with_its_method(
    served: rpclib.RPCClient,
) -> None:
    topic = served.target.topic
    with pytest.raises(rpclib.SerializationError) as caught:
        served.call({}, "update_instance", name=Thing())
    assert str(caught.value).startswith(
        f"cannot serialize argument 'name' of {topic}.update_instance: Thing ("
    )
    assert "[4]" not in str(caught.value)


def test_a_value_deep_in_an_argument_is_located_within_it(served: rpclib.RPCClient) -> None:
    with pytest.raises(rpclib.SerializationError, match=r"argument 'name' of .*: Thing at \[1\]"):
        served.cast({}, "update_instance", name=[1, Thing()])


def test_an_unserializable_result_is_named_as_the_result(served: rpclib.RPCClient) -> None:
    with pytest.raises(rpclib.SerializationError, match=r"the result of thing: Thing at \['ok'\]"):
        served.call({}, "thing")


# --- refusing what is far too large ----------------------------------------------------


@pytest.fixture
def small_limit(any_url: str, unique_topic: str) -> Iterator[rpclib.RPCClient]:
    transport = rpclib.get_transport(any_url, max_message_size=LIMIT)
    server = serve(transport, [Echo()], topic=unique_topic)
    yield rpclib.RPCClient(transport, rpclib.Target(topic=unique_topic), timeout=WAIT)
    stop(server)
    transport.close()


def peak_while(action: Any) -> int:
    """Bytes allocated at the peak while ``action()`` ran (above what existed before)."""
    tracemalloc.start()
    try:
        action()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


BLOBS: dict[str, Callable[[], Any]] = {
    "bytes": lambda: b"x" * BLOB,
    "str": lambda: "x" * BLOB,
    "bytearray": lambda: bytearray(BLOB),
    "memoryview": lambda: memoryview(b"x" * BLOB),
    "long list": lambda: [0] * (4 * LIMIT),  # each item takes at least a byte
}


@pytest.mark.parametrize("make", BLOBS.values(), ids=BLOBS.keys())
@pytest.mark.parametrize("how", ["call", "cast"])
def test_a_far_too_large_argument_is_refused_before_the_message_is_built(
    small_limit: rpclib.RPCClient, make: Callable[[], Any], how: str
) -> None:
    blob = make()
    caught: list[rpclib.MessageTooLarge] = []

    def send() -> None:
        try:
            getattr(small_limit, how)({}, "update_instance", name=blob)
        except rpclib.MessageTooLarge as exc:
            caught.append(exc)

    peak = peak_while(send)

    [error] = caught
    assert error.limit == LIMIT and error.size > LIMIT
    assert f"argument 'name' of {small_limit.target.topic}.update_instance" in str(error)
    # Encoding it takes a packer buffer and a message at least the size of the limit.
    assert peak < LIMIT, f"refusing a {BLOB}-byte argument allocated {peak} bytes"


def test_arguments_whose_size_only_encoding_tells_are_still_refused(
    small_limit: rpclib.RPCClient,
) -> None:
    many_small = ["x" * 64] * (LIMIT // 32)  # few items, each small: only encoding tells
    with pytest.raises(rpclib.MessageTooLarge, match="exceeds the limit of"):
        small_limit.call({}, "update_instance", name=many_small)
    assert small_limit.call({}, "update_instance", name="still serving") == "still serving"
