"""Exceptions across the wire: what a server sends, what a client re-raises.

A failure travels as a map with the type's module and name, the message, the
remote traceback and, for rpclib's own errors, their structured fields. The
client re-creates rpclib's errors exactly (UnsupportedVersion keeps the
method, requested and implemented versions), re-creates other exceptions
only from modules it allows, and raises :class:`RemoteError` otherwise.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable, Collection, Mapping
from typing import Any

from rpclib import exceptions as exc_mod
from rpclib.exceptions import RemoteError

DEFAULT_ALLOWED_MODULES = ("builtins",)

# rpclib errors rebuilt from their own fields: name -> (field names, factory)
_STRUCTURED: dict[str, tuple[tuple[str, ...], Callable[..., BaseException]]] = {
    "UnsupportedVersion": (
        ("method", "requested", "implemented", "namespace"),
        exc_mod.UnsupportedVersion,
    ),
    "NoSuchMethod": (("method", "namespace"), exc_mod.NoSuchMethod),
    "Forbidden": (("principal", "method", "namespace", "rule", "action"), exc_mod.Forbidden),
    "InvalidArguments": (("method", "problem"), exc_mod.InvalidArguments),
    "UnknownObject": (("name",), exc_mod.UnknownObject),
    "IncompatibleObjectVersion": (
        ("name", "version", "supported"),
        exc_mod.IncompatibleObjectVersion,
    ),
    "MessageTooLarge": (("size", "limit", "at_least", "what"), exc_mod.MessageTooLarge),
    "UnsupportedEnvelope": (("version", "supported"), exc_mod.UnsupportedEnvelope),
}
# rpclib errors rebuilt from their message alone
_MESSAGE_ONLY: dict[str, type[exc_mod.MessagingError]] = {
    "MalformedMessage": exc_mod.MalformedMessage,
    "SerializationError": exc_mod.SerializationError,
    "FieldTypeError": exc_mod.ObjectError,
    "FieldNotSet": exc_mod.ObjectError,
    "ObjectError": exc_mod.ObjectError,
}


def to_failure(exc: BaseException, *, with_traceback: bool = True) -> dict[str, Any]:
    """Describe ``exc`` as a plain map for the wire."""
    cls = type(exc)
    failure: dict[str, Any] = {
        "module": cls.__module__,
        "type": cls.__qualname__,
        "message": str(exc),
        "args": [a for a in exc.args if _is_plain(a)] if len(exc.args) < 16 else [],
        "tb": "".join(traceback.format_exception(exc)) if with_traceback else "",
    }
    if cls.__module__ == exc_mod.__name__ and cls.__name__ in _STRUCTURED:
        fields = _STRUCTURED[cls.__name__][0]
        failure["fields"] = {name: _plain(getattr(exc, name, None)) for name in fields}
    return failure


def from_failure(failure: Mapping[str, Any], allowed_modules: Collection[str]) -> BaseException:
    """Re-create the exception a server described (never raises while doing so)."""
    module = str(failure.get("module", ""))
    name = str(failure.get("type", "Exception"))
    message = str(failure.get("message", ""))
    remote_tb = str(failure.get("tb", ""))
    exc = _rebuild(module, name, message, failure, allowed_modules)
    if exc is None:
        return RemoteError(f"{module}.{name}" if module != "builtins" else name, message, remote_tb)
    exc.remote_traceback = remote_tb  # type: ignore[attr-defined]
    if remote_tb:
        exc.add_note(f"Remote traceback:\n{remote_tb.rstrip()}")
    return exc


def _rebuild(
    module: str,
    name: str,
    message: str,
    failure: Mapping[str, Any],
    allowed_modules: Collection[str],
) -> BaseException | None:
    if module == exc_mod.__name__:
        if name in _STRUCTURED and isinstance(failure.get("fields"), dict):
            fields, factory = _STRUCTURED[name]
            try:
                return factory(**{k: failure["fields"].get(k) for k in fields})
            except Exception:
                return None
        if name in _MESSAGE_ONLY:
            return _MESSAGE_ONLY[name](message)
        return None
    if module not in allowed_modules:
        return None
    try:
        cls = getattr(importlib.import_module(module), name)
    except Exception:
        return None
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return None
    args = failure.get("args") or [message]
    try:
        return cls(*args)
    except Exception:
        try:
            exc: BaseException = cls.__new__(cls)
            exc.args = (message,)
            return exc
        except Exception:
            return None


def _is_plain(value: Any) -> bool:
    return value is None or type(value) in (str, int, float, bool)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [str(v) for v in value]
    return value
