"""Amqp1Driver: the driver contract over AMQP 1.0 (see docs/transports/amqp1.md)."""

from __future__ import annotations

import functools
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from proton import Message

from rpclib.exceptions import TransportError, Undeliverable, sending_before
from rpclib.transports.amqp1 import messages
from rpclib.transports.amqp1.addressing import (
    REPLY_PREFIX,
    Addressing,
    Route,
    Source,
    check_address,
    is_inbox,
    make_addressing,
    pick_strategy,
)
from rpclib.transports.amqp1.adverts import AdvertOwner, AdvertWatch, advert, withdrawal
from rpclib.transports.amqp1.consumer import Amqp1Inbox, Amqp1Subscription
from rpclib.transports.amqp1.io_thread import LOG, REFUSED, Future, Loop
from rpclib.transports.amqp1.management import Management
from rpclib.transports.amqp1.options import Amqp1Options, parse_options
from rpclib.transports.amqp1.rabbit4 import RabbitMQ4Addressing
from rpclib.transports.amqp1.tls import ssl_domain
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
    Subscription,
)
from rpclib.transports.url import TransportURL

_MAX_CACHE: Final = 4096
CLOSE_WAIT: Final = 2.0


class Amqp1Driver(Driver):
    """Driver for ``amqp1://``, ``amqps://`` (TLS) and ``qpid://`` URLs; see
    docs/transports/amqp1.md.

    Construction connects (each URL host once) and raises TransportError if
    no peer answers (a failed TLS handshake names TLS and the host); later
    connection losses are recovered in the background.
    """

    def __init__(self, url: TransportURL) -> None:
        super().__init__(url)
        self.options: Amqp1Options = parse_options(url)
        tls_domain = ssl_domain(self.options.tls, str(url)) if self.options.tls else None
        label = f"{socket.gethostname().split('.')[0]}:{os.getpid()}:{id(self) & 0xFFFF:x}"
        chosen = self.options.addressing
        early = None if chosen in ("auto", "rabbitmq4") else make_addressing(self.options, label)
        self._loop = Loop(
            self.options, early, label, tls_domain, f"vhost:{self.options.virtual_host}"
        )
        self._lock = threading.Lock()
        self._closed = False
        self._routes: dict[tuple[Address, bool], Route] = {}
        self._routable: dict[tuple[Address, bool], float] = {}
        """(address, at least once) -> monotonic time until which it is known routable."""
        self._exchanges: set[str] = set()
        self._dead_letters_ready = False
        self._owners: dict[str, AdvertOwner] = {}
        self._resources: list[Amqp1Subscription | Amqp1Inbox | AdvertWatch] = []
        self._checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="amqp1-check")
        started = False
        try:
            self._loop.start()  # a failed start ends the I/O thread by itself
            started = True
            if early is None:
                if chosen == "auto":
                    chosen = pick_strategy(self._call(self._loop.peer_properties, "open"))
                self._loop.addressing = self._strategy(chosen, label)
        except BaseException:
            if early is not None:
                early.close()
            if started:  # connected, but no strategy fits the peer
                self._loop.stop(lambda: None, CLOSE_WAIT)
            self._checker.shutdown(wait=False)
            raise
        self.addressing: Addressing = self._loop.addressing

    def _strategy(self, name: str, label: str) -> Addressing:
        if name == "rabbitmq4":
            return RabbitMQ4Addressing(
                self.options, Management(self._loop, self.options.send_timeout)
            )
        return make_addressing(self.options, label, name)

    def __repr__(self) -> str:
        return f"<Amqp1Driver {self.url}{' closed' if self._closed else ''}>"

    # -- helpers --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self._loop.closed:
            raise TransportError(f"amqp1 driver for {self.url} is closed")

    def _wait_up(self, deadline: float, expires_at: float | None = None) -> None:
        if self._loop.up.is_set() or self._loop.in_io_thread():
            return
        if not self._loop.up.wait(max(0.0, deadline - time.monotonic())):
            raise TransportError(
                f"amqp1 connection to {self.url} is down{_by_deadline(expires_at, deadline)}"
            )
        self._check_open()

    def _deadline(self, expires_at: float | None) -> float:
        """Monotonic time a send gives up: the send timeout, or the call's deadline if sooner."""
        deadline = time.monotonic() + self.options.send_timeout
        if expires_at is not None:
            deadline = min(deadline, time.monotonic() + (expires_at - time.time()))
        return deadline

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        return self._loop.call(fn, self.options.send_timeout, what)

    def _adopt(self, resource: Amqp1Subscription | Amqp1Inbox | AdvertWatch) -> None:
        with self._lock:
            self._resources.append(resource)

    def _attach(self, owner: Any, what: str) -> None:
        """Attach ``owner`` on the I/O thread and wait until the peer attached its links."""

        def attach() -> list[Future]:
            self._loop.owners.append(owner)
            owner.attach()
            return [self._loop.opened(link) for link in _links_of(owner)]

        futures = self._call(attach, what)
        if self._loop.in_io_thread():
            return
        try:
            for future in futures:
                future.wait(self.options.send_timeout, what)
        except TransportError:
            self._loop.submit(functools.partial(_forget, self._loop, owner))
            raise

    # -- messages -------------------------------------------------------------------------

    def send(
        self,
        address: Address,
        body: bytes,
        *,
        guarantee: Guarantee,
        expires_at: float | None = None,
        on_undeliverable: Callable[[Undeliverable], None] | None = None,
    ) -> None:
        """Pre-settled for at-most-once (a call's routability is checked meanwhile and
        reported through ``on_undeliverable``); at-least-once waits for ``accepted``.
        Never blocks past ``expires_at`` (nor ``send_timeout``): TransportError then
        (SendTimedOut when the deadline ended it)."""
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
        at_least_once = guarantee is Guarantee.AT_LEAST_ONCE
        key = (address, at_least_once)
        deadline = self._deadline(expires_at)
        self._wait_up(deadline, expires_at)
        route = self._routes.get(key) or self._route(address, at_least_once)
        message = messages.make(
            bytes(body), durable=at_least_once and not address.fanout, expires_at=expires_at
        )
        known = self._routable.get(key, 0.0) > time.monotonic()
        by_outcome = self.addressing.routes_by_outcome
        if not at_least_once:
            if known:
                self._loop.submit(lambda: self._send_settled(route, message))
            elif by_outcome:
                self._send_probe(address, route, message, deadline, expires_at, on_undeliverable)
            elif on_undeliverable is not None:
                self._loop.submit(lambda: self._send_settled(route, message))
                self._checker.submit(self._check_later, address, on_undeliverable)
            elif not self._is_routable(address, False):
                raise Undeliverable(str(address))
            else:
                self._loop.submit(lambda: self._send_settled(route, message))
            return
        if not known and not self._is_routable(address, True):
            raise Undeliverable(str(address), "no queue was declared for this address")
        while True:
            future = Future()
            self._loop.submit(functools.partial(self._send_unsettled, route, message, future))
            what = self._outcome(future, address, deadline, expires_at)
            if what is None:
                return
            if what.startswith(REFUSED):
                raise TransportError(f"sending to {address}: {what[len(REFUSED) :]}")
            if what != "lost":
                raise Undeliverable(str(address), f"the peer answered {what}")
            self._wait_up(
                deadline, expires_at
            )  # retry after the reconnect (a duplicate, never a loss)

    def _outcome(
        self, future: Future, address: Address, deadline: float, expires_at: float | None
    ) -> str | None:
        left = deadline - time.monotonic()
        if left <= 0 or not future.wait_for(left):
            bound = _by_deadline(expires_at, deadline)
            raise TransportError(f"sending to {address}: no answer from the broker{bound}")
        return future.wait(0, "")  # type: ignore[no-any-return]

    def _send_probe(
        self,
        address: Address,
        route: Route,
        message: Message,
        deadline: float,
        expires_at: float | None,
        on_undeliverable: Callable[[Undeliverable], None] | None,
    ) -> None:
        """At-most-once to a peer that answers ``released`` when nobody takes a message:
        sent unsettled, so its outcome says whether anyone listens (then remembered for
        ``route_cache`` seconds, sending pre-settled). A call does not wait: a ``released``
        reaches ``on_undeliverable``."""
        key = (address, False)

        def learn(what: str | None) -> Undeliverable | None:
            if what is None:
                if self.options.route_cache > 0:
                    if len(self._routable) >= _MAX_CACHE:
                        self._routable.clear()
                    self._routable[key] = time.monotonic() + self.options.route_cache
                return None
            if what in ("released", "rejected", "modified"):
                return Undeliverable(str(address), f"the peer answered {what}")
            return None  # lost or refused: at-most-once, nothing more to say

        if on_undeliverable is not None:

            def told(what: str | None) -> None:
                error = learn(what)
                if error is not None:
                    self._checker.submit(_report, on_undeliverable, error)

            self._loop.submit(lambda: self._send_told(route, message, told))
            return
        future = Future()
        self._loop.submit(functools.partial(self._send_unsettled, route, message, future))
        what = self._outcome(future, address, deadline, expires_at)
        if what is not None and what.startswith(REFUSED):
            raise TransportError(f"sending to {address}: {what[len(REFUSED) :]}")
        error = learn(what)
        if error is not None:
            raise error

    def _send_told(
        self, route: Route, message: Message, told: Callable[[str | None], None]
    ) -> None:
        try:
            self._loop.send(route, message, on_outcome=told)
        except TransportError:
            told("lost")

    def _send_settled(self, route: Route, message: Message) -> None:
        try:
            self._loop.send(route, message)
        except TransportError as exc:
            LOG.info("at-most-once message to %s dropped: %s", route.node, exc)

    def _send_unsettled(self, route: Route, message: Message, future: Future) -> None:
        try:
            self._loop.send(route, message, on_outcome=future.set)
        except TransportError:
            future.set("lost")

    def _route(self, address: Address, at_least_once: bool) -> Route:
        check_address(address)
        if address.exchange not in self._exchanges:
            self.addressing.prepare_send(address)
            self._exchanges.add(address.exchange)
        route = self.addressing.send_route(address, at_least_once)
        if len(self._routes) >= _MAX_CACHE:
            self._routes.clear()
        self._routes[(address, at_least_once)] = route
        return route

    def _is_routable(self, address: Address, at_least_once: bool) -> bool:
        """Ask the broker (None from the strategy: assume yes, the peer's outcome decides)."""
        answer = self.addressing.routable(address, at_least_once)
        if answer is False:
            self._routable.pop((address, at_least_once), None)
            return False
        ttl = math.inf if at_least_once or answer is None else self.options.route_cache
        if ttl > 0:
            if len(self._routable) >= _MAX_CACHE:
                self._routable.clear()
            self._routable[(address, at_least_once)] = time.monotonic() + ttl
        return True

    def _check_later(self, address: Address, report: Callable[[Undeliverable], None]) -> None:
        try:
            if self._is_routable(address, False):
                return
        except TransportError as exc:
            LOG.info("could not check the routability of %s: %s", address, exc)
            return
        try:
            report(Undeliverable(str(address)))
        except Exception:
            LOG.exception("on_undeliverable callback raised")

    def listen(
        self,
        address: Address,
        handler: MessageHandler,
        *,
        group: str | None = None,
        prefetch: int = 64,
    ) -> Subscription:
        """Consume the address's nodes in a session of its own; handlers run on the I/O
        thread. The URL's ``prefetch`` option, if given, overrides ``prefetch``."""
        self._check_open()
        check_address(address, group)
        prefetch = self.options.prefetch or prefetch
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self._ensure_dead_letters()
        sources: list[Source] = self.addressing.prepare_listen(address, group)
        sub = Amqp1Subscription(
            self._loop, address, group, handler, prefetch, sources, self.options.send_timeout
        )
        self._attach(sub, f"subscribing to {address}")
        self._adopt(sub)
        self._routable.pop((address, False), None)
        return sub

    def _ensure_dead_letters(self) -> None:
        if not self._dead_letters_ready:
            self.addressing.prepare_dead_letters()
            self._dead_letters_ready = True

    def declare(self, address: Address, group: str | None = None) -> None:
        """Create the durable node of a topic group or server."""
        if address.fanout:
            raise ValueError(f"cannot declare {address}: fanout nodes exist only while subscribed")
        self._check_open()
        check_address(address, group)
        self.addressing.declare(address, group)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Read up to ``limit`` dead letters, oldest first; they stay queued (the session
        that read them ends unsettled, so the broker puts them back)."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self._check_open()
        self._ensure_dead_letters()
        count = self.addressing.dead_letter_count()
        limit = min(limit, count) if count is not None else limit
        if limit == 0:
            return []
        reader = _DeadLetterReader(self._loop, self.addressing.dead_letter_source(), limit)
        self._call(reader.start, "reading dead letters")
        try:
            reader.done.wait(self.options.send_timeout, "reading dead letters")
        finally:
            self._call(reader.end, "reading dead letters")
        return reader.found

    # -- inboxes --------------------------------------------------------------------------

    def open_inbox(self, handler: InboxHandler, on_event: InboxEventHandler | None = None) -> Inbox:
        """A private reply node; ``handler`` and ``on_event`` run on the I/O thread."""
        self._check_open()
        name = self.addressing.new_private(REPLY_PREFIX.rstrip("."), [])
        inbox = Amqp1Inbox(self._loop, name, handler, on_event, self.options.send_timeout)
        self._attach(inbox, "opening an inbox")
        self._adopt(inbox)
        return inbox

    def send_to_inbox(self, inbox_address: str, body: bytes) -> None:
        """Pre-settled to the inbox's node; a closed inbox's reply is dropped by the broker."""
        self._check_open()
        if not is_inbox(inbox_address):
            raise Undeliverable(inbox_address, "not an amqp1:// inbox address")
        self._wait_up(time.monotonic() + self.options.send_timeout)
        route = self.addressing.private_route(inbox_address)
        message = messages.make(bytes(body))
        self._loop.submit(lambda: self._send_settled(route, message))

    # -- adverts --------------------------------------------------------------------------

    def _owner(self, exchange: str) -> AdvertOwner:
        with self._lock:
            owner = self._owners.get(exchange)
            if owner is not None:
                return owner
            self.addressing.prepare_adverts(exchange)
            name = self.addressing.new_private(f"{exchange}.adverts", [])
            owner = AdvertOwner(self._loop, exchange, name)
            self._owners[exchange] = owner
        self._attach(owner, "answering advert sync requests")
        return owner

    def advertise(self, address: Address, body: bytes, ttl: float) -> None:
        """Publish or refresh the advert of ``address.server``; answered to sync requests
        until ``ttl`` passes or it is withdrawn, and re-published after a reconnect."""
        server = _advert_server(address)
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError(f"advert ttl must be a positive number of seconds, got {ttl!r}")
        self._check_open()
        check_address(address)
        owner = self._owner(address.exchange)
        owner.record(address.topic, server, bytes(body), ttl)
        owner.bind_topic(address.topic)
        route = self.addressing.adverts_route(address.exchange, address.topic)
        message = advert(server, bytes(body), ttl)
        self._loop.submit(lambda: self._send_settled(route, message))

    def withdraw(self, address: Address) -> None:
        """Remove the advert of ``address.server``; watchers get ``(server, None)``."""
        server = _advert_server(address)
        self._check_open()
        check_address(address)
        with self._lock:
            owner = self._owners.get(address.exchange)
        if owner is not None:
            owner.forget(address.topic, server)
        self.addressing.prepare_adverts(address.exchange)
        route = self.addressing.adverts_route(address.exchange, address.topic)
        message = withdrawal(server)
        self._loop.submit(lambda: self._send_settled(route, message))

    def watch_adverts(self, exchange: str, topic: str, handler: AdvertHandler) -> Subscription:
        """Report current adverts before returning (after ``advert_sync_wait``), then changes."""
        self._check_open()
        if not self.addressing.watches_adverts:
            raise TransportError(
                f"addressing={self.addressing.name} cannot watch adverts yet; "
                "use addressing=rabbitmq or give clients an explicit version_cap"
            )
        check_address(Address(exchange, topic))
        self.addressing.prepare_adverts(exchange)
        binding = self.addressing.adverts_binding(exchange, topic)
        name = self.addressing.new_private(f"{exchange}.adverts", [binding])
        watch = AdvertWatch(self._loop, exchange, topic, name, handler, self.options.send_timeout)
        self._attach(watch, f"watching adverts of {topic}")
        self._adopt(watch)
        if not self._loop.in_io_thread():
            time.sleep(self.options.advert_sync_wait)  # answers are in flight
            self._call(lambda: None, "advert barrier")
        else:
            LOG.warning("watch_adverts called on the I/O thread: the snapshot arrives later")
        return watch

    # -- lifecycle ------------------------------------------------------------------------

    def add_event_listener(self, listener: ConnectionEventHandler) -> None:
        """Call ``listener`` (on the I/O thread) with every ConnectionEvent: disconnected,
        reconnected, and subscriptions, inboxes or advert readers the broker refused to set
        up again after a reconnect ("not restored", retried with backoff) and later
        "restored" (as ``rabbit://``)."""
        self._loop.listeners.append(listener)

    def close(self) -> None:
        """Withdraw this driver's adverts, end its sessions, delete its private nodes."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            owners = list(self._owners.values())
            resources = list(self._resources)
            self._resources.clear()
        for owner in owners:
            for topic, server, _, _ in owner.live():
                route = self.addressing.adverts_route(owner.exchange, topic)
                message = withdrawal(server)
                try:
                    self._loop.submit(functools.partial(self._send_settled, route, message))
                except TransportError:
                    break

        def cleanup() -> None:
            for resource in resources:
                if isinstance(resource, Amqp1Subscription):
                    resource._end()
                elif isinstance(resource, Amqp1Inbox):
                    resource.closed = True
                    resource._end()
                else:
                    resource.end()
            for owner in owners:
                owner.end()

        try:  # sessions end first: a queue deleted under its consumer detaches the link
            self._call(cleanup, "closing")
        except TransportError as exc:
            LOG.info("closing %s: %s", self, exc)
        for name in [r.name for r in resources if isinstance(r, Amqp1Inbox | AdvertWatch)] + [
            o.name for o in owners
        ]:
            self.addressing.delete_private(name)  # rabbitmq4: over this connection, still up
        self._loop.stop(lambda: None, self.options.send_timeout)
        self.addressing.close()
        self._checker.shutdown(wait=False)


class _DeadLetterReader:
    """Receives ``limit`` dead letters in a session of its own, then ends it unsettled.

    The caller asks the broker how many there are first: RabbitMQ's plugin
    crashes the session on a drain, so "no more" cannot come from the link.
    """

    def __init__(self, loop: Loop, source: Source, limit: int) -> None:
        self.loop = loop
        self.source = source
        self.limit = limit
        self.found: list[DeadLetter] = []
        self.done = Future()
        self.session: Any = None
        self.link: Any = None

    def start(self) -> None:
        if self.loop.conn is None:
            raise TransportError("amqp1 connection is down")
        self.session = self.loop.conn.session()
        self.session.open()
        self.link = self.loop.receiver(
            self.session, self.source.node, self, settled=False, credit=self.limit
        )

    def on_message(self, message: Message, delivery: Any) -> None:
        props = messages.props_of(message)
        self.found.append(
            DeadLetter(
                address=str(props.get(messages.SOURCE, "?")),
                body=messages.body_of(message),
                reason=str(props.get(messages.REASON, "")),
                attempts=int(props.get(messages.ATTEMPTS, 1)),
            )
        )
        if len(self.found) >= self.limit:
            self.done.set()

    def end(self) -> None:
        self.loop.receivers.pop(self.link.name, None) if self.link is not None else None
        if self.session is not None:
            self.session.close()
        self.session = self.link = None


def _forget(loop: Loop, owner: Any) -> None:
    """Drop an owner whose attach failed: end its session, never re-attach it (I/O thread)."""
    end = getattr(owner, "_end", None) or getattr(owner, "end", None)
    if end is not None:
        end()
    if owner in loop.owners:
        loop.owners.remove(owner)


def _links_of(owner: Any) -> list[Any]:
    if isinstance(owner, Amqp1Subscription):
        return [link for link, _ in owner.links]
    if isinstance(owner, Amqp1Inbox):
        return [owner.link] if owner.link is not None else []
    link = getattr(owner, "link", None)
    return [link] if link is not None else []


def _by_deadline(expires_at: float | None, deadline: float) -> str:
    """How a send that gave up names its bound: the call's deadline or the send timeout."""
    if (
        expires_at is not None
        and abs((deadline - time.monotonic()) - (expires_at - time.time())) < 0.05
    ):
        stamp = time.strftime("%H:%M:%S", time.gmtime(expires_at))
        return f" by the call's deadline ({stamp}.{int(expires_at % 1 * 1000):03d} UTC)"
    return " within send_timeout"


def _report(report: Callable[[Undeliverable], None], error: Undeliverable) -> None:
    try:
        report(error)
    except Exception:
        LOG.exception("on_undeliverable callback raised")


def _advert_server(address: Address) -> str:
    if address.server is None or address.fanout:
        raise ValueError(f"an advert needs a server-directed address, got {address}")
    return address.server


__all__ = ["Amqp1Driver"]
