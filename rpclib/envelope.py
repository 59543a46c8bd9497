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
    what: str = "",
) -> bytes:
    """Encode one envelope in a single msgpack pass.

    ``what`` names the message in errors (e.g. ``"conductor.update_instance"``):
    a value that cannot be encoded is named by its argument (or as the result
    or payload), not by its place in the envelope. An argument whose length
    alone shows it exceeds ``max_size`` is refused before anything is encoded.
    """
    if body is not None:
        _refuse_if_too_large(kind, body, max_size, what)
    try:
        data = serializer.dumps([ENVELOPE_VERSION, int(kind), message_id, header, body], manifest)
    except SerializationError as exc:
        raise _in_terms_of_the_message(exc, kind, body, what) from None
    if len(data) > max_size:
        raise MessageTooLarge(len(data), max_size, what=_body_name(kind, what))
    return data


# --- naming what cannot be sent ---------------------------------------------------

_BODY_INDEX = 4
_LENGTH_BOUND: dict[type, int] = {
    str: 1,  # UTF-8 takes at least a byte per character
    bytes: 1,
    bytearray: 1,
    list: 1,  # every item takes at least a byte
    tuple: 1,
    set: 1,
    frozenset: 1,
    dict: 2,  # a key and a value per item
}


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


def _refuse_if_too_large(kind: Kind, body: Any, max_size: int, what: str) -> None:
    """Raise MessageTooLarge if ``body`` certainly encodes to more than ``max_size`` bytes.

    A cheap lower bound, from lengths only (no walk: it runs for every
    message): a string or bytes argument takes at least its length, a
    container at least a byte per item. So a 100 MB argument is refused
    before a copy of it is built (packer buffer, then message); a blob
    nested deeper is refused once encoded, as before.
    """
    if type(body) is dict and (kind is Kind.CALL or kind is Kind.CAST):
        total = 1
        bound = _LENGTH_BOUND.get
        for name, value in body.items():
            per_item = bound(type(value))
            if per_item is not None:
                size = per_item * len(value)
            elif type(value) is memoryview:
                size = value.nbytes
            else:
                continue  # a number, None, an object...: small, or only encoding tells
            if size > max_size:
                arg = f"argument {name!r}" + (f" of {what}" if what else "")
                raise MessageTooLarge(size, max_size, at_least=True, what=arg)
            total += size
    else:
        total = _at_least(body)
    if total > max_size:
        raise MessageTooLarge(total, max_size, at_least=True, what=_body_name(kind, what))


def _at_least(value: Any) -> int:
    """A lower bound of ``value``'s encoded size, from its length alone."""
    t = type(value)
    per_item = _LENGTH_BOUND.get(t)
    if per_item is not None:
        return per_item * len(value) + 1
    if t is memoryview:
        return int(value.nbytes) + 1
    return 1


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
