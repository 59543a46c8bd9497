"""Endpoint dispatch: which method answers a (namespace, version, name) request.

An endpoint is any object; ``endpoint.target = Target(namespace=..., version=...)``
says which interface it implements (default: no namespace, version 1.0). Its
public methods (names not starting with ``_``) take ``(ctx, **kwargs)``.
Arguments are checked against each method's signature and simple type
annotations before the method runs, so a caller with the wrong arguments gets
:class:`~rpclib.exceptions.InvalidArguments` naming the problem.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rpclib.exceptions import InvalidArguments, NoSuchMethod, UnsupportedVersion
from rpclib.versioning import Version, parse_version

Checker = Callable[[Any], bool]
DEFAULT_VERSION = "1.0"


def endpoint_interface(endpoint: object) -> tuple[str | None, Version]:
    """The (namespace, version) an endpoint implements."""
    target = getattr(endpoint, "target", None)
    namespace = getattr(target, "namespace", None)
    version = getattr(target, "version", None) or DEFAULT_VERSION
    return namespace, parse_version(version)


def public_methods(endpoint: object) -> dict[str, Callable[..., Any]]:
    """The callable public methods of an endpoint (never ``_private`` ones, never ``target``)."""
    methods: dict[str, Callable[..., Any]] = {}
    for name in dir(type(endpoint)):
        if name.startswith("_") or name == "target":
            continue
        attr = getattr(endpoint, name, None)
        if callable(attr) and not isinstance(attr, type):
            methods[name] = attr
    return methods


@dataclass(frozen=True, slots=True)
class MethodEntry:
    """A dispatchable method with its precomputed argument checks."""

    name: str
    func: Callable[..., Any]
    version: Version
    namespace: str | None
    params: frozenset[str]
    required: frozenset[str]
    var_keyword: bool
    checkers: Mapping[str, tuple[Checker, str]]
    reply_objects: Mapping[Version, Mapping[str, str]] = field(default_factory=dict)
    """The endpoint's ``reply_object_versions`` (see :func:`reply_object_versions`)."""

    def reply_manifest(self, requested: Version) -> Mapping[str, str] | None:
        """The newest object versions a reply to a request at ``requested`` may carry.

        The bound of the oldest declared interface version at or above
        ``requested`` (same major); None when none applies (no backport).
        """
        bounds = [b for b in self.reply_objects if b.major == requested.major and b >= requested]
        return self.reply_objects[min(bounds)] if bounds else None

    def check(self, kwargs: Mapping[str, Any]) -> None:
        """Raise InvalidArguments if ``kwargs`` do not fit this method."""
        if not self.var_keyword:
            unexpected = [k for k in kwargs if k not in self.params]
            if unexpected:
                accepts = ", ".join(sorted(self.params)) or "no arguments"
                raise InvalidArguments(
                    self.name,
                    f"unexpected argument(s) {', '.join(sorted(unexpected))} (accepts {accepts})",
                )
        missing = [k for k in self.required if k not in kwargs]
        if missing:
            raise InvalidArguments(
                self.name, f"missing required argument(s) {', '.join(sorted(missing))}"
            )
        for key, (checker, expected) in self.checkers.items():
            if key in kwargs and not checker(kwargs[key]):
                value = kwargs[key]
                got = f"{type(value).__name__} {value!r:.60}"
                raise InvalidArguments(self.name, f"argument {key!r} expects {expected}, got {got}")


def reply_object_versions(endpoint: object) -> dict[Version, dict[str, str]]:
    """An endpoint's ``reply_object_versions``: what its replies carry to older callers.

    A caller that asks for interface X.Y was written against the objects of
    X.Y, and may not know newer object versions (it has no indirection to
    backport them). An endpoint declares, per interface version, the newest
    object versions that version's replies may carry, e.g. ``{"1.1":
    {"Instance": "1.1"}}``: a request at 1.0 or 1.1 gets its Instance
    backported to 1.1, a request at 1.2 gets the current one. ValueError
    names a malformed declaration.
    """
    declared = getattr(endpoint, "reply_object_versions", None) or {}
    if not isinstance(declared, Mapping):
        raise ValueError(f"{type(endpoint).__name__}.reply_object_versions must be a mapping")
    out: dict[Version, dict[str, str]] = {}
    for interface, objects in declared.items():
        if not isinstance(objects, Mapping):
            raise ValueError(
                f"{type(endpoint).__name__}.reply_object_versions[{interface!r}] must map "
                "object names to versions"
            )
        out[parse_version(interface)] = {
            str(name): str(parse_version(version)) for name, version in objects.items()
        }
    return out


def _make_entry(endpoint: object, name: str, func: Callable[..., Any]) -> MethodEntry:
    namespace, version = endpoint_interface(endpoint)
    replies = reply_object_versions(endpoint)
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return MethodEntry(
            name, func, version, namespace, frozenset(), frozenset(), True, {}, replies
        )
    parameters = list(sig.parameters.values())
    if not parameters or parameters[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise TypeError(
            f"endpoint method {type(endpoint).__name__}.{name} must take ctx as its first argument"
        )
    rest = parameters[1:]
    try:
        hints = typing.get_type_hints(func)
    except Exception:
        hints = {}
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = frozenset(p.name for p in rest if p.kind in keyword_kinds)
    required = frozenset(
        p.name for p in rest if p.kind in keyword_kinds and p.default is inspect.Parameter.empty
    )
    var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in rest)
    checkers: dict[str, tuple[Checker, str]] = {}
    for pname in params:
        if pname in hints:
            built = _checker_for(hints[pname])
            if built is not None:
                checkers[pname] = built
    return MethodEntry(
        name, func, version, namespace, params, required, var_keyword, checkers, replies
    )


def _checker_for(annotation: Any) -> tuple[Checker, str] | None:
    """A fast isinstance-style check for simple annotations; None when not checkable."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return None
    if annotation is None or annotation is type(None):
        return (lambda v: v is None), "None"
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [_checker_for(a) for a in typing.get_args(annotation)]
        if any(p is None for p in parts):
            return None
        checks = [p[0] for p in parts if p is not None]
        names = " | ".join(p[1] for p in parts if p is not None)
        return (lambda v: any(c(v) for c in checks)), names
    if origin is not None:
        annotation = origin
    if annotation is float:
        return (lambda v: type(v) is float or (type(v) is int)), "float"
    if annotation is int:
        return (lambda v: isinstance(v, int) and type(v) is not bool), "int"
    if isinstance(annotation, type):
        if annotation.__module__ == "collections.abc" or annotation.__module__ == "typing":
            return (lambda v, t=annotation: isinstance(v, t)), annotation.__name__
        return (lambda v, t=annotation: isinstance(v, t)), annotation.__name__
    return None


class Dispatcher:
    """Finds the endpoint method for a request, applying the version rule."""

    def __init__(self, endpoints: Iterable[object]) -> None:
        self._by_name: dict[tuple[str | None, str], list[MethodEntry]] = {}
        self._versions: dict[str | None, set[Version]] = {}
        self._cache: dict[tuple[str | None, str, str], MethodEntry] = {}
        self.endpoints = list(endpoints)
        if not self.endpoints:
            raise ValueError("an RPC server needs at least one endpoint")
        for endpoint in self.endpoints:
            namespace, version = endpoint_interface(endpoint)
            self._versions.setdefault(namespace, set()).add(version)
            for name, func in public_methods(endpoint).items():
                entries = self._by_name.setdefault((namespace, name), [])
                entries.append(_make_entry(endpoint, name, func))
        for entries in self._by_name.values():
            entries.sort(key=lambda e: e.version, reverse=True)

    def interfaces(self) -> dict[str | None, list[str]]:
        """Namespace -> implemented versions, for adverts."""
        return {ns: sorted(str(v) for v in versions) for ns, versions in self._versions.items()}

    def lookup(self, namespace: str | None, version: str, method: str) -> MethodEntry:
        """The method honouring ``version``; UnsupportedVersion or NoSuchMethod otherwise."""
        key = (namespace, version, method)
        entry = self._cache.get(key)
        if entry is not None:
            return entry
        try:
            requested = parse_version(version)
        except ValueError:
            implemented = self._implemented(namespace)
            raise UnsupportedVersion(method, str(version), implemented, namespace) from None
        entries = self._by_name.get((namespace, method))
        if not entries or method.startswith("_"):
            raise NoSuchMethod(method, namespace)
        for candidate in entries:
            if candidate.version.can_honour(requested):
                if len(self._cache) < 4096:
                    self._cache[key] = candidate
                return candidate
        raise UnsupportedVersion(method, str(requested), self._implemented(namespace), namespace)

    def _implemented(self, namespace: str | None) -> list[str]:
        return sorted(str(v) for v in self._versions.get(namespace, ()))
