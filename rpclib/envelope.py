"""The one wire envelope: a msgpack array encoded once per message.

Layout (envelope version 1)::

    [ENVELOPE_VERSION, kind, message_id, header, body]

``header`` is a map of plain values (strings, numbers, ctx) that a receiver
can read without decoding the body: a server checks method, version and
deadline, and a client routes a reply by ``message_id``, before anything
heavier happens. ``body`` holds the arguments, result or payload, with
versioned objects and rich types, and is decoded lazily by the thread that
needs it. The whole array is still produced by a single msgpack pass.

An envelope version this reader does not know is rejected with
:class:`~rpclib.exceptions.UnsupportedEnvelope` naming it.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from rpclib.exceptions import MalformedMessage, MessageTooLarge, UnsupportedEnvelope
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
) -> bytes:
    """Encode one envelope in a single msgpack pass."""
    data = serializer.dumps([ENVELOPE_VERSION, int(kind), message_id, header, body], manifest)
    if len(data) > max_size:
        raise MessageTooLarge(len(data), max_size)
    return data


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
        if version != ENVELOPE_VERSION:
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
