"""RabbitDriver: the driver contract over RabbitMQ (see docs/transports/rabbit.md)."""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from amqp import exceptions as amqp_exceptions
from amqp import spec

from rpclib.exceptions import AccessRefused, TransportError, Undeliverable, sending_before
from rpclib.transports.base import (
    Address,
    AdvertHandler,
    ConnectionEventHandler,
    DeadLetter,
    Driver,
    Guarantee,
    Inbox,
    InboxEventHandler,
    InboxHandler,
    MessageHandler,
    QueueDepth,
    SendOutcomeHandler,
    Subscription,
)
from rpclib.transports.rabbit import inspection, naming
from rpclib.transports.rabbit.adverts import (
    AdvertOwner,
    AdvertWatch,
    advert_message,
    publish_advert,
    withdrawal_message,
)
from rpclib.transports.rabbit.connection import LOG, HostRing, body_of, expiration_ms, headers_of
from rpclib.transports.rabbit.consumer import (
    ATTEMPTS,
    EXPIRES_AT,
    PERSISTENT,
    REASON,
    SOURCE,
    RabbitInbox,
    RabbitSubscription,
    Settler,
)
from rpclib.transports.rabbit.declarations import QueueSpec, declare_queue
from rpclib.transports.rabbit.io_thread import Session
from rpclib.transports.rabbit.options import RabbitOptions, parse_options
from rpclib.transports.rabbit.publisher import PublisherPool
from rpclib.transports.url import TransportURL

_MAX_PREFETCH: Final = 65535  # basic.qos prefetch-count is an AMQP short
_MAX_ROUTES: Final = 1024
_REPLY_PROPERTIES: Final[dict[str, Any]] = {"delivery_mode": PERSISTENT}
"""Replies are persistent: their durable queue keeps them across a broker restart, so an
inbox that survived one ("reconnected") really lost nothing. A reply delivered at once to
its waiting consumer never touches the disk."""


class RabbitDriver(Driver):
    """Driver for ``rabbit://`` and ``rabbits://`` URLs; see docs/transports/rabbit.md.

    Construction connects (each URL host once) and raises TransportError if
    no broker answers; later connection losses are recovered in the
    background.
    """

    def __init__(self, url: TransportURL) -> None:
        super().__init__(url)
        self.options: RabbitOptions = parse_options(url)
        self._principal = self.options.principal
        label = f"{socket.gethostname().split('.')[0]}:{os.getpid()}"
        ring = HostRing(self.options.hosts)
        self._pool = PublisherPool(self.options, ring, label)
        self._session = Session(self.options, ring, label)
        self._ring, self._label = ring, label
        self._pipeline: Session | None = None
        self._settler = Settler(
            self._pool, self.options.send_timeout, self.options.queue_type, self._pipeline_session
        )
        """Connection of pipelined sends, opened by the first (kept off the consumer's)."""
        self._lock = threading.Lock()
        self._closed = False
        self._owners: dict[str, AdvertOwner] = {}
        self._resources: list[RabbitSubscription | RabbitInbox | AdvertWatch] = []
        self._routes: dict[tuple[Address, bool], tuple[str, str, str, str]] = {}
        """Checked addresses of send(): exchange, routing key, exchange type, name."""
        self._session.start()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<RabbitDriver {self.url}{state}>"

    # -- helpers -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"rabbit driver for {self.url} is closed")

    def _deadline(self) -> float:
        return time.monotonic() + self.options.send_timeout

    def _call(self, fn: Callable[[], Any]) -> Any:
        return self._session.call(fn, timeout=self.options.send_timeout)

    def _adopt(self, resource: RabbitSubscription | RabbitInbox | AdvertWatch) -> None:
        with self._lock:
            self._resources.append(resource)

    # -- messages ------------------------------------------------------------------------------

    def send(
        self,
        address: Address,
        body: bytes,
        *,
        guarantee: Guarantee,
        expires_at: float | None = None,
        on_undeliverable: Callable[[Undeliverable], None] | None = None,
    ) -> None:
        """Publish ``body`` by the path the guarantee picks (see the doc's three paths).

        Never blocks past ``send_timeout``, nor past ``expires_at`` if given (a
        call's deadline): TransportError then (SendTimedOut past the deadline).
        """
        with sending_before(address, expires_at):
            self._send(address, body, guarantee, expires_at, on_undeliverable)

    def _send(
        self,
        address: Address,
        body: bytes,
        guarantee: Guarantee,
        expires_at: float | None,
        on_undeliverable: Callable[[Undeliverable], None] | None,
    ) -> None:
        self._check_open()
        body = bytes(body)
        at_least_once = guarantee is Guarantee.AT_LEAST_ONCE
        route = self._routes.get((address, at_least_once))
        if route is None:
            route = self._route(address, at_least_once)
        exchange, key, kind, target = route
        properties: dict[str, Any] = {}
        if at_least_once and not address.fanout:
            properties["delivery_mode"] = PERSISTENT
        if expires_at is not None:
            properties["expiration"] = expiration_ms(expires_at - time.time())
            properties["application_headers"] = {EXPIRES_AT: float(expires_at)}
        deadline = self._deadline()
        expiry = None if expires_at is None else time.monotonic() + (expires_at - time.time())
        if expiry is not None:
            # Every phase (waiting for a connection, connecting, the confirm) ends by then.
            deadline = min(deadline, expiry)
        if on_undeliverable is not None and not at_least_once:
            # Path 1: a call; its caller waits for a reply anyway, so no round trip here.
            # A return matters until the caller gives up (its message's expiry).
            self._ensure_exchange(exchange, kind, deadline)
            self._session.publisher.publish(
                exchange,
                key,
                body,
                properties,
                target=target,
                mandatory=True,
                deadline=deadline,
                on_return=on_undeliverable,
                return_wanted_until=deadline if expiry is None else expiry,
            )
            return
        self._pool.publish(
            exchange,
            key,
            body,
            properties,
            target=target,
            exchange_type=kind,
            deadline=deadline,
            retry_after_write=at_least_once,
        )

    def send_pipelined(
        self,
        address: Address,
        body: bytes,
        *,
        on_outcome: SendOutcomeHandler,
        expires_at: float | None = None,
    ) -> None:
        """Publish persistent and ``mandatory`` on the pipelining connection; see the contract.

        The confirm (or return) reaches ``on_outcome`` from that connection's
        I/O thread. At most ``confirm_window`` are unconfirmed at once.
        """
        self._check_open()
        if address.fanout:
            raise ValueError(f"fanout messages are at-most-once; cannot pipeline to {address}")
        body = bytes(body)
        route = self._routes.get((address, True))
        if route is None:
            route = self._route(address, True)
        exchange, key, kind, target = route
        properties: dict[str, Any] = {"delivery_mode": PERSISTENT}
        if expires_at is not None:
            properties["expiration"] = expiration_ms(expires_at - time.time())
            properties["application_headers"] = {EXPIRES_AT: float(expires_at)}
        session = self._pipeline or self._open_pipeline()
        if exchange not in session.exchanges:
            session.call(
                lambda: session.declare_exchange(exchange, kind),
                timeout=self.options.send_timeout,
            )
        session.publisher.publish(
            exchange,
            key,
            body,
            properties,
            target=target,
            mandatory=True,
            deadline=self._deadline(),
            on_outcome=on_outcome,
            exchange_kind=kind,
        )

    def _pipeline_session(self) -> Session:
        return self._pipeline or self._open_pipeline()

    def _open_pipeline(self) -> Session:
        with self._lock:
            self._check_open()
            if self._pipeline is None:
                session = Session(
                    self.options, self._ring, f"{self._label} pipelined", confirms=True
                )
                session.start()
                self._pipeline = session
            return self._pipeline

    def _route(self, address: Address, at_least_once: bool) -> tuple[str, str, str, str]:
        """Check ``address`` once; its exchange, routing key, exchange type and name."""
        naming.check_address(address, principal=self._principal)
        if address.fanout:
            exchange, key, kind = naming.fanout_exchange(address), "", "fanout"
        else:
            exchange, kind = address.exchange, "topic"
            key = naming.routing_key(address, live=not at_least_once)
        route = (exchange, key, kind, str(address))
        if len(self._routes) >= _MAX_ROUTES:
            self._routes.clear()
        self._routes[(address, at_least_once)] = route
        return route

    def _ensure_exchange(self, name: str, kind: str, deadline: float | None = None) -> None:
        if name not in self._session.exchanges:
            if deadline is None:
                self._call(lambda: self._session.declare_exchange(name, kind))
                return
            self._session.call(
                lambda: self._session.declare_exchange(name, kind),
                timeout=max(0.0, deadline - time.monotonic()),
            )

    def listen(
        self,
        address: Address,
        handler: MessageHandler,
        *,
        group: str | None = None,
        prefetch: int = 64,
    ) -> Subscription:
        """Consume both queues of ``address`` (a private one for fanout); handlers run on
        the I/O thread. The URL's ``prefetch`` option, if given, overrides ``prefetch``."""
        self._check_open()
        naming.check_address(address, group, self._principal)
        prefetch = self.options.prefetch or prefetch
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        sub = RabbitSubscription(
            self._session, self._settler, address, group, handler, min(prefetch, _MAX_PREFETCH)
        )
        self._call(sub.start)
        self._adopt(sub)
        return sub

    def declare(self, address: Address, group: str | None = None) -> None:
        """Declare and bind the durable queue of a topic group or server."""
        if address.fanout:
            raise ValueError(f"cannot declare {address}: fanout queues exist only while subscribed")
        self._check_open()
        naming.check_address(address, group, self._principal)
        spec = QueueSpec(
            naming.queue_name(address, group),
            address.exchange,
            naming.routing_key(address),
            "durable",
        )

        def declare() -> None:
            self._session.declare_exchange(address.exchange, "topic")
            declare_queue(self._session, spec)

        self._call(declare)

    def remove_server_queues(self, address: Address) -> list[str]:
        """Delete the durable queue ``X.T@S`` of a retired server (its ``.live`` queue is
        exclusive and went with its connection); refused while a consumer uses it."""
        if address.server is None or address.fanout:
            raise ValueError(f"{address} is not a server address")
        self._check_open()
        naming.check_address(address, principal=self._principal)
        name = naming.queue_name(address)
        deadline = self._deadline()
        try:
            with self._pool.with_channel(deadline) as publisher:
                remaining = max(0.1, deadline - time.monotonic())
                with publisher.conn.transport.having_timeout(remaining):
                    publisher.channel.queue_declare(name, passive=True)
                    publisher.channel.queue_delete(name, if_unused=True)
        except amqp_exceptions.NotFound:
            return []
        except amqp_exceptions.PreconditionFailed:
            raise TransportError(f"queue {name} is in use: a server consumes from it") from None
        except amqp_exceptions.AccessRefused as exc:
            raise AccessRefused(
                f"account {self._principal!r} may not delete queue {name}: {exc}"
            ) from None
        return [name]

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Read up to ``limit`` dead letters of the vhost, oldest first, leaving them queued.

        Reads with basic.get and then recovers them (requeue), so two readers
        at once may each see only part of the queue.
        """
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self._check_open()
        deadline = self._deadline()
        self._settler.ensure_dead_letter_queue(deadline)
        found: list[DeadLetter] = []
        with self._pool.with_channel(deadline) as publisher:
            channel = publisher.channel
            with publisher.conn.transport.having_timeout(max(0.1, deadline - time.monotonic())):
                try:
                    while len(found) < limit:
                        message = channel.basic_get(naming.DEAD_LETTER_QUEUE, no_ack=False)
                        if message is None:
                            break
                        headers = headers_of(message)
                        found.append(
                            DeadLetter(
                                address=str(headers.get(SOURCE, "?")),
                                body=body_of(message),
                                reason=str(headers.get(REASON, "")),
                                attempts=int(headers.get(ATTEMPTS, 1)),
                            )
                        )
                finally:
                    # Give them all back (in place) and wait until the broker has.
                    channel.send_method(spec.Basic.Recover, "b", (True,), wait=spec.Basic.RecoverOk)
        return found

    # -- operator capabilities (rpclib inspect, rpclib dead-letters): rabbit/inspection.py ------

    def advertised_topics(self, exchange: str, *, listen: float = 12.0) -> list[str]:
        """Topics of ``exchange`` whose servers refreshed an advert within ``listen`` seconds."""
        self._check_open()
        naming.check_exchange(exchange)
        return inspection.advertised_topics(self._pool, exchange, listen, self._deadline() + listen)

    def queue_depths(self, exchange: str, topic: str, servers: list[str]) -> list[QueueDepth]:
        """Ready messages and consumers of the topic's queues and its servers' that exist."""
        self._check_open()
        naming.check_address(Address(exchange, topic), principal=self._principal)
        return inspection.queue_depths(self._pool, exchange, topic, servers, self._deadline())

    def replay_dead_letter(self, key: str) -> DeadLetter:
        """Republish dead letter ``key`` to the queue it came from, as one more attempt."""
        self._check_open()
        return inspection.replay_dead_letter(self._pool, self._settler, key, self._deadline())

    def purge_dead_letters(self, keys: list[str] | None = None) -> int:
        """Drop the dead letters with ``keys`` (every one with None); how many went."""
        self._check_open()
        return inspection.purge_dead_letters(self._pool, self._settler, keys, self._deadline())

    # -- inboxes --------------------------------------------------------------------------------

    def open_inbox(self, handler: InboxHandler, on_event: InboxEventHandler | None = None) -> Inbox:
        """A reply queue of its own; ``handler`` and ``on_event`` run on the I/O thread."""
        self._check_open()
        inbox = RabbitInbox(self._session, handler, on_event)
        self._call(inbox.start)
        self._adopt(inbox)
        return inbox

    def send_to_inbox(self, inbox_address: str, body: bytes) -> None:
        """Publish to the reply queue (path 1, mandatory) without waiting for the broker.

        A reply to an inbox that is gone is returned by the broker later; the
        I/O thread logs it at WARNING and counts it (:attr:`returned_replies`).
        """
        self._check_open()
        if not naming.is_reply_queue(inbox_address):
            raise Undeliverable(inbox_address, "not a rabbit:// inbox address")
        if naming.is_routed_inbox(inbox_address):
            exchange, key = naming.QUEUES_EXCHANGE, naming.queue_key(inbox_address)
            if exchange not in self._session.exchanges:
                self._ensure_exchange(exchange, "topic")
        elif self.options.old_peers:
            exchange, key = "", inbox_address  # an older release's inbox: only its name reaches it
        else:
            raise Undeliverable(
                inbox_address,
                "an inbox of an rpclib release before rpclib.queues, reachable only through "
                "the default exchange: during a rolling upgrade run with ?old_peers=true "
                "(docs/transports/rabbit.md)",
            )
        self._session.publisher.publish(
            exchange,
            key,
            bytes(body),
            _REPLY_PROPERTIES,
            target=inbox_address,
            mandatory=True,
            deadline=self._deadline(),
        )

    def add_event_listener(self, listener: ConnectionEventHandler) -> None:
        """Call ``listener`` (on the I/O thread) with every ConnectionEvent of the consumer
        connection: disconnected, reconnected, and subscriptions or inboxes the broker
        refused to set up again ("not restored", retried with backoff) and later "restored"."""
        self._session.listeners.append(listener)

    @property
    def returned_replies(self) -> int:
        """How many replies the broker returned because their inbox was gone."""
        return self._session.publisher.returned_replies

    # -- adverts -------------------------------------------------------------------------------

    def _owner(self, exchange: str) -> AdvertOwner:
        with self._lock:
            owner = self._owners.get(exchange)
        if owner is None:
            created = AdvertOwner(self._session, exchange)
            self._call(created.start)
            with self._lock:
                owner = self._owners.setdefault(exchange, created)
            if owner is not created:  # another thread won the race
                self._call(created.stop)
        return owner

    def advertise(self, address: Address, body: bytes, ttl: float) -> None:
        """Publish or refresh the advert of ``address.server``; answered to sync requests
        until ``ttl`` passes or it is withdrawn, and re-published after a reconnect."""
        server = _advert_server(address)
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError(f"advert ttl must be a positive number of seconds, got {ttl!r}")
        self._check_open()
        naming.check_address(address, principal=self._principal)
        body = bytes(body)
        owner = self._owner(address.exchange)
        owner.record(address.topic, server, body, ttl)
        if address.topic not in owner.topics:
            self._call(lambda: owner.bind_topic(address.topic))
        payload, props = advert_message(server, body, ttl)
        publish_advert(
            self._session,
            owner.exchange,
            address.topic,
            server,
            payload,
            props,
            deadline=self._deadline(),
            wait_for_connection=False,
        )

    def withdraw(self, address: Address) -> None:
        """Remove the advert of ``address.server``; watchers get ``(server, None)``."""
        server = _advert_server(address)
        self._check_open()
        naming.check_address(address, principal=self._principal)
        with self._lock:
            owner = self._owners.get(address.exchange)
        if owner is not None:
            owner.forget(address.topic, server)
        exchange = naming.adverts_exchange(address.exchange)
        self._ensure_exchange(exchange, "topic")
        payload, props = withdrawal_message(server)
        publish_advert(
            self._session,
            exchange,
            address.topic,
            server,
            payload,
            props,
            deadline=self._deadline(),
            wait_for_connection=True,
        )

    def watch_adverts(self, exchange: str, topic: str, handler: AdvertHandler) -> Subscription:
        """Report current adverts before returning (after ``advert_sync_wait``), then changes.

        Handlers run on the I/O thread. Called from a handler (on the I/O
        thread) it cannot wait for the answers, which then arrive later.
        """
        self._check_open()
        naming.check_address(Address(exchange, topic), principal=self._principal)
        watch = AdvertWatch(self._session, exchange, topic, handler)
        self._call(watch.start)
        self._adopt(watch)
        if not self._session.in_io_thread():
            time.sleep(self.options.advert_sync_wait)  # answers are in flight; no count to wait for
            self._call(lambda: None)  # barrier: everything read so far has been reported
        else:
            LOG.warning("watch_adverts called on the I/O thread: the snapshot arrives later")
        return watch

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Withdraw this driver's adverts, delete its reply queues, close its connections.

        Exclusive and auto-delete queues go with the connection; unsettled
        messages are requeued by the broker.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            owners = list(self._owners.values())
            resources = list(self._resources)
            self._resources.clear()
        deadline = self._deadline()
        for owner in owners:
            for topic, server, _, _ in owner.live():
                owner.forget(topic, server)
                payload, props = withdrawal_message(server)
                try:
                    publish_advert(
                        self._session,
                        owner.exchange,
                        topic,
                        server,
                        payload,
                        props,
                        deadline=deadline,
                        wait_for_connection=False,
                    )
                except TransportError as exc:
                    LOG.info("could not withdraw the advert of %s: %s", server, exc)

        def cleanup() -> None:
            for resource in resources:
                if isinstance(resource, RabbitInbox):
                    resource.delete()
                elif isinstance(resource, RabbitSubscription):
                    resource.shutdown()
                else:
                    resource.closed = True

        self._session.close(cleanup, self.options.send_timeout)
        with self._lock:
            pipeline = self._pipeline
        if pipeline is not None:
            pipeline.close(lambda: None, self.options.send_timeout)
        self._pool.close()


def _advert_server(address: Address) -> str:
    if address.server is None or address.fanout:
        raise ValueError(f"an advert needs a server-directed address, got {address}")
    return address.server


__all__ = ["RabbitDriver"]
