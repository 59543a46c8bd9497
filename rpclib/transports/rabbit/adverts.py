"""Adverts over the ``X.adverts`` topic exchange.

An advert is a non-persistent message with routing key ``T.@.S`` (topic and
server, :func:`naming.advert_key`) and the TTL in its headers; a withdrawal
is the same with a ``withdrawn`` header and no body. Because the server is in
the key, a topic permission pins each account to the servers it may
advertise (rabbit/access.py): the watcher takes the server from the key,
never from a header. A watcher binds an exclusive queue to ``T.@.#``; to
learn the adverts published *before* it started, it publishes a sync request
on ``T.sync``, and every driver that owns adverts of ``T`` (its
:class:`AdvertOwner` queue is bound to ``T.sync``) publishes them again on
the exchange: every watcher of ``T`` hears them (a repeat is a refresh), and
no one ever writes into another's queue.

With ``old_peers`` (a rolling upgrade, docs/transports/rabbit.md) each advert
and withdrawal also goes out keyed ``T`` with the server in the
:data:`SERVER` header, as older releases publish and watch them, and a
watcher also binds ``T`` and believes that header.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from rpclib.transports.base import AdvertHandler
from rpclib.transports.rabbit import naming
from rpclib.transports.rabbit.connection import (
    CONNECTION_ERRORS,
    ConnectionDown,
    body_of,
    expiration_ms,
    headers_of,
)

if TYPE_CHECKING:
    from rpclib.transports.rabbit.io_thread import Session

LOG = logging.getLogger("rpclib.transports.rabbit")

SERVER: Final = "x-rpclib-server"
TTL: Final = "x-rpclib-ttl"
WITHDRAWN: Final = "x-rpclib-withdrawn"
TOPIC: Final = "x-rpclib-topic"


def advert_message(server: str, body: bytes, ttl: float) -> tuple[bytes, dict[str, Any]]:
    """Body and properties of an advert (or refresh) valid for ``ttl`` seconds."""
    return body, {
        "application_headers": {SERVER: server, TTL: float(ttl)},
        "expiration": expiration_ms(ttl),
    }


def withdrawal_message(server: str) -> tuple[bytes, dict[str, Any]]:
    return b"", {"application_headers": {SERVER: server, WITHDRAWN: True}}


def publish_advert(
    session: Session,
    exchange: str,
    topic: str,
    server: str,
    payload: bytes,
    properties: dict[str, Any],
    *,
    deadline: float,
    wait_for_connection: bool,
) -> None:
    """Publish an advert or withdrawal of ``server`` on ``topic`` to the adverts ``exchange``:
    keyed ``T.@.S``, and also ``T`` for older releases' watchers with ``old_peers``."""
    keys = [naming.advert_key(topic, server)]
    if session.options.old_peers:
        keys.append(topic)
    for key in keys:
        session.publisher.publish(
            exchange,
            key,
            payload,
            properties,
            target=f"adverts of {topic}",
            mandatory=False,
            deadline=deadline,
            wait_for_connection=wait_for_connection,
        )


@dataclass(slots=True)
class _Owned:
    body: bytes
    expires: float  # monotonic


class AdvertOwner:
    """This driver's adverts on one control exchange, and its queue for sync requests."""

    def __init__(self, session: Session, exchange: str) -> None:
        self.session = session
        self.exchange = naming.adverts_exchange(exchange)
        self.queue = naming.adverts_queue(exchange, session.options.principal)
        self.lock = threading.Lock()
        self.adverts: dict[tuple[str, str], _Owned] = {}
        self.topics: set[str] = set()
        self.channel: Any = None
        self.epoch = 0

    def __repr__(self) -> str:
        return f"<rabbit AdvertOwner {self.queue}>"

    # -- the table (any thread) ------------------------------------------------------

    def record(self, topic: str, server: str, body: bytes, ttl: float) -> None:
        with self.lock:
            self.adverts[(topic, server)] = _Owned(body, time.monotonic() + ttl)

    def forget(self, topic: str, server: str) -> None:
        with self.lock:
            self.adverts.pop((topic, server), None)

    def live(self, topic: str | None = None) -> list[tuple[str, str, bytes, float]]:
        """(topic, server, body, seconds left) of the unexpired adverts (of ``topic``)."""
        now = time.monotonic()
        with self.lock:
            for key in [k for k, owned in self.adverts.items() if owned.expires <= now]:
                del self.adverts[key]
            return [
                (t, s, owned.body, owned.expires - now)
                for (t, s), owned in sorted(self.adverts.items())
                if topic is None or t == topic
            ]

    # -- on the connection (I/O thread) -------------------------------------------------

    def start(self) -> None:
        self.setup(self.session, recovering=False)
        self.session.register(self)

    def setup(self, session: Session, *, recovering: bool) -> None:
        session.declare_exchange(self.exchange, "topic")
        control = session.control()
        control.queue_declare(self.queue, durable=False, exclusive=True, auto_delete=True)
        for topic in sorted(self.topics):
            control.queue_bind(self.queue, self.exchange, naming.sync_key(topic))
        channel = session.open_channel()
        self.epoch += 1
        channel.basic_consume(
            self.queue,
            no_ack=True,
            callback=functools.partial(self._on_sync, self.epoch),
            on_cancel=functools.partial(self._on_broker_cancel, self.epoch),
        )
        self.channel = channel
        if recovering:
            for topic, server, body, left in self.live():
                self._publish(topic, server, body, left)

    def bind_topic(self, topic: str) -> None:
        """Hear sync requests for ``topic`` from now on (I/O thread)."""
        if topic not in self.topics:
            self.session.control().queue_bind(self.queue, self.exchange, naming.sync_key(topic))
            self.topics.add(topic)

    def _publish(self, topic: str, server: str, body: bytes, ttl: float) -> None:
        payload, props = advert_message(server, body, ttl)
        publish_advert(
            self.session,
            self.exchange,
            topic,
            server,
            payload,
            props,
            deadline=time.monotonic() + self.session.options.send_timeout,
            wait_for_connection=False,
        )

    def connection_lost(self) -> None:
        self.channel = None
        self.epoch += 1

    def broken(self) -> bool:
        return self.channel is not None and not self.channel.is_open

    def _on_sync(self, epoch: int, message: Any) -> None:
        self.session.add_event(lambda: self._answer(epoch, message))

    def _answer(self, epoch: int, message: Any) -> None:
        """A watcher started: publish this driver's adverts of the topic again, for all."""
        topic = headers_of(message).get(TOPIC)
        if epoch != self.epoch or not isinstance(topic, str):
            return
        for _, server, body, left in self.live(topic):
            self._publish(topic, server, body, left)

    def stop(self) -> None:
        """Stop hearing sync requests (I/O thread); the exclusive queue goes with its consumer."""
        self.session.unregister(self)
        channel, self.channel = self.channel, None
        self.epoch += 1
        if self.session.channel_alive(channel):
            channel.close()

    def _on_broker_cancel(self, epoch: int, consumer_tag: str) -> None:
        def again() -> None:
            if epoch == self.epoch and self.session.up:
                LOG.warning("advert sync queue %s was deleted; declaring it again", self.queue)
                self.setup(self.session, recovering=True)

        self.session.add_event(again)


class AdvertWatch:
    """One watch_adverts(): an exclusive queue bound to the topic, with TTL expiry."""

    def __init__(self, session: Session, exchange: str, topic: str, handler: AdvertHandler) -> None:
        self.session = session
        self.exchange = naming.adverts_exchange(exchange)
        self.topic = topic
        self.handler = handler
        self.queue = naming.adverts_queue(exchange, session.options.principal)
        self.known: dict[str, float] = {}
        """server -> monotonic expiry of its last advert (I/O thread only)."""
        self.channel: Any = None
        self.epoch = 0
        self.closed = False

    def __repr__(self) -> str:
        return f"<rabbit AdvertWatch {self.queue} on {self.topic}>"

    def start(self) -> None:
        self.setup(self.session, recovering=False)
        self.session.register(self)
        self.session.add_timed(self)

    def setup(self, session: Session, *, recovering: bool) -> None:
        if self.closed:
            return
        session.declare_exchange(self.exchange, "topic")
        control = session.control()
        control.queue_declare(self.queue, durable=False, exclusive=True, auto_delete=True)
        control.queue_bind(self.queue, self.exchange, naming.advert_binding(self.topic))
        if session.options.old_peers:
            control.queue_bind(self.queue, self.exchange, self.topic)
        channel = session.open_channel()
        self.epoch += 1
        channel.basic_consume(
            self.queue,
            no_ack=True,
            callback=functools.partial(self._on_message, self.epoch),
            on_cancel=functools.partial(self._on_broker_cancel, self.epoch),
        )
        self.channel = channel
        session.publisher.publish(
            self.exchange,
            naming.sync_key(self.topic),
            b"",
            self._sync_properties(session),
            target=f"advert sync of {self.topic}",
            mandatory=False,
            deadline=time.monotonic() + session.options.send_timeout,
            wait_for_connection=False,
        )

    def _sync_properties(self, session: Session) -> dict[str, Any]:
        properties: dict[str, Any] = {"application_headers": {TOPIC: self.topic}}
        if session.options.old_peers:
            # Older releases answer into this queue through the default exchange.
            properties["reply_to"] = self.queue
        return properties

    def connection_lost(self) -> None:
        self.channel = None
        self.epoch += 1

    def broken(self) -> bool:
        return self.channel is not None and not self.channel.is_open and not self.closed

    def _on_message(self, epoch: int, message: Any) -> None:
        self.session.add_event(lambda: self._deliver(epoch, message))

    def _deliver(self, epoch: int, message: Any) -> None:
        if epoch != self.epoch or self.closed:
            return
        headers = headers_of(message)
        key = message.delivery_info["routing_key"]
        server = naming.server_of_advert_key(key, self.topic)
        if server is None:
            if not self.session.options.old_peers or key not in (self.topic, self.queue):
                return
            server = headers.get(SERVER)  # an older release's advert: only its header names it
            if not isinstance(server, str):
                return
        if headers.get(WITHDRAWN):
            if self.known.pop(server, None) is not None:
                self._report(server, None)
            return
        ttl = headers.get(TTL)
        ttl = float(ttl) if isinstance(ttl, int | float) else 0.0
        self.known[server] = time.monotonic() + ttl
        self._report(server, body_of(message))

    def _report(self, server: str, body: bytes | None) -> None:
        try:
            self.handler(server, body)
        except Exception:
            LOG.exception("advert watch handler for %s/%s raised", self.exchange, self.topic)

    def tick(self, now: float) -> float | None:
        """Report adverts whose TTL passed without a refresh (I/O thread)."""
        if self.closed:
            return None
        for server in [s for s, expires in self.known.items() if expires <= now]:
            del self.known[server]
            LOG.debug("advert of %s on %s expired", server, self.topic)
            self._report(server, None)
        return min(self.known.values(), default=None)

    def _on_broker_cancel(self, epoch: int, consumer_tag: str) -> None:
        def again() -> None:
            if epoch == self.epoch and not self.closed and self.session.up:
                LOG.warning("advert watch queue %s was deleted; declaring it again", self.queue)
                self.setup(self.session, recovering=True)

        self.session.add_event(again)

    # -- Subscription protocol ----------------------------------------------------------

    def cancel(self) -> None:
        """Stop reporting (waits for a running handler unless called from it)."""
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.session.closed:
            return
        self.session.call(
            self._stop, timeout=self.session.options.send_timeout, needs_connection=False
        )

    def _stop(self) -> None:
        self.session.unregister(self)
        self.session.remove_timed(self)
        channel, self.channel = self.channel, None
        self.epoch += 1
        if self.session.channel_alive(channel):
            try:
                channel.close()  # the queue is auto-delete: it goes with its consumer
            except (ConnectionDown, *CONNECTION_ERRORS) as exc:
                LOG.debug("closing %r: %s", self, exc)
