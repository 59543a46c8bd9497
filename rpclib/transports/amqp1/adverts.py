"""Adverts: presence records on the ``X.adverts`` node, with a sync request for the snapshot.

An advert is a pre-settled message with routing key ``T`` carrying the server
name and TTL as application properties (and the TTL as message TTL); a
withdrawal carries ``withdrawn``. A watch reads a private node bound to
``T``; to learn adverts published before it started it sends a sync request
on ``T.sync`` naming its node, and every driver owning adverts of ``T`` (its
:class:`AdvertOwner` node is bound to ``T.sync``) answers straight into the
watcher's node. The watch expires adverts whose TTL passed without a refresh.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from proton import Message

from rpclib.exceptions import TransportError
from rpclib.transports.amqp1 import messages
from rpclib.transports.amqp1.addressing import SYNC
from rpclib.transports.amqp1.consumer import end_session, wait_attached
from rpclib.transports.amqp1.restore import check_current
from rpclib.transports.base import AdvertHandler

if TYPE_CHECKING:
    from rpclib.transports.amqp1.io_thread import Future, Loop

LOG = logging.getLogger("rpclib.transports.amqp1")


def advert(server: str, body: bytes, ttl: float) -> Message:
    message = messages.make(body, properties={messages.SERVER: server, messages.TTL: float(ttl)})
    message.ttl = ttl
    return message


def withdrawal(server: str) -> Message:
    return messages.make(b"", properties={messages.SERVER: server, messages.WITHDRAWN: True})


class _Reader:
    """A private node read pre-settled in a session of its own (I/O thread)."""

    def __init__(self, loop: Loop, name: str, binds: list[tuple[str, str]]) -> None:
        self.loop = loop
        self.name = name
        self.binds = binds
        self.session: Any = None
        self.link: Any = None
        self.closed = False
        self.timeout = loop.options.send_timeout

    def __repr__(self) -> str:
        return f"<amqp1 {type(self).__name__} {self.name}>"

    def attach(self) -> None:
        if self.closed or self.loop.conn is None:
            return
        self.session = self.loop.conn.session()
        self.session.open()
        source = self.loop.addressing.private_source(self.name)
        self.link = self.loop.receiver(self.session, source.node, self, settled=True, credit=1024)
        self.attached()

    def attached(self) -> None:
        """Called on the I/O thread once the receiver is attached."""

    def connection_lost(self) -> None:
        self.session = self.link = None

    def restore(self, generation: int) -> None:
        """After a reconnect: declare and bind the node again, attach (blocking: a restore
        thread); raises what the broker refused."""
        self.loop.addressing.recreate_private(self.name, list(self.binds))
        futures = self.loop.call(
            lambda: self._reattach(generation), self.timeout, f"re-attaching {self!r}"
        )
        wait_attached(futures, self.timeout, f"re-attaching {self!r}")

    def _reattach(self, generation: int) -> list[Future]:
        check_current(self.loop, generation)
        if self.closed:
            return []
        end_session(self.loop, self.session, [self.link] if self.link is not None else [])
        self.session = self.link = None
        self.attach()
        return [self.loop.opened(self.link)] if self.link is not None else []

    def on_message(self, message: Message, delivery: Any) -> None:
        delivery.settle()
        link = delivery.link
        if link.credit < 512:
            link.flow(1024 - link.credit)
        if not self.closed:
            self.handle(message)

    def handle(self, message: Message) -> None:
        raise NotImplementedError

    def end(self) -> None:
        """Stop reading (I/O thread)."""
        self.closed = True
        session, self.session, self.link = self.session, None, None
        if session is not None:
            session.close()
        if self in self.loop.owners:
            self.loop.owners.remove(self)


class AdvertOwner(_Reader):
    """This driver's adverts on one control exchange, answering sync requests."""

    def __init__(self, loop: Loop, exchange: str, name: str) -> None:
        super().__init__(loop, name, [])
        self.exchange = exchange
        self.lock = threading.Lock()
        self.adverts: dict[tuple[str, str], tuple[bytes, float]] = {}
        self.topics: set[str] = set()

    def record(self, topic: str, server: str, body: bytes, ttl: float) -> None:
        with self.lock:
            self.adverts[(topic, server)] = (body, time.monotonic() + ttl)

    def forget(self, topic: str, server: str) -> None:
        with self.lock:
            self.adverts.pop((topic, server), None)

    def live(self, topic: str | None = None) -> list[tuple[str, str, bytes, float]]:
        now = time.monotonic()
        with self.lock:
            return [
                (t, s, body, expires - now)
                for (t, s), (body, expires) in sorted(self.adverts.items())
                if expires > now and (topic is None or t == topic)
            ]

    def bind_topic(self, topic: str) -> None:
        """Hear sync requests for ``topic`` (blocking: caller's thread)."""
        with self.lock:
            if topic in self.topics:
                return
            self.topics.add(topic)
        binding = self.loop.addressing.adverts_binding(self.exchange, topic + SYNC)
        self.binds.append(binding)
        self.loop.addressing.bind_private(self.name, [binding])

    def attached(self) -> None:
        for topic, server, body, left in self.live():  # after a reconnect: publish again
            route = self.loop.addressing.adverts_route(self.exchange, topic)
            self.loop.send(route, advert(server, body, left))

    def handle(self, message: Message) -> None:
        props = messages.props_of(message)
        topic, reply_to = props.get(messages.TOPIC), message.reply_to
        if not isinstance(topic, str) or not reply_to:
            return
        route = self.loop.addressing.private_route(reply_to)
        for _, server, body, left in self.live(topic):
            try:
                self.loop.send(route, advert(server, body, left))
            except TransportError as exc:
                LOG.info("answering an advert sync request: %s", exc)


class AdvertWatch(_Reader):
    """One watch_adverts(): a private node bound to the topic, with TTL expiry."""

    def __init__(
        self,
        loop: Loop,
        exchange: str,
        topic: str,
        name: str,
        handler: AdvertHandler,
        timeout: float,
    ) -> None:
        super().__init__(loop, name, [loop.addressing.adverts_binding(exchange, topic)])
        self.exchange = exchange
        self.topic = topic
        self.handler = handler
        self.timeout = timeout
        self.known: dict[str, float] = {}
        self._armed = False

    def __repr__(self) -> str:
        return f"<amqp1 AdvertWatch {self.name} on {self.topic}>"

    def attached(self) -> None:
        request = messages.make(b"", properties={messages.TOPIC: self.topic})
        request.reply_to = self.name
        route = self.loop.addressing.adverts_route(self.exchange, self.topic + SYNC)
        self.loop.send(route, request)

    def handle(self, message: Message) -> None:
        props = messages.props_of(message)
        server = props.get(messages.SERVER)
        if not isinstance(server, str):
            return
        if props.get(messages.WITHDRAWN):
            if self.known.pop(server, None) is not None:
                self._report(server, None)
            return
        ttl = props.get(messages.TTL)
        self.known[server] = time.monotonic() + (float(ttl) if isinstance(ttl, int | float) else 0)
        self._report(server, messages.body_of(message))
        self._arm()

    def _arm(self) -> None:
        if not self._armed and self.known:
            delay = max(0.0, min(self.known.values()) - time.monotonic()) + 0.01
            self._armed = True
            self.loop.schedule(delay, self._tick)

    def _tick(self) -> None:
        self._armed = False
        if self.closed:
            return
        now = time.monotonic()
        for server in [s for s, expires in self.known.items() if expires <= now]:
            del self.known[server]
            self._report(server, None)
        self._arm()

    def _report(self, server: str, body: bytes | None) -> None:
        try:
            self.handler(server, body)
        except Exception:
            LOG.exception("advert watch handler for %s raised", self.topic)

    def cancel(self) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.loop.closed:
            return
        try:
            self.loop.call(self.end, self.timeout, "closing an advert watch")
        except TransportError as exc:
            LOG.info("closing %r: %s", self, exc)
        self.loop.addressing.delete_private(self.name)


__all__ = ["AdvertOwner", "AdvertWatch", "advert", "withdrawal"]
