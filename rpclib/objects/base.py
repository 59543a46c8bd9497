"""Versioned objects: typed, change-tracked records that can be sent at older versions.

Design notes (the hot paths are benchmarked):

* Field values live in the instance ``__dict__`` under the field name and
  nothing else does (private attributes excepted), so reading a field is a
  plain attribute lookup, and the serializer can pack ``__dict__`` as is.
* Writes go through ``__setattr__``, which runs the field's precomputed
  ``coerce`` and records the change in the ``_changes`` slot (a dict used as
  an insertion-ordered set, so the encoded change list is deterministic).
* Unset fields are simply absent from ``__dict__``; ``__getattr__`` (only
  reached on a miss) supplies the default or raises FieldNotSet.
* Everything per-class (coercers, exact types, since-table, ...) is computed
  once in ``__init_subclass__``.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, Self, TypeVar

from rpclib.exceptions import (
    FieldNotSet,
    FieldTypeError,
    IncompatibleObjectVersion,
    UnknownObject,
)
from rpclib.objects.fields import Coerce, Field, InvalidFieldValue
from rpclib.versioning import Version, parse_version

__all__ = ["Registry", "VersionedObject", "default_registry", "register"]

_T = TypeVar("_T", bound="type[VersionedObject]")


class VersionedObject:
    """Base class of versioned objects.

    Subclasses declare ``VERSION`` (``"MAJOR.MINOR"``), ``fields`` (name ->
    :class:`~rpclib.objects.fields.Field`; merged with the base class's) and
    optionally ``OBJ_NAME`` (defaults to the class name), and override
    :meth:`obj_make_compatible` for backport rules beyond dropping fields
    added after the target version (``since=``).
    """

    __slots__ = ("__dict__", "__weakref__", "_changes")

    VERSION: ClassVar[str] = "1.0"
    fields: ClassVar[Mapping[str, Field]] = {}

    _changes: dict[str, None]

    # Computed per class by _setup_class; "_obj_" is reserved.
    _obj_name: ClassVar[str]
    _obj_version: ClassVar[Version]
    _obj_fields: ClassVar[dict[str, Field]]
    _obj_field_names: ClassVar[tuple[str, ...]]
    _obj_fieldset: ClassVar[frozenset[str]]
    _obj_coercers: ClassVar[dict[str, Coerce]]
    _obj_exact: ClassVar[dict[str, type]]
    _obj_defaulted: ClassVar[tuple[tuple[str, Field], ...]]
    _obj_since_desc: ClassVar[tuple[tuple[Version, str], ...]]
    _obj_nested: ClassVar[tuple[str, ...]]
    _obj_custom_compat: ClassVar[bool]
    _obj_lineage: ClassVar[frozenset[str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _setup_class(cls)

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        self = object.__new__(cls)
        _set_changes(self, {})
        return self

    def __init__(self, **kwargs: Any) -> None:
        """Set the given fields (type-checked), then defaults for the unset ones."""
        cls = type(self)
        values = self.__dict__
        coercers = cls._obj_coercers
        changes = self._changes
        for name, value in kwargs.items():
            coerce = coercers.get(name)
            if coerce is None:
                raise TypeError(
                    f"{cls.__name__}() got an unexpected field {name!r} "
                    f"(fields: {', '.join(cls._obj_field_names) or 'none'})"
                )
            try:
                values[name] = coerce(value)
            except InvalidFieldValue as exc:
                raise FieldTypeError(
                    cls._obj_name, name + exc.path, exc.expected, exc.got
                ) from None
            changes[name] = None
        for name, field in cls._obj_defaulted:
            if name not in values:
                values[name] = field.make_default()
                changes[name] = None

    # -- attribute access -------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        cls = type(self)
        coerce = cls._obj_coercers.get(name)
        if coerce is None:
            if name[:1] == "_" or hasattr(cls, name):
                object.__setattr__(self, name, value)
                return
            raise AttributeError(
                f"{cls.__name__} has no field {name!r} "
                f"(fields: {', '.join(cls._obj_field_names) or 'none'})"
            )
        try:
            value = coerce(value)
        except InvalidFieldValue as exc:
            raise FieldTypeError(cls._obj_name, name + exc.path, exc.expected, exc.got) from None
        self.__dict__[name] = value
        self._changes[name] = None

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails, i.e. for unset fields.
        cls = type(self)
        field = cls._obj_fields.get(name)
        if field is None:
            raise AttributeError(f"{cls.__name__!r} object has no attribute {name!r}")
        if not field.has_default:
            raise FieldNotSet(cls._obj_name, name)
        # Materialise the default so in-place edits of a mutable one stick.
        value = field.make_default()
        self.__dict__[name] = value
        return value

    # -- introspection ----------------------------------------------------

    @classmethod
    def obj_name(cls) -> str:
        """The name this class is registered and sent under."""
        return cls._obj_name

    @classmethod
    def obj_version(cls) -> Version:
        """``VERSION`` parsed."""
        return cls._obj_version

    def obj_attr_is_set(self, name: str) -> bool:
        """True when field ``name`` has a value (defaults applied count as set)."""
        if name not in type(self)._obj_fieldset:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        return name in self.__dict__

    def obj_values(self) -> dict[str, Any]:
        """The set fields as a new dict (field name -> value)."""
        return dict(self._obj_values())

    def _obj_values(self) -> dict[str, Any]:
        values = self.__dict__
        cls = type(self)
        if values.keys() <= cls._obj_fieldset:
            return values
        return {name: values[name] for name in cls._obj_field_names if name in values}

    # -- change tracking --------------------------------------------------

    def obj_what_changed(self) -> set[str]:
        """Fields assigned since the last reset, plus fields whose nested objects changed."""
        changed = set(self._changes)
        values = self.__dict__
        for name in type(self)._obj_nested:
            if name not in changed and name in values and _has_changes(values[name]):
                changed.add(name)
        return changed

    def obj_reset_changes(
        self, fields: Iterable[str] | None = None, recursive: bool = False
    ) -> None:
        """Forget changes (of ``fields`` only, if given); nested objects too if ``recursive``."""
        if fields is None:
            self._changes.clear()
            names: Iterable[str] = type(self)._obj_nested
        else:
            names = list(fields)
            unknown = [n for n in names if n not in type(self)._obj_fieldset]
            if unknown:
                raise AttributeError(f"{type(self).__name__} has no field(s) {unknown}")
            changes = self._changes
            for name in names:
                changes.pop(name, None)
        if recursive:
            values = self.__dict__
            nested = type(self)._obj_nested
            for name in names:
                if name in nested and name in values:
                    for obj in _iter_objects(values[name]):
                        obj.obj_reset_changes(recursive=True)

    # -- versions ---------------------------------------------------------

    def obj_make_compatible(self, primitive: dict[str, Any], target_version: Version) -> None:
        """Hook: edit ``primitive`` (field name -> value) in place for ``target_version``.

        Called when backporting, after fields added later than the target
        (``since=``) were dropped. Replace values rather than mutating them:
        ``primitive`` is a shallow copy of this object's values. Nested objects
        are backported separately, according to the manifest.
        """

    def obj_backport(self, target_version: str | Version) -> dict[str, Any]:
        """The field values as they would be sent at ``target_version``."""
        return self._obj_backport(parse_version(target_version))[0]

    def _obj_backport(self, target: Version) -> tuple[dict[str, Any], list[str]]:
        """(values, changed fields) at ``target``; raises on impossible targets."""
        cls = type(self)
        own = cls._obj_version
        if target.major != own.major:
            raise IncompatibleObjectVersion(
                cls._obj_name, str(own), str(target), "cannot backport across major versions"
            )
        if target > own:
            raise IncompatibleObjectVersion(
                cls._obj_name,
                str(target),
                str(own),
                "cannot backport to a version newer than the object's own",
            )
        values = dict(self._obj_values())
        if target != own:
            for since, name in cls._obj_since_desc:
                if since <= target:
                    break
                values.pop(name, None)
            if cls._obj_custom_compat:
                self.obj_make_compatible(values, target)
        changes = [name for name in self._changes if name in values]
        return values, changes

    # -- dunder -----------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, VersionedObject)
        return self._obj_values() == other._obj_values()

    __hash__ = None  # type: ignore[assignment]  # mutable

    @reprlib.recursive_repr()
    def __repr__(self) -> str:
        cls = type(self)
        values = self.__dict__
        body = ", ".join(
            f"{name}={values[name]!r}" for name in cls._obj_field_names if name in values
        )
        return f"{cls._obj_name}@{cls.VERSION}({body})"


_set_changes = VersionedObject._changes.__set__  # type: ignore[attr-defined]


def _has_changes(value: Any) -> bool:
    return any(obj.obj_what_changed() for obj in _iter_objects(value))


def _iter_objects(value: Any) -> Iterator[VersionedObject]:
    """Versioned objects directly in a field value (the value, or list/dict items)."""
    if isinstance(value, VersionedObject):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _iter_objects(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _iter_objects(item)


_RESERVED = frozenset(dir(VersionedObject)) | {"fields", "VERSION", "OBJ_NAME"}


def _setup_class(cls: type[VersionedObject]) -> None:
    """Validate a class definition and precompute what the hot paths need."""
    own = cls.__dict__
    name = own.get("OBJ_NAME", cls.__name__)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__}.OBJ_NAME must be a non-empty str")
    try:
        version = parse_version(cls.VERSION)
    except ValueError as exc:
        raise TypeError(f"{cls.__qualname__}.VERSION: {exc}") from None

    merged: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        if issubclass(base, VersionedObject):
            merged.update(base.__dict__.get("_obj_fields", {}))
    declared = own.get("fields", {})
    if not isinstance(declared, Mapping):
        raise TypeError(f"{cls.__qualname__}.fields must be a mapping of name to Field")
    merged.update(declared)

    for fname, field in merged.items():
        where = f"{cls.__qualname__}.fields[{fname!r}]"
        if not isinstance(fname, str) or not fname.isidentifier() or fname.startswith("_"):
            raise TypeError(f"{where}: field names must be public identifiers")
        if fname in _RESERVED or hasattr(cls, fname):
            raise TypeError(f"{where}: the name clashes with an attribute of {cls.__qualname__}")
        if not isinstance(field, Field):
            raise TypeError(f"{where} must be a Field instance, got {field!r}")
        if field.since is not None and not (
            field.since.major == version.major and field.since <= version
        ):
            raise TypeError(
                f"{where}: since={str(field.since)!r} must be within version "
                f"{version.major}.x and not above VERSION {version}"
            )

    cls.fields = dict(merged)
    cls._obj_name = name
    cls._obj_version = version
    cls._obj_fields = dict(merged)
    cls._obj_field_names = tuple(merged)
    cls._obj_fieldset = frozenset(merged)
    cls._obj_coercers = {n: f.coerce for n, f in merged.items()}
    cls._obj_exact = {n: f.exact_type for n, f in merged.items() if f.exact_type is not None}
    cls._obj_defaulted = tuple((n, f) for n, f in merged.items() if f.has_default)
    cls._obj_since_desc = tuple(
        sorted(((f.since, n) for n, f in merged.items() if f.since is not None), reverse=True)
    )
    cls._obj_nested = tuple(n for n, f in merged.items() if f.holds_objects)
    cls._obj_custom_compat = cls.obj_make_compatible is not VersionedObject.obj_make_compatible
    lineage = {name}
    for base in cls.__mro__[1:]:
        if issubclass(base, VersionedObject) and base is not VersionedObject:
            lineage.add(base._obj_name)
    cls._obj_lineage = frozenset(lineage)


class Registry:
    """Versioned object classes by name: what a process can decode.

    Registering a class under a name already taken replaces the old class
    (so tests can redefine classes freely).
    """

    def __init__(self) -> None:
        self._classes: dict[str, type[VersionedObject]] = {}
        self._manifest: dict[str, str] | None = None

    def register(self, cls: _T) -> _T:
        """Register ``cls`` under its ``obj_name()``; usable as a class decorator."""
        if not (isinstance(cls, type) and issubclass(cls, VersionedObject)):
            raise TypeError(f"only VersionedObject subclasses can be registered, got {cls!r}")
        self._classes[cls.obj_name()] = cls
        self._manifest = None
        return cls

    def unregister(self, name: str) -> None:
        """Forget the class registered under ``name`` (no error if absent)."""
        self._classes.pop(name, None)
        self._manifest = None

    def get(self, name: str) -> type[VersionedObject]:
        """The class registered under ``name``; UnknownObject if none."""
        try:
            return self._classes[name]
        except (KeyError, TypeError):
            raise UnknownObject(name) from None

    def manifest(self) -> dict[str, str]:
        """Name -> current VERSION of every registered class (a new dict)."""
        if self._manifest is None:
            self._manifest = {n: c.VERSION for n, c in sorted(self._classes.items())}
        return dict(self._manifest)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[type[VersionedObject]]:
        return iter([self._classes[n] for n in sorted(self._classes)])

    def __len__(self) -> int:
        return len(self._classes)

    def __repr__(self) -> str:
        return f"<Registry {len(self._classes)} classes>"


_setup_class(VersionedObject)

#: The registry :func:`register` adds to and serializers use unless given another.
default_registry = Registry()


def register(cls: _T) -> _T:
    """Class decorator: register ``cls`` in :data:`default_registry`."""
    return default_registry.register(cls)
