"""The wire codec: exact round trips, clear refusals, and strict decoding."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections import OrderedDict
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import pytest

from rpclib.exceptions import (
    FieldTypeError,
    IncompatibleObjectVersion,
    MalformedMessage,
    MessageTooLarge,
    SerializationError,
    UnknownObject,
)
from rpclib.objects import Registry, VersionedObject
from rpclib.objects import fields as f
from rpclib.serializer import (
    EXT_DATE,
    EXT_DATETIME,
    EXT_DECIMAL,
    EXT_OBJECT,
    EXT_SET,
    EXT_TUPLE,
    EXT_UUID,
    Serializer,
)
from tests.objects.support import Release

U = uuid.UUID("12345678-1234-5678-1234-567812345678")
PARIS = ZoneInfo("Europe/Paris")


def same(a: Any, b: Any) -> bool:
    """Equal with identical types all the way down (1 != 1.0 != True, list != tuple)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, dt.datetime):
        return (
            a == b
            and a.replace(tzinfo=None) == b.replace(tzinfo=None)
            and a.utcoffset() == b.utcoffset()
            and a.fold == b.fold
            and getattr(a.tzinfo, "key", None) == getattr(b.tzinfo, "key", None)
            and (a.tzinfo is None) == (b.tzinfo is None)
        )
    if isinstance(a, float) and a != a:
        return bool(b != b)
    return bool(a == b)


def roundtrip(value: Any, serializer: Serializer | None = None) -> Any:
    s = serializer or Serializer(Registry())
    return s.loads(s.dumps(value))


# --- exact round trips -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        2**64 - 1,
        -(2**63),
        1.5,
        float("inf"),
        "",
        "héllo ☃",
        b"",
        b"\x00\xff",
        [],
        [1, [2, [3]]],
        {},
        {"a": {"b": [1, 2]}},
        {1: "int key", 2.5: "float key", None: "none key", (1, 2): "tuple key"},
        (),
        (1, "a", (2,)),
        [(1, 2), [3, 4]],
        {1, 2, 3},
        set(),
        frozenset({"a", "b"}),
        {frozenset({1}): "frozenset key"},
        dt.date(2024, 2, 29),
        U,
        Decimal("1.10"),
        Decimal("-0"),
        Decimal("1E+3"),
        Decimal("Infinity"),
        Decimal("-12345678901234567890.123456789"),
    ],
    ids=repr,
)
def test_plain_values_round_trip_exactly(value: Any) -> None:
    assert same(roundtrip(value), value)


def test_nan_round_trips() -> None:
    result = roundtrip([float("nan"), Decimal("NaN")])
    assert result[0] != result[0]
    assert result[1].is_nan()


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2024, 1, 2, 3, 4, 5, 678901),
        dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        dt.datetime(2024, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=-11))),
        dt.datetime(2024, 1, 2, tzinfo=dt.timezone(dt.timedelta(seconds=3661, microseconds=7))),
        dt.datetime(2000, 1, 1, tzinfo=dt.timezone(dt.timedelta(microseconds=1))),
        dt.datetime(2000, 1, 1, 0, 0, 0, 5, tzinfo=dt.timezone(-dt.timedelta(seconds=1))),
        dt.datetime(2024, 7, 1, 12, tzinfo=PARIS),
        dt.datetime(2024, 1, 1, 12, tzinfo=PARIS),
        dt.datetime(2024, 10, 27, 2, 30, tzinfo=PARIS),  # ambiguous, first
        dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=PARIS),  # ambiguous, second
        dt.datetime(2024, 3, 31, 2, 30, tzinfo=PARIS),  # in the spring-forward gap
        dt.datetime(1, 1, 1, tzinfo=dt.UTC),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
    ],
    ids=str,
)
def test_datetimes_round_trip_with_offset_zone_and_naivety(value: dt.datetime) -> None:
    result = roundtrip(value)
    assert same(result, value)


def test_zoneinfo_datetime_keeps_its_zone_object() -> None:
    result = roundtrip(dt.datetime(2024, 7, 1, 12, tzinfo=PARIS))
    assert result.tzinfo is PARIS


def test_named_fixed_offset_timezone_keeps_its_name() -> None:
    tz = dt.timezone(dt.timedelta(hours=1), "CET")
    result = roundtrip(dt.datetime(2024, 1, 1, tzinfo=tz))
    assert result.tzname() == "CET"
    assert result.utcoffset() == dt.timedelta(hours=1)


def test_utc_datetime_decodes_with_the_utc_singleton() -> None:
    assert roundtrip(dt.datetime(2024, 1, 1, tzinfo=dt.UTC)).tzinfo is dt.UTC


def test_unknown_zone_key_falls_back_to_the_exact_offset() -> None:
    payload = b"2024-07-01T12:00:00+02:00[Mars/Olympus_Mons]"
    result = Serializer(Registry()).loads(msgpack.packb(msgpack.ExtType(EXT_DATETIME, payload)))
    assert result == dt.datetime(2024, 7, 1, 10, tzinfo=dt.UTC)
    assert result.utcoffset() == dt.timedelta(hours=2)


def test_foreign_tzinfo_is_sent_as_its_fixed_offset() -> None:
    class Plus3(dt.tzinfo):
        def utcoffset(self, d: dt.datetime | None) -> dt.timedelta:
            return dt.timedelta(hours=3)

        def dst(self, d: dt.datetime | None) -> dt.timedelta:
            return dt.timedelta(0)

        def tzname(self, d: dt.datetime | None) -> str:
            return "+03"

    value = dt.datetime(2024, 1, 1, tzinfo=Plus3())
    result = roundtrip(value)
    assert result == value
    assert result.utcoffset() == dt.timedelta(hours=3)


def test_datetime_subclass_is_sent_as_a_datetime() -> None:
    class FakeDatetime(dt.datetime):
        pass

    value = FakeDatetime(2024, 1, 1, tzinfo=PARIS)
    result = roundtrip(value)
    assert type(result) is dt.datetime
    assert same(result, dt.datetime(2024, 1, 1, tzinfo=PARIS))


def test_versioned_objects_round_trip_with_nested_objects(old: Release) -> None:
    inst = old.Instance(
        uuid=U,
        hostname="vm",
        flavor=old.Flavor(name="m1", vcpus=1, memory_mb=64),
        tags=["a"],
        metadata={"k": "v"},
    )
    cell = old.Cell(name="c", hosts={"h": old.Host(name="h", instances=[inst])})
    result = roundtrip(cell, old.serializer())
    assert result == cell
    assert type(result.hosts["h"].instances[0].flavor) is old.Flavor


def test_objects_keep_their_changed_fields(old: Release) -> None:
    inst = old.Instance(uuid=U, hostname="vm", flavor=old.Flavor(name="m", vcpus=1, memory_mb=1))
    inst.obj_reset_changes(recursive=True)
    inst.hostname = "renamed"
    inst.flavor.vcpus = 4
    result = roundtrip(inst, old.serializer())
    assert result.obj_what_changed() == {"hostname", "flavor"}
    assert result.flavor.obj_what_changed() == {"vcpus"}


def test_unset_fields_stay_unset(old: Release) -> None:
    inst = old.Instance.__new__(old.Instance)
    inst.uuid = U
    result = roundtrip(inst, old.serializer())
    assert result.obj_values() == {"uuid": U}
    assert not result.obj_attr_is_set("hostname")


def test_private_attributes_are_not_sent(old: Release) -> None:
    inst = old.Instance(uuid=U, hostname="vm")
    inst._context = "secret"
    result = roundtrip(inst, old.serializer())
    assert result == inst
    assert not hasattr(result, "_context")


def test_objects_inside_plain_containers_round_trip(old: Release) -> None:
    flavor = old.Flavor(name="m", vcpus=1, memory_mb=1)
    value = {"list": [flavor], "tuple": (flavor,), "nested": {"deep": [[flavor]]}}
    assert roundtrip(value, old.serializer()) == value


def test_encoding_is_deterministic_for_the_same_object(old: Release) -> None:
    s = old.serializer()
    a = old.Instance(uuid=U, hostname="vm", tags=["x"])
    b = old.Instance(uuid=U, hostname="vm", tags=["x"])
    assert s.dumps(a) == s.dumps(b)


def test_memoryview_slices_decode() -> None:
    s = Serializer(Registry())
    data = b"\x00\x00" + s.dumps({"a": (1, U)})
    assert s.loads(memoryview(data)[2:]) == {"a": (1, U)}


def test_ext_type_codes_are_the_documented_ones() -> None:
    s = Serializer(Registry())
    assert msgpack.unpackb(s.dumps((1,))).code == EXT_TUPLE == 2
    assert msgpack.unpackb(s.dumps({1})).code == EXT_SET == 3
    assert msgpack.unpackb(s.dumps(dt.datetime(2024, 1, 1))).code == EXT_DATETIME == 5
    assert msgpack.unpackb(s.dumps(dt.date(2024, 1, 1))).code == EXT_DATE == 6
    assert msgpack.unpackb(s.dumps(U)) == msgpack.ExtType(EXT_UUID, U.bytes)
    assert msgpack.unpackb(s.dumps(Decimal("1.5"))) == msgpack.ExtType(EXT_DECIMAL, b"1.5")


def test_object_payload_is_name_version_fields_changes(old: Release) -> None:
    flavor = old.Flavor(name="m", vcpus=1, memory_mb=2)
    flavor.obj_reset_changes(["name", "memory_mb"])
    ext = msgpack.unpackb(old.serializer().dumps(flavor))
    assert ext.code == EXT_OBJECT == 1
    assert msgpack.unpackb(ext.data) == [
        "Flavor",
        "1.1",
        {"name": "m", "vcpus": 1, "memory_mb": 2, "swap": 0},
        ["vcpus", "swap"],  # in the order they were set
    ]


# --- refusing to encode ---------------------------------------------------------------------


class Color(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    LOW = 1


class Name(str):
    pass


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (object(), "object"),
        (Color.RED, "Color"),
        (Level.LOW, "Level"),
        (Name("x"), "Name"),
        (OrderedDict(a=1), "OrderedDict"),
        (dt.time(1, 2), "time"),
        (dt.timedelta(1), "timedelta"),
        (2**64, "int"),
        (-(2**63) - 1, "int"),
        (complex(1, 2), "complex"),
    ],
    ids=repr,
)
def test_unsupported_values_raise_serialization_error_naming_the_type(
    value: Any, type_name: str
) -> None:
    with pytest.raises(SerializationError, match=rf"cannot serialize {type_name}\b"):
        Serializer(Registry()).dumps(value)


def test_enum_member_error_says_to_send_its_value() -> None:
    with pytest.raises(SerializationError, match=r"send \.value or \.name"):
        Serializer(Registry()).dumps({"color": Color.RED})


def test_serialization_error_names_the_path() -> None:
    value = [1, {"body": {"args": [0, (1, Color.RED)]}}]
    with pytest.raises(SerializationError, match=r"at \[1\]\['body'\]\['args'\]\[1\]\[1\]"):
        Serializer(Registry()).dumps(value)


def test_serialization_error_path_goes_through_objects() -> None:
    class Box(VersionedObject):
        fields = {"items": f.List(f.Integer())}

    box = Box(items=[1, 2**70])
    with pytest.raises(SerializationError, match=r"int at \['box'\]\.items\[1\] \(int out of"):
        Serializer(Registry()).dumps({"box": box})


def test_reference_cycle_is_a_serialization_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError):
        Serializer(Registry()).dumps(loop)


def test_bad_manifest_version_is_a_serialization_error(old: Release) -> None:
    with pytest.raises(SerializationError, match="bad manifest entry for Flavor"):
        old.serializer().dumps(old.Flavor(name="m", vcpus=1, memory_mb=1), {"Flavor": "x"})


def test_serializer_is_reusable_after_an_encoding_error() -> None:
    s = Serializer(Registry())
    with pytest.raises(SerializationError):
        s.dumps([1, (2, object())])
    assert s.loads(s.dumps([1, (2, 3)])) == [1, (2, 3)]


# --- size limits -------------------------------------------------------------------------------


def test_dumps_refuses_messages_over_max_size() -> None:
    with pytest.raises(MessageTooLarge, match="exceeds the limit of 100 bytes") as info:
        Serializer(Registry(), max_size=100).dumps("x" * 200)
    assert info.value.limit == 100
    assert info.value.size > 200


def test_loads_refuses_input_over_max_size() -> None:
    data = Serializer(Registry()).dumps("x" * 200)
    with pytest.raises(MessageTooLarge):
        Serializer(Registry(), max_size=100).loads(data)
    with pytest.raises(MessageTooLarge):
        Serializer(Registry(), max_size=100).loads(memoryview(data))


def test_messages_within_max_size_pass() -> None:
    s = Serializer(Registry(), max_size=100)
    assert s.loads(s.dumps("x" * 50)) == "x" * 50


# --- strict decoding ----------------------------------------------------------------------------


def obj_ext(name: Any, version: Any, values: Any, changes: Any = ()) -> bytes:
    payload = msgpack.packb([name, version, values, list(changes)])
    return bytes(msgpack.packb(msgpack.ExtType(EXT_OBJECT, payload)))


def test_unknown_object_name_raises_unknown_object(old: Release) -> None:
    with pytest.raises(UnknownObject, match="'Spaceship'"):
        old.serializer().loads(obj_ext("Spaceship", "1.0", {}))


def test_wrong_field_type_on_the_wire_raises_field_type_error(old: Release) -> None:
    data = obj_ext("Flavor", "1.1", {"name": "m", "vcpus": "two", "memory_mb": 1})
    with pytest.raises(FieldTypeError, match=r"Flavor\.vcpus expects int, got str 'two'"):
        old.serializer().loads(data)


def test_wrong_element_type_inside_a_nested_object_names_the_path(old: Release) -> None:
    inner = msgpack.ExtType(EXT_UUID, U.bytes)
    data = obj_ext("Instance", "1.2", {"uuid": inner, "hostname": "h", "tags": ["a", 1]})
    with pytest.raises(FieldTypeError, match=r"Instance\.tags\[1\] expects str"):
        old.serializer().loads(data)


def test_wrong_nested_object_class_is_rejected(old: Release) -> None:
    host = msgpack.ExtType(EXT_OBJECT, msgpack.packb(["Host", "1.0", {"name": "h"}, []]))
    payload = msgpack.packb(["Instance", "1.2", {"flavor": host}, []])
    with pytest.raises(FieldTypeError, match=r"Instance\.flavor expects Flavor object"):
        old.serializer().loads(msgpack.packb(msgpack.ExtType(EXT_OBJECT, payload)))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (obj_ext("Flavor", "1.1", {"nope": 1}), "has no field 'nope'"),
        (obj_ext("Flavor", "1.1", {1: 1}), "has no field 1"),
        (obj_ext("Flavor", "1.1", {}, ["nope"]), "unknown fields"),
        (obj_ext("Flavor", "1.1", {}, [1]), "unknown fields"),
        (obj_ext("Flavor", "1.1", []), "wrong shape"),
        (obj_ext("Flavor", 1.1, {}), "wrong shape"),
        (obj_ext(7, "1.1", {}), "object name is int"),
        (obj_ext("Flavor", "one", {}), "MAJOR.MINOR"),
        (msgpack.packb(msgpack.ExtType(EXT_OBJECT, msgpack.packb(["Flavor", "1.1"]))), "payload"),
        (msgpack.packb(msgpack.ExtType(EXT_OBJECT, msgpack.packb("abcd"))), "payload"),
        (msgpack.packb(msgpack.ExtType(EXT_OBJECT, b"\xc1")), "malformed"),
        (msgpack.packb(msgpack.ExtType(99, b"")), "unknown extension type 99"),
        (msgpack.packb(msgpack.ExtType(EXT_UUID, b"short")), "malformed"),
        (msgpack.packb(msgpack.ExtType(EXT_DATETIME, b"yesterday")), "malformed"),
        (msgpack.packb(msgpack.ExtType(EXT_DATETIME, b"\xff")), "malformed"),
        (msgpack.packb(msgpack.ExtType(EXT_DATETIME, b"2024-01-01T00:00[Europe/Paris]")), "bad"),
        (msgpack.packb(msgpack.ExtType(EXT_DATE, b"2024-13-01")), "malformed"),
        (msgpack.packb(msgpack.ExtType(EXT_DECIMAL, b"one")), "malformed"),
        (msgpack.packb(msgpack.ExtType(EXT_TUPLE, msgpack.packb({"a": 1}))), "not an array"),
        (msgpack.packb(msgpack.ExtType(EXT_SET, msgpack.packb([[1]]))), "unhashable"),
        (msgpack.packb({(1,): 1})[:-1], "malformed"),
        (b"", "malformed"),
        (b"\xc1", "malformed"),
        (b"\x92\x01", "malformed"),
        (b"\x01\x02", "extra data"),
        (b"\xa2\xff\xfe", "malformed"),
    ],
)
def test_corrupt_input_raises_malformed_message_naming_the_problem(
    old: Release, data: bytes, problem: str
) -> None:
    with pytest.raises(MalformedMessage, match=problem):
        old.serializer().loads(data)


def test_truncated_messages_are_malformed(old: Release) -> None:
    s = old.serializer()
    data = s.dumps([old.Instance(uuid=U, hostname="vm", flavor=None), dt.datetime.now(PARIS)])
    for cut in range(len(data)):
        with pytest.raises(MalformedMessage):
            s.loads(data[:cut])


def test_non_bytes_input_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        Serializer(Registry()).loads("text")  # type: ignore[arg-type]


def test_different_major_version_is_incompatible(old: Release) -> None:
    with pytest.raises(IncompatibleObjectVersion, match="different major"):
        old.serializer().loads(obj_ext("Flavor", "2.0", {}))


def test_newer_minor_without_indirection_is_incompatible(old: Release) -> None:
    with pytest.raises(IncompatibleObjectVersion, match="no indirection service"):
        old.serializer().loads(obj_ext("Flavor", "1.2", {}))


def test_older_minor_decodes_with_later_fields_unset(new: Release) -> None:
    flavor = new.serializer().loads(obj_ext("Flavor", "1.0", {"name": "m", "vcpus": 1}))
    assert isinstance(flavor, new.Flavor)
    assert flavor.obj_values() == {"name": "m", "vcpus": 1}
    assert flavor.rxtx == 1.0  # reading falls back to the default


def test_decoded_object_is_an_instance_of_the_registered_class(old: Release) -> None:
    flavor = old.serializer().loads(obj_ext("Flavor", "1.1", {"name": "m"}, ["name"]))
    assert type(flavor) is old.Flavor
    assert flavor.obj_what_changed() == {"name"}
    flavor.vcpus = 3  # a decoded object is a normal, usable object
    assert flavor.obj_what_changed() == {"name", "vcpus"}


def test_float_field_accepts_ints_from_the_wire(new: Release) -> None:
    flavor = new.serializer().loads(obj_ext("Flavor", "1.2", {"rxtx": 2}))
    assert flavor.rxtx == 2.0
    assert type(flavor.rxtx) is float


def test_default_serializer_uses_the_default_registry() -> None:
    from rpclib.objects import default_registry

    assert Serializer().registry is default_registry
