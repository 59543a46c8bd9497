"""Field types of versioned objects.

A field knows which Python values it accepts and how to normalise them. Each
field precomputes one ``coerce`` callable when it is created; the object layer
calls it on every assignment and on every decoded value, so it is written for
speed (``type(v) is X`` checks in a closure, no isinstance chains).

``coerce`` raises :class:`InvalidFieldValue`, which knows what was expected but
not which object or attribute it was for; the object layer (which does know)
turns it into :class:`rpclib.exceptions.FieldTypeError`.
"""

from __future__ import annotations

import copy
import datetime as _dt
import decimal
import uuid
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Final, final

from rpclib.exceptions import FieldTypeError
from rpclib.versioning import Version, parse_version

__all__ = [
    "UNSET",
    "UUID",
    "Boolean",
    "Bytes",
    "DateTime",
    "Dict",
    "Enum",
    "Field",
    "Float",
    "Integer",
    "InvalidFieldValue",
    "List",
    "Object",
    "String",
]

Coerce = Callable[[Any], Any]


@final
class _Unset:
    """Type of :data:`UNSET`, the "no default" marker (distinct from ``None``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"

    def __reduce__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()

# Values of these types are never mutated in place, so a default of one of them
# can be shared by every instance instead of being copied.
_IMMUTABLE: Final = frozenset(
    {
        str,
        int,
        float,
        bool,
        bytes,
        type(None),
        frozenset,
        _dt.datetime,
        _dt.date,
        uuid.UUID,
        decimal.Decimal,
    }
)


class InvalidFieldValue(Exception):
    """A field rejected a value.

    ``path`` locates the bad element inside a container (``"[3]"``,
    ``"['key']"``) so the final error can say ``Obj.tags[3] expects str``.
    """

    def __init__(self, expected: str, got: object, path: str = "") -> None:
        super().__init__(expected, got, path)
        self.expected = expected
        self.got = got
        self.path = path


class Field:
    """Base class of field types.

    Subclasses set ``type_name`` and implement :meth:`_make_check` (the
    non-null check) and :meth:`_expected`; they may add type parameters to
    :meth:`_params` so that :meth:`describe` (used by fingerprints) covers them.
    """

    type_name: ClassVar[str] = "Field"
    #: When set, ``type(v) is exact_type`` alone proves ``v`` valid and unchanged
    #: by ``coerce``; the object decoder uses it to skip the call.
    exact_type: type | None = None
    #: True when values of this field can hold versioned objects (change tracking).
    holds_objects: bool = False

    def __init__(
        self, *, nullable: bool = False, default: Any = UNSET, since: str | None = None
    ) -> None:
        self.nullable = nullable
        self.since: Version | None = parse_version(since) if since is not None else None
        self.expected = self._expected() + (" or None" if nullable else "")
        self.coerce: Coerce = self._wrap_nullable(self._make_check())
        if nullable:
            self.exact_type = None
        if default is not UNSET:
            try:
                default = self.coerce(default)
            except InvalidFieldValue as exc:
                raise TypeError(
                    f"invalid default for {self.describe_type()}: expected {exc.expected}, "
                    f"got {type(exc.got).__name__} {exc.got!r:.80}"
                ) from None
        self.default = default
        self._share_default = type(default) in _IMMUTABLE

    # -- subclass hooks ---------------------------------------------------

    def _make_check(self) -> Coerce:
        raise NotImplementedError

    def _expected(self) -> str:
        raise NotImplementedError

    def _params(self) -> list[str]:
        return []

    # -- public API -------------------------------------------------------

    @property
    def has_default(self) -> bool:
        return self.default is not UNSET

    def make_default(self) -> Any:
        """A per-instance copy of the default (shared when it is immutable)."""
        if self._share_default:
            return self.default
        return copy.deepcopy(self.default)

    def validate(self, value: Any, obj_name: str = "value", field: str = "?") -> Any:
        """Coerce ``value`` or raise FieldTypeError naming ``obj_name.field``."""
        try:
            return self.coerce(value)
        except InvalidFieldValue as exc:
            raise FieldTypeError(obj_name, field + exc.path, exc.expected, exc.got) from None

    def describe_type(self) -> str:
        """The type and its parameters, without nullable/default/since."""
        return f"{self.type_name}({', '.join(self._params())})"

    def describe(self) -> str:
        """A stable one-line description (type, params, nullable, default, since)."""
        parts = self._params()
        if self.nullable:
            parts.append("nullable=True")
        if self.default is not UNSET:
            parts.append(f"default={self.default!r}")
        if self.since is not None:
            parts.append(f"since='{self.since}'")
        return f"{self.type_name}({', '.join(parts)})"

    def __repr__(self) -> str:
        return self.describe()

    # -- internals --------------------------------------------------------

    def _wrap_nullable(self, check: Coerce) -> Coerce:
        if not self.nullable:
            return check
        exact = self.exact_type
        if exact is not None:

            def coerce_nullable_exact(value: Any) -> Any:
                if value is None or type(value) is exact:
                    return value
                return check(value)

            return coerce_nullable_exact

        def coerce_nullable(value: Any) -> Any:
            if value is None:
                return None
            return check(value)

        return coerce_nullable


def _exact(type_: type, expected: str) -> Coerce:
    def check(value: Any) -> Any:
        if type(value) is type_:
            return value
        raise InvalidFieldValue(expected, value)

    return check


class String(Field):
    """A ``str`` (exactly; str subclasses such as StrEnum members are rejected)."""

    type_name = "String"
    exact_type = str

    def _expected(self) -> str:
        return "str"

    def _make_check(self) -> Coerce:
        return _exact(str, self.expected)


class Integer(Field):
    """An ``int``; ``bool`` is rejected."""

    type_name = "Integer"
    exact_type = int

    def _expected(self) -> str:
        return "int"

    def _make_check(self) -> Coerce:
        return _exact(int, self.expected)


class Boolean(Field):
    """A ``bool`` (not 0/1)."""

    type_name = "Boolean"
    exact_type = bool

    def _expected(self) -> str:
        return "bool"

    def _make_check(self) -> Coerce:
        return _exact(bool, self.expected)


class Bytes(Field):
    """A ``bytes`` value."""

    type_name = "Bytes"
    exact_type = bytes

    def _expected(self) -> str:
        return "bytes"

    def _make_check(self) -> Coerce:
        return _exact(bytes, self.expected)


class Float(Field):
    """A ``float``; an ``int`` is accepted and stored as float; ``bool`` is rejected."""

    type_name = "Float"
    exact_type = float

    def _expected(self) -> str:
        return "float"

    def _make_check(self) -> Coerce:
        expected = self.expected

        def check(value: Any) -> Any:
            t = type(value)
            if t is float:
                return value
            if t is int:
                try:
                    return float(value)
                except OverflowError:
                    pass
            raise InvalidFieldValue(expected, value)

        return check


class DateTime(Field):
    """A timezone-aware ``datetime`` (naive ones are rejected: attach a timezone)."""

    type_name = "DateTime"

    def _expected(self) -> str:
        return "timezone-aware datetime"

    def _make_check(self) -> Coerce:
        expected = self.expected
        naive_hint = (
            "timezone-aware datetime (this one is naive: attach a timezone, "
            "e.g. datetime.now(timezone.utc) or dt.replace(tzinfo=timezone.utc))"
        )
        datetime_type = _dt.datetime
        utc = _dt.UTC

        def check(value: Any) -> Any:
            if type(value) is datetime_type or isinstance(value, datetime_type):
                tz = value.tzinfo
                if tz is utc or (tz is not None and value.utcoffset() is not None):
                    return value
                raise InvalidFieldValue(naive_hint, value)
            raise InvalidFieldValue(expected, value)

        return check


class UUID(Field):
    """A ``uuid.UUID``; a parseable string is accepted and stored as ``uuid.UUID``."""

    type_name = "UUID"
    exact_type = uuid.UUID

    def _expected(self) -> str:
        return "UUID or UUID string"

    def _make_check(self) -> Coerce:
        expected = self.expected
        uuid_type = uuid.UUID

        def check(value: Any) -> Any:
            t = type(value)
            if t is uuid_type:
                return value
            if t is str:
                try:
                    return uuid_type(value)
                except ValueError:
                    pass
            raise InvalidFieldValue(expected, value)

        return check


class Enum(Field):
    """One of a fixed set of values (str or int; the type must match exactly)."""

    type_name = "Enum"

    def __init__(
        self,
        valid_values: Iterable[str | int],
        *,
        nullable: bool = False,
        default: Any = UNSET,
        since: str | None = None,
    ) -> None:
        values = tuple(dict.fromkeys(valid_values))
        if not values:
            raise ValueError("Enum needs at least one valid value")
        for v in values:
            if type(v) not in (str, int):
                raise TypeError(f"Enum values must be str or int, got {type(v).__name__} {v!r}")
        self.valid_values: tuple[str | int, ...] = values
        super().__init__(nullable=nullable, default=default, since=since)

    def _expected(self) -> str:
        return f"one of {list(self.valid_values)!r}"

    def _params(self) -> list[str]:
        return [repr(list(self.valid_values))]

    def _make_check(self) -> Coerce:
        expected = self.expected
        valid = frozenset((type(v), v) for v in self.valid_values)

        def check(value: Any) -> Any:
            try:
                if (type(value), value) in valid:
                    return value
            except TypeError:  # unhashable
                pass
            raise InvalidFieldValue(expected, value)

        return check


class List(Field):
    """A list whose every element passes ``element``; assignment stores a new list.

    A tuple is accepted too (and stored as a list).
    """

    type_name = "List"

    def __init__(
        self,
        element: Field,
        *,
        nullable: bool = False,
        default: Any = UNSET,
        since: str | None = None,
    ) -> None:
        if not isinstance(element, Field):
            raise TypeError(f"List needs a Field instance, got {element!r}")
        self.element = element
        self.holds_objects = element.holds_objects
        super().__init__(nullable=nullable, default=default, since=since)

    def _expected(self) -> str:
        return f"list of {self.element.expected}"

    def _params(self) -> list[str]:
        return [self.element.describe()]

    def _make_check(self) -> Coerce:
        expected = self.expected
        elem = self.element.coerce
        simple = self.element.exact_type

        def failure(value: Any) -> InvalidFieldValue:
            for i, item in enumerate(value):
                try:
                    elem(item)
                except InvalidFieldValue as exc:
                    return InvalidFieldValue(exc.expected, exc.got, f"[{i}]{exc.path}")
            return InvalidFieldValue(expected, value)  # pragma: no cover - defensive

        def check(value: Any) -> Any:
            t = type(value)
            if t is not list and t is not tuple:
                raise InvalidFieldValue(expected, value)
            if simple is not None:
                for item in value:
                    if type(item) is not simple:
                        break
                else:
                    return list(value)
            try:
                return [elem(item) for item in value]
            except InvalidFieldValue:
                raise failure(value) from None

        return check


class Dict(Field):
    """A dict with ``str`` keys whose every value passes ``value``; stores a new dict."""

    type_name = "Dict"

    def __init__(
        self,
        value: Field,
        *,
        nullable: bool = False,
        default: Any = UNSET,
        since: str | None = None,
    ) -> None:
        if not isinstance(value, Field):
            raise TypeError(f"Dict needs a Field instance, got {value!r}")
        self.value = value
        self.holds_objects = value.holds_objects
        super().__init__(nullable=nullable, default=default, since=since)

    def _expected(self) -> str:
        return f"dict of str to {self.value.expected}"

    def _params(self) -> list[str]:
        return [self.value.describe()]

    def _make_check(self) -> Coerce:
        expected = self.expected
        coerce_value = self.value.coerce
        simple = self.value.exact_type

        def failure(value: dict[Any, Any]) -> InvalidFieldValue:
            for key, item in value.items():
                if type(key) is not str:
                    return InvalidFieldValue("str key", key, f"[{key!r}]")
                try:
                    coerce_value(item)
                except InvalidFieldValue as exc:
                    return InvalidFieldValue(exc.expected, exc.got, f"[{key!r}]{exc.path}")
            return InvalidFieldValue(expected, value)  # pragma: no cover - defensive

        def check(value: Any) -> Any:
            if type(value) is not dict:
                raise InvalidFieldValue(expected, value)
            if simple is not None:
                for key, item in value.items():
                    if type(key) is not str or type(item) is not simple:
                        break
                else:
                    return dict(value)
            for key in value:
                if type(key) is not str:
                    raise failure(value)
            try:
                return {key: coerce_value(item) for key, item in value.items()}
            except InvalidFieldValue:
                raise failure(value) from None

        return check


class Object(Field):
    """A nested versioned object, named by its registered name or given as a class.

    The check is by object name (the class or any subclass registered under
    that name), so the target needs not exist when the field is declared and
    the field works with every :class:`~rpclib.objects.Registry`.
    """

    type_name = "Object"
    holds_objects = True

    def __init__(
        self,
        name_or_class: str | type,
        *,
        nullable: bool = False,
        default: Any = UNSET,
        since: str | None = None,
    ) -> None:
        if isinstance(name_or_class, str):
            name = name_or_class
        else:
            obj_name = getattr(name_or_class, "obj_name", None)
            if obj_name is None:
                raise TypeError(
                    f"Object needs a versioned object class or name, got {name_or_class!r}"
                )
            name = obj_name()
        self.obj_name: str = name
        super().__init__(nullable=nullable, default=default, since=since)

    def _expected(self) -> str:
        return f"{self.obj_name} object"

    def _params(self) -> list[str]:
        return [repr(self.obj_name)]

    def _make_check(self) -> Coerce:
        expected = self.expected
        name = self.obj_name

        def check(value: Any) -> Any:
            # _obj_lineage: the names of the class and its versioned bases.
            if name in getattr(type(value), "_obj_lineage", ()):
                return value
            raise InvalidFieldValue(expected, value)

        return check
