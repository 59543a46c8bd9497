"""Field types: what each accepts, what it stores, and how it rejects the rest."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from rpclib.exceptions import FieldTypeError
from rpclib.objects import Registry, VersionedObject
from rpclib.objects import fields as f

UTC = dt.UTC
U = uuid.UUID("12345678-1234-5678-1234-567812345678")


class Color(enum.Enum):
    RED = "red"


class IntLike(enum.IntEnum):
    ONE = 1


class StrLike(str):
    pass


ACCEPTS: list[tuple[f.Field, Any, Any]] = [
    (f.String(), "x", "x"),
    (f.String(), "", ""),
    (f.Integer(), 5, 5),
    (f.Integer(), -(2**70), -(2**70)),
    (f.Float(), 1.5, 1.5),
    (f.Float(), 3, 3.0),
    (f.Boolean(), True, True),
    (f.Boolean(), False, False),
    (f.Bytes(), b"\x00\xff", b"\x00\xff"),
    (f.DateTime(), dt.datetime(2024, 1, 1, tzinfo=UTC), dt.datetime(2024, 1, 1, tzinfo=UTC)),
    (
        f.DateTime(),
        dt.datetime(2024, 1, 1, tzinfo=ZoneInfo("Europe/Paris")),
        dt.datetime(2024, 1, 1, tzinfo=ZoneInfo("Europe/Paris")),
    ),
    (f.UUID(), U, U),
    (f.UUID(), str(U), U),
    (f.UUID(), U.hex, U),
    (f.Enum(["a", "b"]), "b", "b"),
    (f.Enum([1, 2]), 2, 2),
    (f.List(f.Integer()), [1, 2], [1, 2]),
    (f.List(f.Integer()), (1, 2), [1, 2]),
    (f.List(f.Float()), [1, 2.5], [1.0, 2.5]),
    (f.List(f.UUID()), [str(U)], [U]),
    (f.List(f.String(nullable=True)), ["a", None], ["a", None]),
    (f.Dict(f.Integer()), {"a": 1}, {"a": 1}),
    (f.Dict(f.UUID()), {"a": str(U)}, {"a": U}),
    (f.Dict(f.List(f.String())), {"a": ["x"]}, {"a": ["x"]}),
]


@pytest.mark.parametrize(("field", "value", "stored"), ACCEPTS, ids=lambda x: repr(x)[:40])
def test_field_accepts_and_normalises_valid_values(field: f.Field, value: Any, stored: Any) -> None:
    result = field.coerce(value)
    assert result == stored
    assert type(result) is type(stored)


REJECTS: list[tuple[f.Field, Any]] = [
    (f.String(), b"x"),
    (f.String(), 1),
    (f.String(), StrLike("x")),
    (f.String(), None),
    (f.Integer(), True),
    (f.Integer(), 1.0),
    (f.Integer(), "1"),
    (f.Integer(), IntLike.ONE),
    (f.Float(), True),
    (f.Float(), "1.5"),
    (f.Float(), Decimal("1.5")),
    (f.Float(), 2**2000),
    (f.Boolean(), 1),
    (f.Boolean(), "true"),
    (f.Bytes(), "x"),
    (f.Bytes(), bytearray(b"x")),
    (f.DateTime(), dt.date(2024, 1, 1)),
    (f.DateTime(), "2024-01-01T00:00:00+00:00"),
    (f.DateTime(), 0),
    (f.UUID(), "not-a-uuid"),
    (f.UUID(), U.bytes),
    (f.UUID(), 5),
    (f.Enum(["a", "b"]), "c"),
    (f.Enum(["a", "b"]), Color.RED),
    (f.Enum([1]), True),
    (f.Enum([1]), 1.0),
    (f.Enum(["a"]), ["a"]),
    (f.List(f.Integer()), {1, 2}),
    (f.List(f.Integer()), "12"),
    (f.Dict(f.Integer()), [("a", 1)]),
    (f.Dict(f.Integer()), {1: 1}),
    (f.Object("Thing"), object()),
    (f.Object("Thing"), {"name": "x"}),
]


@pytest.mark.parametrize(("field", "value"), REJECTS, ids=lambda x: repr(x)[:40])
def test_field_rejects_wrong_types(field: f.Field, value: Any) -> None:
    with pytest.raises(FieldTypeError):
        field.validate(value, "Obj", "attr")


def test_error_names_object_field_expected_and_got() -> None:
    with pytest.raises(FieldTypeError) as info:
        f.Integer().validate("12", "Flavor", "vcpus")
    assert info.value.obj_name == "Flavor"
    assert info.value.field == "vcpus"
    assert info.value.expected == "int"
    assert "Flavor.vcpus expects int, got str '12'" in str(info.value)


def test_list_element_error_names_the_index() -> None:
    with pytest.raises(FieldTypeError, match=r"Obj\.tags\[2\] expects str, got int 3"):
        f.List(f.String()).validate(["a", "b", 3], "Obj", "tags")


def test_nested_container_error_names_the_full_path() -> None:
    field = f.Dict(f.List(f.Integer()))
    with pytest.raises(FieldTypeError) as info:
        field.validate({"ok": [1], "bad": [1, "x"]}, "Obj", "m")
    assert info.value.field == "m['bad'][1]"


def test_dict_non_string_key_is_named() -> None:
    with pytest.raises(FieldTypeError, match=r"m\[1\] expects str key"):
        f.Dict(f.Integer()).validate({1: 1}, "Obj", "m")


def test_naive_datetime_error_says_to_attach_a_timezone() -> None:
    with pytest.raises(FieldTypeError, match="attach a timezone"):
        f.DateTime().validate(dt.datetime(2024, 1, 1), "Obj", "at")


def test_datetime_whose_tzinfo_gives_no_offset_counts_as_naive() -> None:
    class NoOffset(dt.tzinfo):
        def utcoffset(self, d: dt.datetime | None) -> None:
            return None

        def dst(self, d: dt.datetime | None) -> None:
            return None

        def tzname(self, d: dt.datetime | None) -> None:
            return None

    with pytest.raises(FieldTypeError, match="attach a timezone"):
        f.DateTime().validate(dt.datetime(2024, 1, 1, tzinfo=NoOffset()), "Obj", "at")


def test_enum_error_lists_the_valid_values() -> None:
    with pytest.raises(FieldTypeError, match=r"one of \['a', 'b'\]"):
        f.Enum(["a", "b"]).validate("z", "Obj", "state")


def test_none_is_rejected_unless_nullable() -> None:
    with pytest.raises(FieldTypeError, match="expects str, got NoneType"):
        f.String().validate(None, "Obj", "s")
    assert f.String(nullable=True).coerce(None) is None
    assert f.List(f.Integer(), nullable=True).coerce(None) is None


def test_nullable_expected_text_mentions_none() -> None:
    with pytest.raises(FieldTypeError, match="expects str or None"):
        f.String(nullable=True).validate(1, "Obj", "s")


def test_list_and_dict_store_new_containers() -> None:
    items = [1, 2]
    mapping = {"a": "b"}
    assert f.List(f.Integer()).coerce(items) is not items
    assert f.Dict(f.String()).coerce(mapping) is not mapping


def test_object_field_accepts_named_class_and_subclasses_only() -> None:
    registry = Registry()

    @registry.register
    class Thing(VersionedObject):
        fields = {"n": f.Integer()}

    class SpecialThing(Thing):
        pass

    class Other(VersionedObject):
        fields = {"n": f.Integer()}

    field = f.Object("Thing")
    assert field.coerce(Thing(n=1)) == Thing(n=1)
    assert isinstance(field.coerce(SpecialThing(n=1)), SpecialThing)
    with pytest.raises(FieldTypeError, match="expects Thing object, got Other"):
        field.validate(Other(n=1), "Box", "thing")


def test_object_field_can_be_given_the_class() -> None:
    class Gadget(VersionedObject):
        fields = {}

    field = f.Object(Gadget)
    assert field.obj_name == "Gadget"
    assert field.describe() == "Object('Gadget')"


def test_object_field_resolves_name_lazily() -> None:
    field = f.Object("NotYetDefined")

    class NotYetDefined(VersionedObject):
        fields = {}

    value = NotYetDefined()
    assert field.coerce(value) is value


def test_invalid_default_is_rejected_when_the_field_is_declared() -> None:
    with pytest.raises(TypeError, match="invalid default for Integer"):
        f.Integer(default="0")
    with pytest.raises(TypeError, match="invalid default"):
        f.String(default=None)


def test_default_is_normalised_like_an_assignment() -> None:
    assert f.UUID(default=str(U)).default == U
    assert f.Float(default=1).default == 1.0


def test_mutable_default_is_copied_per_call() -> None:
    field = f.List(f.String(), default=["a"])
    first, second = field.make_default(), field.make_default()
    first.append("b")
    assert second == ["a"]
    assert field.default == ["a"]


def test_immutable_default_is_shared() -> None:
    field = f.String(default="x" * 50)
    assert field.make_default() is field.make_default()


def test_enum_needs_valid_values_of_str_or_int() -> None:
    with pytest.raises(ValueError, match="at least one"):
        f.Enum([])
    with pytest.raises(TypeError, match="str or int"):
        f.Enum([1.5])  # type: ignore[list-item]


def test_container_fields_need_field_instances() -> None:
    with pytest.raises(TypeError, match="List needs a Field"):
        f.List(f.String)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Dict needs a Field"):
        f.Dict(str)  # type: ignore[arg-type]


def test_since_must_be_a_version() -> None:
    with pytest.raises(ValueError, match="MAJOR.MINOR"):
        f.String(since="one")


@pytest.mark.parametrize(
    ("field", "text"),
    [
        (f.String(), "String()"),
        (f.Integer(nullable=True), "Integer(nullable=True)"),
        (f.Integer(default=0, since="1.1"), "Integer(default=0, since='1.1')"),
        (f.Enum(["a", "b"], default="a"), "Enum(['a', 'b'], default='a')"),
        (f.List(f.String(nullable=True)), "List(String(nullable=True))"),
        (f.Dict(f.Object("Flavor")), "Dict(Object('Flavor'))"),
        (f.DateTime(nullable=True, since="2.3"), "DateTime(nullable=True, since='2.3')"),
        (f.UUID(), "UUID()"),
        (f.Float(), "Float()"),
        (f.Boolean(), "Boolean()"),
        (f.Bytes(), "Bytes()"),
    ],
)
def test_describe_is_stable_text_covering_type_params_nullable_default_since(
    field: f.Field, text: str
) -> None:
    assert field.describe() == text


def test_describe_changes_with_every_parameter() -> None:
    variants = [
        f.String(),
        f.String(nullable=True),
        f.String(default="a"),
        f.String(since="1.1"),
        f.Integer(),
        f.List(f.String()),
        f.List(f.Integer()),
        f.Enum(["a"]),
        f.Enum(["a", "b"]),
    ]
    assert len({v.describe() for v in variants}) == len(variants)
