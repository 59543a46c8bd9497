"""How rpclib bodies and their bookkeeping ride in AMQP 1.0 messages.

The body is one ``data`` section (opaque bytes); the attempt count, expiry
and dead-letter details are application properties named like the
RabbitMQ driver's headers. The sender is the ``user-id`` property, which
RabbitMQ checks against the connection's user (see :func:`sender_of`).
"""

from __future__ import annotations

import time
from typing import Any, Final

from proton import Message

ATTEMPTS: Final = "x-rpclib-attempts"
EXPIRES_AT: Final = "x-rpclib-expires-at"
REASON: Final = "x-rpclib-reason"
SOURCE: Final = "x-rpclib-source"
SERVER: Final = "x-rpclib-server"
TTL: Final = "x-rpclib-ttl"
WITHDRAWN: Final = "x-rpclib-withdrawn"
TOPIC: Final = "x-rpclib-topic"
RELAYED_SENDER: Final = "x-rpclib-sender"
"""The original sender of a message the driver re-published (requeue, dead letter); "" when
it had none. Believed only when the re-publisher (its verified ``user-id``) is the reader."""


def make(
    body: bytes,
    *,
    durable: bool = False,
    expires_at: float | None = None,
    properties: dict[str, Any] | None = None,
) -> Message:
    """A message carrying ``body``; ``expires_at`` (wall clock) also becomes its TTL."""
    props: dict[str, Any] = dict(properties) if properties else {}
    if expires_at is not None:
        props[EXPIRES_AT] = float(expires_at)
    message = Message(body=body, durable=durable, properties=props or None)
    if expires_at is not None:
        message.ttl = max(0.001, expires_at - time.time())
    return message


def body_of(message: Message) -> bytes:
    body = message.body
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    raise ValueError(f"not an rpclib message: its body is {type(body).__name__}")


def props_of(message: Message) -> dict[str, Any]:
    return dict(message.properties or {})


def expired(props: dict[str, Any]) -> bool:
    at = props.get(EXPIRES_AT)
    return isinstance(at, float | int) and at < time.time()


def sender_of(message: Message, props: dict[str, Any], own_user: str) -> str | None:
    """The principal that sent ``message``, by its broker-verified ``user-id``.

    A copy the driver re-published for requeue carries the original sender in
    :data:`RELAYED_SENDER`; that is believed only when the copy's verified
    ``user-id`` is ``own_user`` (this connection's user re-published it: nobody
    else can put that ``user-id`` on a message). A relayed copy from anyone
    else has no sender (it cannot be vouched for), so a policy refuses it.
    """
    raw = message.user_id
    if not raw:
        return None
    user = bytes(raw).decode("utf-8", "replace")
    if RELAYED_SENDER not in props:
        return user
    relayed = props[RELAYED_SENDER]
    if user != own_user or not isinstance(relayed, str) or not relayed:
        return None
    return relayed
