"""The wire codec: msgpack plus a few extension types, in one pass per message.

``Serializer.dumps`` encodes any nesting of the supported values (the whole
envelope at once); ``Serializer.loads`` decodes it, type-checking every field
of every versioned object on the way. Packing uses ``use_bin_type=True`` and
``strict_types=True``: subclasses of the supported types (IntEnum, StrEnum,
OrderedDict, ...) are refused, except datetime subclasses, sent as datetime.
bytearray and memoryview go as bytes. Unpacking uses ``raw=False`` and
allows non-string map keys.

Wire format: native msgpack for None, bool, int (64-bit), float (64-bit),
str, bytes, list and dict; these extension types for the rest. The codes are
part of the wire format: never renumber, only add.

==== =============== ===========================================================
code type            payload
==== =============== ===========================================================
1    VersionedObject msgpack array ``[name, version, {field: value}, [changed]]``;
                     changed field names in the order they were set
2    tuple           msgpack array of the items
3    set             msgpack array of the items
4    frozenset       msgpack array of the items
5    datetime        ASCII ``isoformat()`` (no offset when naive), followed for
                     ZoneInfo zones by ``[Zone/Key]`` (RFC 9557 style), for a
                     ``datetime.timezone`` with a custom name by ``[=name]``
6    date            ASCII ``YYYY-MM-DD``
7    uuid.UUID       the 16 bytes
8    Decimal         ASCII ``str(value)`` (exact, incl. NaN, Infinity, -0)
==== =============== ===========================================================

Objects older than the receiver's class decode fine (later fields stay
unset). Newer minor versions are handed, as the exact bytes that arrived, to
an :class:`ObjectIndirection` service that backports them; a different major
version is an IncompatibleObjectVersion.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import threading
import uuid
import zoneinfo
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from msgpack import ExtType, Packer, packb, unpackb

from rpclib.exceptions import (
    FieldTypeError,
    IncompatibleObjectVersion,
    MalformedMessage,
    MessageTooLarge,
    MessagingError,
    SerializationError,
    UnknownObject,
)
from rpclib.objects.base import Registry, VersionedObject, default_registry
from rpclib.objects.fields import InvalidFieldValue
from rpclib.versioning import Version, parse_version

__all__ = [
    "EXT_DATE",
    "EXT_DATETIME",
    "EXT_DECIMAL",
    "EXT_FROZENSET",
    "EXT_OBJECT",
    "EXT_SET",
    "EXT_TUPLE",
    "EXT_UUID",
    "ObjectIndirection",
    "Serializer",
]

EXT_OBJECT: Final = 1
EXT_TUPLE: Final = 2
EXT_SET: Final = 3
EXT_FROZENSET: Final = 4
EXT_DATETIME: Final = 5
EXT_DATE: Final = 6
EXT_UUID: Final = 7
EXT_DECIMAL: Final = 8

_SUPPORTED = (
    "None, bool, int, float, str, bytes, list, dict, tuple, set, frozenset, "
    "datetime, date, uuid.UUID, decimal.Decimal and versioned objects"
)


class ObjectIndirection(Protocol):
    """A service that re-encodes an object at versions this process understands.

    ``objinst`` is the msgpack encoding of one object exactly as it arrived;
    ``object_versions`` is the receiver's manifest (name -> version). The
    answer is the same object encoded at those versions (see
    :meth:`Serializer.backport_encoded` for the service side).
    """

    def object_backport_versions(
        self, ctx: Mapping[str, Any], objinst: bytes, object_versions: dict[str, str]
    ) -> bytes: ...


class _Unsupported(SerializationError):
    """Raised inside packing; ``dumps`` re-raises it with the value's path."""

    def __init__(self, value: object, why: str = "") -> None:
        super().__init__(why)
        self.value = value
        self.why = why


class _Placeholder:
    """Stands for an object too new to decode until the indirection backports it."""

    __slots__ = ("name", "objinst")

    def __init__(self, name: str, objinst: bytes) -> None:
        self.name = name
        self.objinst = objinst


_new = object.__new__

# --- datetime -----------------------------------------------------------------

_UTC: Final = _dt.UTC
_timezone = _dt.timezone
_datetime = _dt.datetime
_ZoneInfo = zoneinfo.ZoneInfo


def _encode_datetime(value: _dt.datetime) -> bytes:
    tz = value.tzinfo
    if tz is None or tz is _UTC:
        return value.isoformat().encode()
    if type(value) is not _datetime:  # a subclass (freezegun, pendulum): send as datetime
        value = _datetime(
            value.year,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
            value.microsecond,
            tz,
            fold=value.fold,
        )
    tz_type = type(tz)
    if tz_type is _timezone:
        text = value.isoformat()
        name = tz.tzname(None)
        if name != _timezone(value.utcoffset()).tzname(None):  # type: ignore[arg-type]
            text += f"[={name}]"
        return text.encode()
    if tz_type is _ZoneInfo and tz.key is not None:  # type: ignore[attr-defined]
        return f"{value.isoformat()}[{tz.key}]".encode()  # type: ignore[attr-defined]
    offset = value.utcoffset()  # another tzinfo implementation: keep the offset
    fixed = None if offset is None else _timezone(offset)
    return value.replace(tzinfo=fixed).isoformat().encode()


def _parse_isoformat(text: str) -> _dt.datetime:
    # The offset starts after "YYYY-MM-DDTHH:MM:SS[.ffffff]". Offsets with seconds
    # are parsed here: Python 3.11's fromisoformat drops e.g. "+00:00:00.000001".
    start = 26 if text[19:20] == "." else 19
    if len(text) - start <= 6:
        return _datetime.fromisoformat(text)
    sign, offset = text[start], text[start + 1 :]
    if sign not in "+-" or len(offset) not in (8, 15) or offset[2::3][:2] != "::":
        raise ValueError(f"bad UTC offset in {text!r}")
    seconds, _, micro = offset[6:].partition(".")
    delta = _dt.timedelta(
        hours=int(offset[:2]),
        minutes=int(offset[3:5]),
        seconds=int(seconds),
        microseconds=int(micro) if micro else 0,
    )
    return _datetime.fromisoformat(text[:start]).replace(
        tzinfo=_timezone(-delta if sign == "-" else delta)
    )


def _decode_datetime(data: bytes) -> _dt.datetime:
    text = data.decode("ascii")
    if text[-1:] != "]":
        return _parse_isoformat(text)
    base, sep, suffix = text[:-1].partition("[")
    value = _parse_isoformat(base)
    offset = value.utcoffset()
    if not sep or not suffix or offset is None:
        raise ValueError(f"bad datetime {text!r}")
    if suffix[0] == "=":
        return value.replace(tzinfo=_timezone(offset, suffix[1:]))
    try:
        zone = _ZoneInfo(suffix)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return value  # zone unknown here: keep the exact instant and offset
    local = value.replace(tzinfo=zone)
    if local.utcoffset() == offset:
        return local
    local = local.replace(fold=1)
    if local.utcoffset() == offset:
        return local
    return value.astimezone(zone)  # zone rules differ: keep the instant


_UUID = uuid.UUID
_UNKNOWN_SAFETY = uuid.SafeUUID.unknown
_from_bytes = int.from_bytes
_set_uuid_int = _UUID.__dict__["int"].__set__
_set_uuid_safe = _UUID.__dict__["is_safe"].__set__


def _decode_uuid(data: bytes) -> uuid.UUID:
    # uuid.UUID(bytes=...) costs ~1 us in argument checks; fill the slots directly.
    if len(data) != 16:
        raise ValueError(f"a UUID is 16 bytes, got {len(data)}")
    value = _new(_UUID)
    _set_uuid_int(value, _from_bytes(data))
    _set_uuid_safe(value, _UNKNOWN_SAFETY)
    return value


# --- encoding -----------------------------------------------------------------


class _EncodeState(threading.local):
    """Per-thread state of the ``dumps`` in progress (the manifest it was given)."""

    manifest: Mapping[str, str] | None = None


# Packers are pooled: building one allocates its buffer, and the default 256 KiB
# buffer costs an mmap per nested object. Small start, grows when needed.
_PACKER_BUF: Final = 4096
_POOL_MAX: Final = 16
_POOL_KEEP_BELOW: Final = 1 << 20  # don't keep a packer that grew a huge buffer


# ExtType's Python-level __new__ re-validates its arguments (~0.4 us each); ours
# are known good, so build the namedtuple directly.
_ext: Final = tuple.__new__


def _make_encoder(state: _EncodeState) -> Callable[[Any], bytes]:
    """A ``pack(value) -> bytes`` function with the extension types wired in."""
    pool: list[Packer] = []

    def pack(value: Any) -> bytes:
        try:
            packer = pool.pop()
        except IndexError:
            packer = Packer(
                default=default, use_bin_type=True, strict_types=True, buf_size=_PACKER_BUF
            )
        data: bytes = packer.pack(value)  # on error the packer is dropped, not reused
        if len(pool) < _POOL_MAX and len(data) < _POOL_KEEP_BELOW:
            pool.append(packer)
        return data

    def encode_object(obj: VersionedObject) -> ExtType:
        cls = type(obj)
        values = obj.__dict__
        if not values.keys() <= cls._obj_fieldset:
            values = obj._obj_values()
        version = cls.VERSION
        changes = obj._changes
        manifest = state.manifest
        if manifest is not None:
            target = manifest.get(cls._obj_name)
            if target is not None and target != version:
                try:
                    target_version = parse_version(target)
                except ValueError as exc:
                    raise SerializationError(
                        f"bad manifest entry for {cls._obj_name}: {exc}"
                    ) from None
                if target_version < cls._obj_version:
                    values, changed = obj._obj_backport(target_version)
                    payload = pack([cls._obj_name, str(target_version), values, changed])
                    return _ext(ExtType, (EXT_OBJECT, payload))
        payload = pack([cls._obj_name, version, values, list(changes)])
        return _ext(ExtType, (EXT_OBJECT, payload))

    def default(value: Any) -> ExtType:
        t = type(value)
        if t is _datetime:
            return _ext(ExtType, (EXT_DATETIME, _encode_datetime(value)))
        if t is uuid.UUID:
            return _ext(ExtType, (EXT_UUID, value.bytes))
        if isinstance(value, VersionedObject):
            return encode_object(value)
        if t is tuple:
            return _ext(ExtType, (EXT_TUPLE, pack(list(value))))
        if t is set:
            return _ext(ExtType, (EXT_SET, pack(list(value))))
        if t is frozenset:
            return _ext(ExtType, (EXT_FROZENSET, pack(list(value))))
        if t is _dt.date:
            return _ext(ExtType, (EXT_DATE, value.isoformat().encode()))
        if t is decimal.Decimal:
            return _ext(ExtType, (EXT_DECIMAL, str(value).encode()))
        if isinstance(value, _datetime):
            return _ext(ExtType, (EXT_DATETIME, _encode_datetime(value)))
        if t is int:
            raise _Unsupported(value, "int out of the 64-bit range msgpack carries")
        if isinstance(value, enum.Enum):
            raise _Unsupported(value, "enum members are not sent as such: send .value or .name")
        raise _Unsupported(value)

    return pack


def _find_path(root: Any, target: object) -> list[tuple[object, str]] | None:
    """Where ``target`` (by identity) sits inside ``root``: (key, rendered step) pairs.

    E.g. ``[(4, "[4]"), ("body", "['body']"), ("flavor", ".flavor")]``; [] for the top.
    """
    stack: list[tuple[Any, list[tuple[object, str]]]] = [(root, [])]
    seen: set[int] = set()
    while stack:
        value, path = stack.pop()
        if value is target:
            return path
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, (list, tuple)):
            stack.extend(
                (item, [*path, (i, f"[{i}]")]) for i, item in reversed(list(enumerate(value)))
            )
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                if key is target:
                    return [*path, (key, " (a dict key)")]
                stack.append((item, [*path, (key, f"[{key!r}]")]))
        elif isinstance(value, (set, frozenset)):
            stack.extend((item, [*path, (None, "{...}")]) for item in value)
        elif isinstance(value, VersionedObject):
            stack.extend(
                (item, [*path, (key, f".{key}")]) for key, item in value._obj_values().items()
            )
    return None


# --- decoding -----------------------------------------------------------------


def _malformed(what: str) -> MalformedMessage:
    return MalformedMessage(f"malformed message: {what}")


class Serializer:
    """Encodes and decodes whole messages (see the module docstring for the format).

    ``registry`` says which object classes ``loads`` can build (default: the
    default registry). ``indirection`` backports objects newer than ours;
    without it they are an error. ``max_size`` bounds encoded messages in
    both directions.
    """

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        indirection: ObjectIndirection | None = None,
        max_size: int | None = None,
    ) -> None:
        self._registry = default_registry if registry is None else registry
        self.indirection = indirection
        self.max_size = max_size
        self._state = _EncodeState()
        self._pack = _make_encoder(self._state)
        self._ext_hook = self._make_ext_hook(None)

    @property
    def registry(self) -> Registry:
        """The registry ``loads`` builds objects from (fixed at construction)."""
        return self._registry

    # -- encoding -------------------------------------------------------------

    def dumps(self, value: Any, manifest: Mapping[str, str] | None = None) -> bytes:
        """Encode ``value``; objects named in ``manifest`` go at (at most) that version."""
        state = self._state
        outer = state.manifest
        state.manifest = manifest or None
        try:
            data = self._pack(value)
        except _Unsupported as exc:
            steps = _find_path(value, exc.value)
            rendered = "".join(step for _, step in steps or ()) or "the top level"
            where = f" at {rendered}" if steps is not None else ""
            why = exc.why or f"supported: {_SUPPORTED}"
            type_name = type(exc.value).__name__
            raise SerializationError(
                f"cannot serialize {type_name}{where} ({why})",
                path=tuple(key for key, _ in steps or ()),
                where=tuple(step for _, step in steps or ()),
                type_name=type_name,
                reason=why,
            ) from None
        except MessagingError:
            raise
        except (ValueError, OverflowError, TypeError, RecursionError) as exc:
            raise SerializationError(
                f"cannot serialize: {exc} (values nested too deep or a reference cycle?)"
            ) from exc
        finally:
            state.manifest = outer
        if self.max_size is not None and len(data) > self.max_size:
            raise MessageTooLarge(len(data), self.max_size)
        return data

    # -- decoding -------------------------------------------------------------

    def loads(
        self, data: bytes | bytearray | memoryview, ctx: Mapping[str, Any] | None = None
    ) -> Any:
        """Decode one message; ``ctx`` is passed on to the indirection service."""
        if self.max_size is not None:
            size = data.nbytes if isinstance(data, memoryview) else len(data)
            if size > self.max_size:
                raise MessageTooLarge(size, self.max_size)
        if self.indirection is None:
            return self._unpack(data, self._ext_hook)
        placeholders: list[_Placeholder] = []
        result = self._unpack(data, self._make_ext_hook(placeholders))
        if placeholders:
            result = self._resolve(result, placeholders, ctx if ctx is not None else {})
        return result

    def backport_encoded(self, objinst: bytes, object_versions: Mapping[str, str]) -> bytes:
        """Service side of indirection: re-encode an object at ``object_versions``."""
        obj = self._unpack(objinst, self._ext_hook)
        if not isinstance(obj, VersionedObject):
            raise _malformed(f"expected an encoded object, got {type(obj).__name__}")
        return self.dumps(obj, object_versions)

    @staticmethod
    def _unpack(data: Any, ext_hook: Callable[[int, bytes], Any]) -> Any:
        try:
            return unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=False)
        except MessagingError:
            raise
        except Exception as exc:  # msgpack, struct, unicode, hashing, recursion, ...
            raise _malformed(f"{type(exc).__name__}: {exc}") from exc

    def _resolve(
        self, result: Any, placeholders: list[_Placeholder], ctx: Mapping[str, Any]
    ) -> Any:
        """Ask the indirection service for each too-new object, then swap them in."""
        assert self.indirection is not None
        manifest = self._registry.manifest()
        resolved: dict[int, VersionedObject] = {}
        for holder in placeholders:
            answer = self.indirection.object_backport_versions(ctx, holder.objinst, manifest)
            if not isinstance(answer, (bytes, bytearray, memoryview)):
                raise _malformed(
                    f"indirection answered {type(answer).__name__} for {holder.name}, not bytes"
                )
            try:
                obj = self._unpack(answer, self._ext_hook)
            except IncompatibleObjectVersion as exc:
                raise IncompatibleObjectVersion(
                    exc.name,
                    exc.version,
                    exc.supported,
                    "the indirection service answered with a version still too new",
                ) from exc
            if not isinstance(obj, VersionedObject) or obj.obj_name() != holder.name:
                raise _malformed(f"indirection answered {obj!r:.80} for {holder.name}")
            resolved[id(holder)] = obj
        try:
            return _substitute(result, resolved)
        except (TypeError, RecursionError) as exc:  # an object in a set, or absurd nesting
            raise _malformed(f"backported object cannot be placed: {exc}") from exc

    def _make_ext_hook(
        self, placeholders: list[_Placeholder] | None
    ) -> Callable[[int, bytes], Any]:
        """The msgpack ``ext_hook``; with ``placeholders``, too-new objects are deferred."""
        classes = self._registry._classes

        def unpack(data: bytes) -> Any:
            return unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=False)

        def unpack_array(data: bytes) -> list[Any]:
            items = unpack(data)
            if type(items) is not list:
                raise _malformed(f"container payload is {type(items).__name__}, not an array")
            return items

        def defer(name: str, data: bytes) -> _Placeholder:
            assert placeholders is not None
            holder = _Placeholder(name, packb(ExtType(EXT_OBJECT, data)))
            placeholders.append(holder)
            return holder

        def decode_object(data: bytes) -> Any:
            mark = len(placeholders) if placeholders is not None else 0
            payload = unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=False)
            if type(payload) is not list or len(payload) != 4:
                raise _malformed("object payload is not [name, version, fields, changes]")
            name, version, values, changes = payload
            if type(name) is not str:
                raise _malformed(f"object name is {type(name).__name__}, not str")
            cls = classes.get(name)
            if cls is None:
                raise UnknownObject(name)
            if type(version) is not str or type(values) is not dict or type(changes) is not list:
                raise _malformed(f"{name} payload has the wrong shape")
            if placeholders is not None and len(placeholders) > mark:
                # Something inside is too new: the whole object goes to the indirection.
                del placeholders[mark:]
                return defer(name, data)
            if version != cls.VERSION:
                try:
                    wire = parse_version(version)
                except ValueError as exc:
                    raise _malformed(f"{name}: {exc}") from None
                local: Version = cls._obj_version
                if wire.major != local.major:
                    raise IncompatibleObjectVersion(
                        name, version, cls.VERSION, "different major version"
                    )
                if wire.minor > local.minor:
                    if placeholders is None:
                        raise IncompatibleObjectVersion(
                            name,
                            version,
                            cls.VERSION,
                            "it is newer and no indirection service is configured to backport it",
                        )
                    return defer(name, data)
            exact = cls._obj_exact
            coercers = cls._obj_coercers
            key: Any = None
            try:
                for key, value in values.items():
                    if type(value) is not exact.get(key):
                        values[key] = coercers[key](value)
            except InvalidFieldValue as exc:
                raise FieldTypeError(name, f"{key}{exc.path}", exc.expected, exc.got) from None
            except KeyError:
                raise _malformed(f"{name} {version} has no field {key!r}") from None
            changed = dict.fromkeys(changes)
            if not changed.keys() <= cls._obj_fieldset:
                unknown = sorted(map(str, changed.keys() - cls._obj_fieldset))
                raise _malformed(f"{name} change list names unknown fields {unknown}")
            obj = _new(cls)
            _set_dict(obj, values)
            _set_changes(obj, changed)
            return obj

        def ext_hook(code: int, data: bytes) -> Any:
            if code == EXT_OBJECT:
                return decode_object(data)
            if code == EXT_DATETIME:
                return _decode_datetime(data)
            if code == EXT_UUID:
                return _decode_uuid(data)
            if code == EXT_TUPLE:
                return tuple(unpack_array(data))
            if code == EXT_SET:
                return set(unpack_array(data))
            if code == EXT_FROZENSET:
                return frozenset(unpack_array(data))
            if code == EXT_DATE:
                return _dt.date.fromisoformat(data.decode("ascii"))
            if code == EXT_DECIMAL:
                return decimal.Decimal(data.decode("ascii"))
            raise _malformed(f"unknown extension type {code}")

        return ext_hook


_set_dict = VersionedObject.__dict__["__dict__"].__set__
_set_changes = VersionedObject._changes.__set__  # type: ignore[attr-defined]


def _substitute(value: Any, resolved: dict[int, VersionedObject]) -> Any:
    """``value`` with every placeholder replaced (containers rebuilt or edited in place)."""
    t = type(value)
    if t is _Placeholder:
        return resolved[id(value)]
    if t is list:
        for i, item in enumerate(value):
            value[i] = _substitute(item, resolved)
        return value
    if t is dict:
        if any(type(key) is _Placeholder or type(key) is tuple for key in value):
            return {_substitute(k, resolved): _substitute(v, resolved) for k, v in value.items()}
        for key, item in value.items():
            value[key] = _substitute(item, resolved)
        return value
    if t is tuple or t is set or t is frozenset:
        return t(_substitute(item, resolved) for item in value)
    return value
