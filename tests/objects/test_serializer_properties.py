"""Properties: random values round-trip exactly; random bytes only raise rpclib errors."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpclib.exceptions import MessagingError
from rpclib.objects import Registry
from rpclib.serializer import (
    EXT_DATE,
    EXT_DATETIME,
    EXT_DECIMAL,
    EXT_FROZENSET,
    EXT_OBJECT,
    EXT_SET,
    EXT_TUPLE,
    EXT_UUID,
    Serializer,
)
from tests.objects.support import make_release

CODES = [EXT_OBJECT, EXT_TUPLE, EXT_SET, EXT_FROZENSET, EXT_DATETIME, EXT_DATE, EXT_UUID]
CODES.append(EXT_DECIMAL)

fixed_offsets = st.timedeltas(
    min_value=-dt.timedelta(hours=23, minutes=59), max_value=dt.timedelta(hours=23, minutes=59)
).map(dt.timezone)
datetimes = st.datetimes(
    timezones=st.one_of(st.none(), st.just(dt.UTC), fixed_offsets, st.timezones())
)
hashable_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
    datetimes,
    st.dates(),
    st.uuids(),
    st.decimals(allow_nan=False),
)
values = st.recursive(
    hashable_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(st.one_of(st.text(), st.integers(-5, 5)), children, max_size=5),
        st.sets(hashable_leaves, max_size=5),
        st.frozensets(hashable_leaves, max_size=5),
    ),
    max_leaves=25,
)


def same(a: Any, b: Any) -> bool:
    """Equal with identical types, offsets and zones all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (set, frozenset)):
        return {(type(x), x) for x in a} == {(type(x), x) for x in b}
    if isinstance(a, dt.datetime):
        return (
            a.replace(tzinfo=None) == b.replace(tzinfo=None)
            and a.utcoffset() == b.utcoffset()
            and getattr(a.tzinfo, "key", None) == getattr(b.tzinfo, "key", None)
        )
    return bool(a == b)


PLAIN = Serializer(Registry())


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_random_nested_plain_values_round_trip_exactly(value: Any) -> None:
    assert same(PLAIN.loads(PLAIN.dumps(value)), value)


@settings(max_examples=300)
@given(datetimes)
def test_random_datetimes_keep_wall_time_offset_and_zone(value: dt.datetime) -> None:
    result = PLAIN.loads(PLAIN.dumps(value))
    assert same(result, value)
    assert result == value


# --- garbage never escapes as anything but an rpclib error ---------------------------------

RELEASE = make_release(new=False)
NEWER = make_release(new=True)


class GarbageAnswers:
    """An indirection service that answers with whatever it is given."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    def object_backport_versions(
        self, ctx: Mapping[str, Any], objinst: bytes, object_versions: dict[str, str]
    ) -> bytes:
        return self.answer


def loads_only_rpclib_errors(serializer: Serializer, data: bytes) -> None:
    with contextlib.suppress(MessagingError):
        serializer.loads(data)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_rpclib_errors(data: bytes) -> None:
    loads_only_rpclib_errors(RELEASE.serializer(), data)


ext_frames = st.builds(
    lambda code, payload: msgpack.packb(msgpack.ExtType(code, payload)),
    st.one_of(st.sampled_from(CODES), st.integers(0, 127)),
    st.one_of(st.binary(max_size=60), values.map(lambda v: PLAIN.dumps(v))),
)

wire_values = st.recursive(
    st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=5), st.binary(max_size=5)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=10,
)
object_frames = st.builds(
    lambda name, version, fields, changes: msgpack.packb(
        msgpack.ExtType(EXT_OBJECT, msgpack.packb([name, version, fields, changes]))
    ),
    st.sampled_from(["Flavor", "Instance", "Host", "Cell", "Nope", ""]),
    st.sampled_from(["1.0", "1.1", "1.2", "1.9", "2.0", "x", ""]),
    st.dictionaries(
        st.sampled_from(["name", "vcpus", "uuid", "hostname", "tags", "hosts", "x"]), wire_values
    ),
    st.lists(st.sampled_from(["name", "vcpus", "nope"]), max_size=3),
)


@settings(max_examples=500)
@given(st.one_of(ext_frames, object_frames))
def test_random_ext_and_object_frames_raise_only_rpclib_errors(data: bytes) -> None:
    loads_only_rpclib_errors(RELEASE.serializer(), data)
    loads_only_rpclib_errors(RELEASE.serializer(indirection=GarbageAnswers(data)), data)


def valid_message() -> bytes:
    flavor = NEWER.Flavor(name="m", vcpus=1, memory_mb=2, rxtx=1.5)
    inst = NEWER.Instance(
        uuid="12345678-1234-5678-1234-567812345678",
        hostname="vm",
        flavor=flavor,
        tags=["a"],
        metadata={"k": "v"},
        progress=3,
    )
    cell = NEWER.Cell(name="c", hosts={"h": NEWER.Host(name="h", instances=[inst])})
    return NEWER.serializer().dumps([1, "call", {"at": dt.datetime(2024, 1, 1)}, cell, (inst,)])


VALID = valid_message()


@settings(max_examples=500)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=4))
def test_corrupted_valid_messages_raise_only_rpclib_errors(edits: list[tuple[int, int]]) -> None:
    data = bytearray(VALID)
    for where, byte in edits:
        data[where] = byte
    loads_only_rpclib_errors(NEWER.serializer(), bytes(data))
    indirect = RELEASE.serializer(indirection=GarbageAnswers(bytes(data)))
    loads_only_rpclib_errors(indirect, bytes(data))
