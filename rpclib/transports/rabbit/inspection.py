"""What an operator asks of a ``rabbit://`` bus: topics, queue depths, dead-letter repair.

All of it runs over AMQP on a pooled connection of the driver, so it needs no
management plugin:

- *topics*: a queue of its own (server-named, exclusive) bound with ``#`` to
  the adverts exchange hears every advert refresh; after ``listen`` seconds
  (servers refresh every ``advert_interval``, 10 s by default) the topics
  heard are those with a live server;
- *queue depths*: a passive declare of each queue a topic's address names
  (``X.T``, ``X.T.live``, ``X.T@S``, ``X.T@S.live``) returns its ready
  messages and consumers; a queue that does not exist is left out, and so
  is a live server's exclusive ``X.T@S.live`` (only its own connection may
  look at it; it holds at-most-once calls, handed over at once);
- *dead letters* (replay, purge): the bounded dead-letter queue is read with
  ``basic.get``; the letters chosen are republished or dropped and acked, the
  others are given back in place (``basic.recover``). A replayed letter goes
  to the queue it came from (its ``x-rpclib-source``) through the default
  exchange, confirmed and mandatory, with its ``x-rpclib-attempts`` so that
  it arrives as one more attempt. It is republished by the operator's
  account: a consumer believes its carried original sender only if that
  account is the consumer's own (:func:`~rpclib.transports.rabbit.consumer.sender_of`),
  else it arrives unauthenticated.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from amqp import spec
from amqp.exceptions import NotFound, ResourceLocked

from rpclib.exceptions import Undeliverable
from rpclib.transports.base import Address, DeadLetter, QueueDepth
from rpclib.transports.rabbit import naming
from rpclib.transports.rabbit.adverts import SERVER, WITHDRAWN
from rpclib.transports.rabbit.connection import body_of, headers_of
from rpclib.transports.rabbit.consumer import (
    ATTEMPTS,
    DELIVERY_COUNT,
    EXPIRES_AT,
    REASON,
    SOURCE,
)

if TYPE_CHECKING:
    from rpclib.transports.rabbit.consumer import Settler
    from rpclib.transports.rabbit.publisher import PublisherPool

_POLL: Final = 0.05
"""Seconds between reads of the topic-listening queue when it is empty."""
_SCAN_LIMIT: Final = 20_000
"""Dead letters read at most per replay or purge (the queue keeps at most 10,000)."""


def advertised_topics(
    pool: PublisherPool, exchange: str, listen: float, deadline: float
) -> list[str]:
    """The topics of ``exchange`` whose servers refreshed an advert within ``listen`` seconds."""
    topics: dict[str, set[str]] = {}
    with pool.with_channel(deadline) as publisher, _reads(publisher, deadline):
        channel = publisher.channel
        try:
            channel.exchange_declare(naming.adverts_exchange(exchange), "topic", passive=True)
        except NotFound:
            publisher.open_channel()  # a failed passive declare closes the channel
            return []
        queue, _, _ = channel.queue_declare("", exclusive=True, auto_delete=True)
        try:
            channel.queue_bind(queue, naming.adverts_exchange(exchange), "#")
            end = time.monotonic() + listen
            while time.monotonic() < end:
                message = channel.basic_get(queue, no_ack=True)
                if message is None:
                    time.sleep(_POLL)
                    continue
                _heard(topics, message)
        finally:
            channel.queue_delete(queue)
    return sorted(topic for topic, servers in topics.items() if servers)


def _heard(topics: dict[str, set[str]], message: Any) -> None:
    """Note an advert (or withdrawal) from the adverts exchange; sync requests are ignored."""
    key = message.delivery_info.get("routing_key", "")
    headers = headers_of(message)
    if not isinstance(key, str) or key.endswith(naming.SYNC_SUFFIX):
        return
    split = naming.split_advert_key(key)
    server: object
    if split is not None:
        topic, server = split
    elif naming.ADVERT_SEPARATOR in key:  # a malformed server-keyed advert
        return
    else:  # an older release's advert: keyed by topic, the server in a header
        topic, server = key, headers.get(SERVER)
    if not topic or not isinstance(server, str) or not server:
        return
    servers = topics.setdefault(topic, set())
    if headers.get(WITHDRAWN):
        servers.discard(server)
    else:
        servers.add(server)


def queue_depths(
    pool: PublisherPool, exchange: str, topic: str, servers: list[str], deadline: float
) -> list[QueueDepth]:
    """Ready messages and consumers of the topic's queues and those of ``servers`` that exist."""
    names: list[str] = []
    for address in [Address(exchange, topic)] + [
        Address(exchange, topic, server=s) for s in sorted(servers)
    ]:
        names += [naming.queue_name(address), naming.queue_name(address, live=True)]
    found: list[QueueDepth] = []
    with pool.with_channel(deadline) as publisher, _reads(publisher, deadline):
        for name in names:
            try:
                _, messages, consumers = publisher.channel.queue_declare(name, passive=True)
            except (NotFound, ResourceLocked):
                # missing, or a live server's exclusive queue (its connection's own)
                publisher.open_channel()
                continue
            found.append(QueueDepth(name, int(messages), int(consumers)))
    return found


def replay_dead_letter(
    pool: PublisherPool, settler: Settler, key: str, deadline: float
) -> DeadLetter:
    """Republish the dead letter ``key`` to its source queue, then remove it (module doc)."""
    settler.ensure_dead_letter_queue(deadline)
    with pool.with_channel(deadline) as publisher, _reads(publisher, deadline):
        channel = publisher.channel
        try:
            for message, letter in _scan(channel):
                if letter.key != key:
                    continue
                if not naming.MAX_NAME_BYTES >= len(letter.address.encode()) > 0:
                    raise Undeliverable(letter.address, "the dead letter names no queue")
                settler.republish(letter.address, letter.body, _replay_properties(message))
                channel.basic_ack(message.delivery_info["delivery_tag"])
                return letter
        finally:
            channel.send_method(spec.Basic.Recover, "b", (True,), wait=spec.Basic.RecoverOk)
    raise KeyError(f"no dead letter with key {key!r} in {naming.DEAD_LETTER_QUEUE}")


def purge_dead_letters(
    pool: PublisherPool, settler: Settler, keys: list[str] | None, deadline: float
) -> int:
    """Drop the dead letters with ``keys`` (all with None); how many went."""
    settler.ensure_dead_letter_queue(deadline)
    with pool.with_channel(deadline) as publisher, _reads(publisher, deadline):
        channel = publisher.channel
        if keys is None:
            return int(channel.queue_purge(naming.DEAD_LETTER_QUEUE))
        wanted = list(keys)
        count = 0
        try:
            for message, letter in _scan(channel):
                if letter.key in wanted:
                    wanted.remove(letter.key)
                    channel.basic_ack(message.delivery_info["delivery_tag"])
                    count += 1
                    if not wanted:
                        break
        finally:
            channel.send_method(spec.Basic.Recover, "b", (True,), wait=spec.Basic.RecoverOk)
        return count


def _reads(publisher: Any, deadline: float) -> Any:
    """Bound each read from the broker by what is left until ``deadline``."""
    return publisher.conn.transport.having_timeout(max(0.1, deadline - time.monotonic()))


def _scan(channel: Any) -> Iterator[tuple[Any, DeadLetter]]:
    """Yield (message, DeadLetter) from the dead-letter queue, unacked, oldest first."""
    for _ in range(_SCAN_LIMIT):
        message = channel.basic_get(naming.DEAD_LETTER_QUEUE, no_ack=False)
        if message is None:
            return
        yield message, letter_of(message)


def letter_of(message: Any) -> DeadLetter:
    """The DeadLetter a message of the dead-letter queue holds (as ``dead_letters`` reads it)."""
    headers = headers_of(message)
    return DeadLetter(
        address=str(headers.get(SOURCE, "?")),
        body=body_of(message),
        reason=str(headers.get(REASON, "")),
        attempts=int(headers.get(ATTEMPTS, 1)),
    )


def _replay_properties(message: Any) -> dict[str, Any]:
    """The properties of a replayed copy: the original's, minus what dead-lettering added."""
    headers = headers_of(message)
    for name in (REASON, SOURCE, DELIVERY_COUNT, EXPIRES_AT):
        headers.pop(name, None)
    headers[ATTEMPTS] = int(headers.get(ATTEMPTS, 1))
    props = {
        key: value
        for key, value in message.properties.items()
        if key not in ("application_headers", "message_id", "expiration", "user_id")
    }
    props["application_headers"] = headers
    return props
