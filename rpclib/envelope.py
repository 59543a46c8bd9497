"""The one wire envelope: a msgpack array encoded once per message.

Layout (envelope version 1)::

    [ENVELOPE_VERSION, kind, message_id, header, body]

``header`` is a map of plain values (strings, numbers, ctx) that a receiver
can read without decoding the body: a server checks method, version and
deadline, and a client routes a reply by ``message_id``, before anything
heavier happens. ``body`` holds the arguments, result or payload, with
versioned objects and rich types, and is decoded lazily by the thread that
needs it. The whole array is still produced by a single msgpack pass.

The prefix every envelope version keeps
=======================================

Every version, present and future, is a msgpack array whose first four items
are ``version`` (int), ``kind`` (int, numbered as :class:`Kind`; new kinds
only add numbers), ``message_id`` (16 bytes) and ``header`` (a map), and in
that header ``rt`` (reply address, str), ``m`` (method, str) and ``al``
(at-least-once, bool) keep their meaning. A later version may add items after
the header and keys to it, never change the prefix. So a reader meeting a
version newer than its own still learns (:func:`read_prefix`) who is waiting
and where: a server answers such a call at once with
:class:`~rpclib.exceptions.UnsupportedEnvelope` naming both versions, and
reports such a cast to its sender's ``on_cast_error`` (after dead-lettering it
for replay once the reader is upgraded). A reader always answers in its own
(older) version, which a newer sender still reads. See docs/architecture.md
for the upgrade rule this gives.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from rpclib.exceptions import (
    MalformedMessage,
    MessageTooLarge,
    SerializationError,
    UnsupportedEnvelope,
)
from rpclib.serializer import Serializer

ENVELOPE_VERSION = 1
DEFAULT_MAX_SIZE = 16 * 1024 * 1024


class Kind(enum.IntEnum):
    """What an envelope carries."""

    CALL = 1
    CAST = 2
    REPLY = 3
    PROGRESS = 4
    CAST_FAILURE = 5
    NOTIFICATION = 6
    ADVERT = 7


# Header keys (short: they travel with every message).
METHOD = "m"
NAMESPACE = "ns"
VERSION = "v"
CONTEXT = "ctx"
DEADLINE = "dl"
TIMEOUT = "to"
REPLY_TO = "rt"
AT_LEAST_ONCE = "al"
SENT_AT = "at"
FAILED = "f"
PRIORITY = "p"
EVENT_TYPE = "e"
PUBLISHER = "pub"
OBJECTS = "ov"
"""A call's object versions (name -> version) its caller knows: its reply goes no newer."""

_REQUIRED: dict[Kind, tuple[str, ...]] = {
    Kind.CALL: (METHOD, VERSION, CONTEXT, DEADLINE, REPLY_TO),
    Kind.CAST: (METHOD, VERSION, CONTEXT),
    Kind.REPLY: (),
    Kind.PROGRESS: (),
    Kind.CAST_FAILURE: (METHOD,),
    Kind.NOTIFICATION: (PRIORITY, EVENT_TYPE, PUBLISHER, CONTEXT, SENT_AT),
    Kind.ADVERT: (),
}
_KINDS = {k.value: k for k in Kind}


def new_message_id() -> bytes:
    """A random 128-bit message id."""
    return os.urandom(16)


def encode(
    serializer: Serializer,
    kind: Kind,
    message_id: bytes,
    header: Mapping[str, Any],
    body: Any = None,
    *,
    manifest: Mapping[str, str] | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    scope: str = "",
) -> bytes:
    """Encode one envelope in a single msgpack pass.

    Errors name the message as ``scope.method`` (``scope``: the topic, for a
    reply the method; e.g. ``conductor.update_instance``), computed only on
    error: a value that cannot be encoded is named by its argument (or as the
    result or payload), not by its place in the envelope. An argument whose length
    alone shows it exceeds ``max_size`` is refused before anything is encoded.
    """
    if body is not None:
        # A lower bound of the size from lengths alone (no walk: this runs for every
        # message), so a 100 MB argument is refused before copies of it are built.
        least = 0
        for value in body.values() if type(body) is dict else (body,):
            if type(value) in _SIZED:
                least += len(value)
            elif type(value) is memoryview:
                least += value.nbytes
        if least > max_size:
            _refuse(kind, header, body, max_size, scope)
    try:
        data = serializer.dumps([ENVELOPE_VERSION, int(kind), message_id, header, body], manifest)
    except SerializationError as exc:
        what = _message_name(scope, header)
        raise _in_terms_of_the_message(exc, kind, body, what) from None
    if len(data) > max_size:
        what = _body_name(kind, _message_name(scope, header))
        raise MessageTooLarge(len(data), max_size, what=what)
    return data


# --- naming what cannot be sent ---------------------------------------------------

_BODY_INDEX = 4
_SIZED = frozenset({str, bytes, bytearray, list, tuple, dict, set, frozenset})
"""Types whose length bounds their encoded size from below (a byte per character or item)."""


def _message_name(scope: str, header: Mapping[str, Any]) -> str:
    """``topic.method`` for requests, the method for replies, the event type for notifications."""
    method = header.get(METHOD)
    if isinstance(method, str):
        return f"{scope}.{method}" if scope else method
    event_type = header.get(EVENT_TYPE)
    if isinstance(event_type, str):
        return f"notification {event_type}"
    return scope


def _body_name(kind: Kind, what: str) -> str:
    of = f" of {what}" if what else ""
    if kind is Kind.CALL or kind is Kind.CAST:
        return f"the arguments{of}"
    if kind is Kind.REPLY:
        return f"the result{of}"
    if kind is Kind.NOTIFICATION:
        return f"the payload{of}"
    return f"the body{of}"


def _in_terms_of_the_message(
    exc: SerializationError, kind: Kind, body: Any, what: str
) -> SerializationError:
    """``exc`` re-worded: the argument (or result, payload) instead of ``[4]['name']``."""
    path, where = exc.path, exc.where
    if not path or path[0] != _BODY_INDEX or not exc.type_name:
        name = _body_name(kind, what)
        return SerializationError(str(exc).replace("cannot serialize", f"cannot serialize {name}:"))
    rest = where[1:]
    if (kind is Kind.CALL or kind is Kind.CAST) and type(body) is dict and len(path) > 1:
        name = f"argument {path[1]!r}" + (f" of {what}" if what else "")
        rest = where[2:]
    else:
        name = _body_name(kind, what)
    inside = f" at {''.join(rest)}" if rest else ""
    return SerializationError(
        f"cannot serialize {name}: {exc.type_name}{inside} ({exc.reason})",
        path=path[1:],
        where=where[1:],
        type_name=exc.type_name,
        reason=exc.reason,
    )


def _refuse(kind: Kind, header: Mapping[str, Any], body: Any, max_size: int, scope: str) -> None:
    """Raise MessageTooLarge for a body whose lengths alone exceed ``max_size``.

    A string or bytes takes at least a byte per character, a container at
    least a byte per item; a blob nested deeper is refused once encoded.
    """
    sizes = _sizes(body)
    what = _message_name(scope, header)
    name, largest = max(sizes.items(), key=lambda item: item[1])
    if (kind is Kind.CALL or kind is Kind.CAST) and type(body) is dict and largest > max_size:
        part = f"argument {name!r}" + (f" of {what}" if what else "")
        raise MessageTooLarge(largest, max_size, at_least=True, what=part)
    total = sum(sizes.values())
    raise MessageTooLarge(total, max_size, at_least=True, what=_body_name(kind, what))


def _sizes(body: Any) -> dict[Any, int]:
    """Lower bounds of the encoded sizes of ``body``'s values (or of ``body``), by length."""
    sizes: dict[Any, int] = {}
    for key, value in body.items() if type(body) is dict else ((None, body),):
        t = type(value)
        if t in _SIZED:
            sizes[key] = len(value)
        elif t is memoryview:
            sizes[key] = value.nbytes
    return sizes


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded envelope header; the body stays encoded until :meth:`body` is asked."""

    kind: Kind
    message_id: bytes
    header: Mapping[str, Any]
    raw: bytes
    body_offset: int

    def body(self, serializer: Serializer, ctx: Mapping[str, Any] | None = None) -> Any:
        """Decode the body (versioned objects, rich types) with ``serializer``."""
        return serializer.loads(memoryview(self.raw)[self.body_offset :], ctx)

    def get(self, key: str, default: Any = None) -> Any:
        return self.header.get(key, default)


def decode(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Envelope:
    """Decode the envelope header; raise MalformedMessage naming what is wrong."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage(f"expected bytes, got {type(data).__name__}")
    raw = bytes(data)
    if len(raw) > max_size:
        raise MessageTooLarge(len(raw), max_size)
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(raw), 1), strict_map_key=False)
    unpacker.feed(raw)
    try:
        length = unpacker.read_array_header()
    except (msgpack.OutOfData, ValueError, msgpack.UnpackException) as exc:
        raise MalformedMessage(f"not an rpclib envelope (no msgpack array): {exc}") from None
    try:
        version = unpacker.unpack() if length >= 1 else None
        if type(version) is not int or version != ENVELOPE_VERSION:
            raise UnsupportedEnvelope(version, ENVELOPE_VERSION)
        if length != 5:
            raise MalformedMessage(f"envelope has {length} items, expected 5")
        kind_value = unpacker.unpack()
        message_id = unpacker.unpack()
        header = unpacker.unpack()
        offset = unpacker.tell()
    except MalformedMessage:
        raise
    except (msgpack.OutOfData, ValueError, TypeError, msgpack.UnpackException) as exc:
        raise MalformedMessage(f"truncated or corrupt envelope: {exc}") from None
    kind = _KINDS.get(kind_value) if type(kind_value) is int else None
    if kind is None:
        raise MalformedMessage(f"unknown envelope kind {kind_value!r}")
    if type(message_id) is not bytes or len(message_id) != 16:
        raise MalformedMessage(f"bad message id {message_id!r:.40}: expected 16 bytes")
    if type(header) is not dict:
        raise MalformedMessage(f"envelope header is {type(header).__name__}, expected a map")
    missing = [key for key in _REQUIRED[kind] if key not in header]
    if missing:
        raise MalformedMessage(f"{kind.name} envelope lacks header field(s) {', '.join(missing)}")
    if offset >= len(raw):
        raise MalformedMessage("envelope has no body")
    return Envelope(kind, message_id, header, raw, offset)


@dataclass(frozen=True, slots=True)
class Prefix:
    """What every envelope version keeps (see the module docstring); None where unusable."""

    version: object
    kind: Kind | None
    message_id: bytes | None
    reply_to: str | None
    method: str | None
    at_least_once: bool

    def stand_in(self) -> Envelope | None:
        """An envelope of this reader's version carrying the prefix (body empty), to answer with.

        None when the prefix has no kind or message id this reader knows.
        """
        if self.kind is None or self.message_id is None:
            return None
        header: dict[str, Any] = {METHOD: self.method or "?"}
        if self.reply_to is not None:
            header[REPLY_TO] = self.reply_to
        if self.at_least_once:
            header[AT_LEAST_ONCE] = True
        return Envelope(self.kind, self.message_id, header, b"", 0)


def read_prefix(data: bytes) -> Prefix:
    """Read the prefix of an envelope of any version, leniently (never raises)."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(data), 1), strict_map_key=False)
    unpacker.feed(data)
    items: list[Any] = []
    try:
        length = unpacker.read_array_header()
        for _ in range(min(length, 4)):
            items.append(unpacker.unpack())
    except Exception:  # whatever was read so far is still usable
        pass
    items += [None] * (4 - len(items))
    version, kind_value, message_id, header = items
    kind = _KINDS.get(kind_value) if type(kind_value) is int else None
    if type(message_id) is not bytes or len(message_id) != 16:
        message_id = None
    if type(header) is not dict:
        header = {}
    reply_to, method = header.get(REPLY_TO), header.get(METHOD)
    return Prefix(
        version=version,
        kind=kind,
        message_id=message_id,
        reply_to=reply_to if type(reply_to) is str and reply_to else None,
        method=method if type(method) is str else None,
        at_least_once=header.get(AT_LEAST_ONCE) is True,
    )
