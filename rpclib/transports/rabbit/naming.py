"""Every name the RabbitMQ driver creates on the broker, in one place.

Operators read these in the management UI, so they follow the table in
``docs/transports/rabbit.md`` exactly. Addresses are checked here too: a few
characters and suffixes carry meaning in the scheme (``@`` separates server
from topic, ``#`` group from topic, ``.live``/``.sync`` mark at-most-once and
advert-sync routing keys), so names that would make two addresses collide
are refused with a ValueError instead of silently crossing traffic.
"""

from __future__ import annotations

import itertools
import os
import socket
from typing import Final

from rpclib.transports.base import Address

REPLY_PREFIX: Final = "rpclib.reply."
"""Reply queues are vhost-wide: open_inbox() knows no exchange."""
DEAD_LETTER_QUEUE: Final = "rpclib.dead-letters.bounded"
"""One dead-letter queue per vhost, so dead_letters() can read it with no exchange given.
Bounded (``declarations.dead_letter_queue_arguments``); a new name because RabbitMQ
refuses to redeclare a queue with other arguments, so the unbounded queue of older
releases (:data:`LEGACY_DEAD_LETTER_QUEUE`) could never gain the bound in place."""
LEGACY_DEAD_LETTER_QUEUE: Final = "rpclib.dead-letters"
"""The unbounded dead-letter queue of older releases: no longer written; reported if found."""
QUEUES_EXCHANGE: Final = "rpclib.queues"
"""The topic exchange of everything addressed to one queue by its name: replies,
requeued copies and dead letters. Every such queue is bound to it with its own
name as the key, so topic permissions can say which queues an account may
write (RabbitMQ's default exchange takes any queue name and has none)."""
ROUTED_INBOX_SUFFIX: Final = ".q"
"""Ends the name of a reply queue bound to :data:`QUEUES_EXCHANGE`: servers reply to
it there. Older releases' reply queues lack it and are reached only through the
default exchange (``old_peers``, docs/transports/rabbit.md "Rolling upgrade")."""
ADVERT_SEPARATOR: Final = ".@."
"""Separates topic and server in an advert's routing key (topics hold no ``@``)."""
LIVE_SUFFIX: Final = ".live"
SYNC_SUFFIX: Final = ".sync"
MAX_NAME_BYTES: Final = 255
"""AMQP short strings (queue, exchange and routing-key names) are at most 255 bytes."""

_PRIVATE_SUFFIX_ROOM: Final = 80
"""Bytes kept free for ``<host>.<pid>.<n>`` when checking fanout name lengths
(plus the principal's, which the driver passes to :func:`check_address`)."""
_counter = itertools.count(1)
_RESERVED_TOPIC_CHARS: Final = ("@", "#", "*")
_RESERVED_CHARS: Final = ("#", "*")
_RESERVED_ENDINGS: Final = (LIVE_SUFFIX, SYNC_SUFFIX)


def _host() -> str:
    # No "*" in any name rpclib makes: queue_key() relies on it.
    return socket.gethostname().split(".")[0].replace("*", "-") or "host"


def private_suffix() -> str:
    """``<host>.<pid>.<n>``: unique among every process sharing the broker."""
    return f"{_host()}.{os.getpid()}.{next(_counter)}"


def private_name(principal: str) -> str:
    """``<principal>.<host>.<pid>.<n>``: a private queue's own part, its owner first.

    The principal (the broker user the driver logs in as, which contains no
    ``.``) comes first so an account's permissions can grant its private
    queues by name prefix (:mod:`rpclib.transports.rabbit.access`).
    """
    return f"{principal}.{private_suffix()}"


# --- checks ---------------------------------------------------------------------


def _check(kind: str, name: str, reserved: tuple[str, ...]) -> None:
    if not name:
        raise ValueError(f"{kind} name must not be empty")
    for char in reserved:
        if char in name:
            raise ValueError(f"{kind} name {name!r} contains {char!r}, reserved by rabbit://")
    if name.endswith(_RESERVED_ENDINGS):
        raise ValueError(
            f"{kind} name {name!r} ends with a suffix rabbit:// reserves "
            f"({' or '.join(_RESERVED_ENDINGS)})"
        )


def check_exchange(exchange: str) -> None:
    """Refuse control exchanges RabbitMQ or this scheme reserves."""
    _check("exchange", exchange, _RESERVED_CHARS)
    if exchange == QUEUES_EXCHANGE:
        raise ValueError(f"exchange name {exchange!r} is rabbit://'s own exchange of queues")
    if exchange.startswith("amq."):
        raise ValueError(f"exchange name {exchange!r}: the 'amq.' prefix is reserved by RabbitMQ")


def check_address(address: Address, group: str | None = None, principal: str = "") -> None:
    """Refuse addresses whose names would collide with another address's names.

    ``principal`` starts the names of private (fanout) queues: it counts towards their length.
    """
    if group is not None and (address.fanout or address.server is not None):
        raise ValueError(f"consumer groups apply to topics only, not to {address}")
    check_exchange(address.exchange)
    _check("topic", address.topic, _RESERVED_TOPIC_CHARS)
    if address.server is not None:
        _check("server", address.server, _RESERVED_CHARS)
    if group is not None:
        _check("group", group, _RESERVED_CHARS)
    if address.exchange == "rpclib" and (
        address.topic == "dead-letters" or address.topic.startswith(("dead-letters.", "reply."))
    ):
        raise ValueError(
            f"topic {address.topic!r} on exchange 'rpclib' would collide with the "
            f"driver's own {DEAD_LETTER_QUEUE} / {REPLY_PREFIX}* queues"
        )
    if address.fanout:
        room = _PRIVATE_SUFFIX_ROOM + (len(principal.encode()) + 1 if principal else 0)
        longest = f"{fanout_exchange(address)}.{'x' * room}"
    else:
        longest = queue_name(address, group, live=True)
    if len(longest.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"the queue names of {address} would exceed AMQP's 255 bytes")


# --- names ------------------------------------------------------------------------


def queue_name(address: Address, group: str | None = None, *, live: bool = False) -> str:
    """``X.T``, ``X.T#G`` or ``X.T@S`` (plus ``.live`` for the at-most-once queue)."""
    base = f"{address.exchange}.{address.topic}"
    if address.server is not None:
        base = f"{base}@{address.server}"
    elif group is not None:
        base = f"{base}#{group}"
    return base + LIVE_SUFFIX if live else base


def routing_key(address: Address, *, live: bool = False) -> str:
    """``T`` or ``T@S`` (plus ``.live``) on the control exchange ``X``."""
    key = address.topic if address.server is None else f"{address.topic}@{address.server}"
    return key + LIVE_SUFFIX if live else key


def fanout_exchange(address: Address) -> str:
    return f"{address.exchange}.{address.topic}.fanout"


def fanout_queue(address: Address, principal: str) -> str:
    """``X.T.fanout.<principal>.<host>.<pid>.<n>``."""
    return f"{fanout_exchange(address)}.{private_name(principal)}"


def reply_queue(principal: str) -> str:
    """``rpclib.reply.<principal>.<host>.<pid>.<n>.q``: bound to :data:`QUEUES_EXCHANGE`."""
    return REPLY_PREFIX + private_name(principal) + ROUTED_INBOX_SUFFIX


def queue_key(queue: str) -> str:
    """The routing (and binding) key of ``queue`` on :data:`QUEUES_EXCHANGE`: its name with
    every ``.`` as ``*``.

    One word, because a topic exchange walks its trie a word at a time: on
    RabbitMQ 3.10 an 8-word key cost the broker ~17 µs more per publish than the
    default exchange, a one-word key ~3 µs. No name rpclib makes holds a ``*``
    (refused in every part, and in hosts' names), so no two queues share a key;
    and a ``*`` inside a word is no wildcard.
    """
    return queue.replace(".", "*")


def queue_of_key(key: str) -> str:
    """The queue a key of :data:`QUEUES_EXCHANGE` addresses (the inverse of :func:`queue_key`)."""
    return key.replace("*", ".")


def is_routed_inbox(name: str) -> bool:
    """Whether the inbox ``name`` is bound to :data:`QUEUES_EXCHANGE` (not an older release's)."""
    return name.endswith(ROUTED_INBOX_SUFFIX)


def is_reply_queue(name: str) -> bool:
    """Whether ``name`` looks like an inbox address (send_to_inbox refuses anything else)."""
    return name.startswith(REPLY_PREFIX) and len(name.encode()) <= MAX_NAME_BYTES


def adverts_exchange(exchange: str) -> str:
    return f"{exchange}.adverts"


def adverts_queue(exchange: str, principal: str) -> str:
    """``X.adverts.<principal>.<host>.<pid>.<n>``."""
    return f"{adverts_exchange(exchange)}.{private_name(principal)}"


def sync_key(topic: str) -> str:
    return topic + SYNC_SUFFIX


def advert_key(topic: str, server: str) -> str:
    """``T.@.S``: the routing key of ``server``'s adverts of ``topic`` on ``X.adverts``.

    The server is in the key, so a topic permission can pin an account to the
    servers it may advertise as; the ``@`` word (never in a topic) keeps topics
    that are prefixes of each other apart.
    """
    return f"{topic}{ADVERT_SEPARATOR}{server}"


def advert_binding(topic: str) -> str:
    """``T.@.#``: a watcher's binding, matching the adverts of every server of ``topic``."""
    return f"{topic}{ADVERT_SEPARATOR}#"


def split_advert_key(key: str) -> tuple[str, str] | None:
    """``(topic, server)`` of an advert key ``T.@.S``, or None if it is no such key.

    A topic holds no ``@``, so the first separator is the one after the topic.
    """
    topic, separator, server = key.partition(ADVERT_SEPARATOR)
    if not separator or not topic or not server:
        return None
    return topic, server


def server_of_advert_key(key: str, topic: str) -> str | None:
    """The server an advert key of ``topic`` names, or None if it is no such key."""
    split = split_advert_key(key)
    return split[1] if split is not None and split[0] == topic else None
