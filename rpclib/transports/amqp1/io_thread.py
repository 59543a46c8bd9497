"""The one I/O thread of a connection: proton's protocol engine under a select loop of ours.

proton is single-threaded, so everything touching the connection runs on
one thread. It drives proton's engine (``Connection``, ``Transport``,
``Collector``) over a plain socket itself rather than through proton's
``Container``: the Container dispatches every event through several generic
handlers, which cost more CPU per message than the rest of the driver
(measured: about half the client's time per at-least-once send).

Other threads hand the thread callables (:meth:`Loop.submit`). Those queued
while it was busy run in one batch on its next wake-up, and the wake-up pipe
is written only when the queue was empty, so a burst costs one wake-up, not
one each. Callers that need an answer wait on their own :class:`Future`.

With TLS (``amqps://``) proton's own TLS layer sits on the same transport
(:mod:`rpclib.transports.amqp1.tls`): the loop still moves raw socket bytes,
and a failed handshake is a failed connection attempt whose error names TLS
and the host.

When the connection drops, every owner (subscription, inbox, advert reader)
hears ``connection_lost``; the thread reconnects with doubling backoff and
full jitter across the URL's hosts and restores each owner, retrying what the
broker refuses until it is allowed (:mod:`rpclib.transports.amqp1.restore`).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import random
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, TypeVar

from proton import (
    Collector,
    Connection,
    Delivery,
    Endpoint,
    Event,
    Link,
    Message,
    Transport,
    TransportException,
)

from rpclib.exceptions import TransportError
from rpclib.transports.amqp1.addressing import Addressing, Route
from rpclib.transports.amqp1.options import Amqp1Options, PeerHost
from rpclib.transports.amqp1.restore import Owner, restore
from rpclib.transports.amqp1.tls import failure as tls_failure
from rpclib.transports.amqp1.tls import start_tls
from rpclib.transports.base import ConnectionEvent, ConnectionEventHandler

LOG = logging.getLogger("rpclib.transports.amqp1")
T = TypeVar("T")
READ_SIZE: Final = 65536
CLOSE_GRACE: Final = 2.0
"""Seconds close() waits for the peer to answer the connection's close."""

Outcome = Callable[[str | None], None]
"""Told a sent message's fate: None = accepted, else why not ("rejected", "released", "lost",
or ``REFUSED`` + the peer's reason for detaching the sender)."""
REFUSED: Final = "refused: "
REFUSALS: Final = frozenset(
    {
        "amqp:unauthorized-access",
        "amqp:not-found",
        "amqp:not-allowed",
        "amqp:precondition-failed",
        "amqp:invalid-field",
        "amqp:not-implemented",
        "amqp:resource-locked",
    }
)
"""Error conditions with which a peer refuses a request; the same request would be refused
again, so they fail the caller rather than start a reconnect."""

_OUTCOMES: Final = {
    Delivery.REJECTED: "rejected",
    Delivery.RELEASED: "released",
    Delivery.MODIFIED: "modified",
}


class Future:
    """A result another thread will set."""

    __slots__ = ("_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def set(self, value: Any = None) -> None:
        self._value = value
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def wait_for(self, timeout: float) -> bool:
        """Whether it was set (or failed) within ``timeout`` seconds."""
        return self._event.wait(timeout)

    def wait(self, timeout: float, what: str) -> Any:
        if not self._event.wait(timeout):
            raise TransportError(f"{what}: no answer within {timeout:g}s")
        if self._error is not None:
            raise self._error
        return self._value


class Loop:
    """The I/O thread of one driver: its socket, proton engine, links and queued work."""

    def __init__(
        self,
        options: Amqp1Options,
        addressing: Addressing | None,
        label: str,
        tls_domain: Any = None,
        hostname: str = "",
    ) -> None:
        """``tls_domain``: proton's ``SSLDomain`` when the URL asks for TLS, else None.
        ``addressing`` None: chosen once connected (``addressing=auto``), the open frame
        naming ``hostname`` meanwhile."""
        self.options = options
        self._addressing = addressing
        self.hostname = addressing.hostname() if addressing is not None else hostname
        self.label = label
        self.conn: Any = None
        self.up = threading.Event()
        self.closed = False
        self.owners: list[Owner] = []
        self.generation = 0
        """Counts the connections made: a restore belongs to one of them."""
        self.listeners: list[ConnectionEventHandler] = []
        """Called on the I/O thread with every ConnectionEvent."""
        self.receivers: dict[str, Any] = {}
        """link name -> owner with ``on_message(message, delivery)``."""
        self._collector = Collector()
        self._transport: Any = None
        self._sock: socket.socket | None = None
        self._tls_domain = tls_domain
        self._tls: Any = None
        self._peer: PeerHost | None = None
        """The host of the current connection attempt or connection."""
        self._first_errors: list[str] = []
        self._session: Any = None
        self._senders: dict[tuple[str, bool], Any] = {}
        self._outcomes: dict[Any, Outcome] = {}
        self._opening: dict[str, Future] = {}
        self._attaching: dict[str, Any] = {}
        """link name -> receiver link whose attach the peer has not answered yet."""
        self.refusable: dict[Any, Callable[[str], None]] = {}
        """session -> told the peer's reason when the peer refuses something by ending it."""
        self._credit: dict[str, int] = {}
        """link name -> credit to grant when the peer has attached it."""
        self._work: deque[Callable[[], None]] = deque()
        self._work_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = itertools.count()
        self._links_made = 0
        self._parked: list[tuple[float, Route, Message]] = []
        self._attempt = 0
        self._host = 0
        self._first = Future()
        self._stopping = False
        self._stop_at = 0.0
        self._thread = threading.Thread(target=self._run, name=f"amqp1-io-{label}", daemon=True)

    @property
    def addressing(self) -> Addressing:
        if self._addressing is None:
            raise TransportError("amqp1: no addressing strategy chosen yet")
        return self._addressing

    @addressing.setter
    def addressing(self, strategy: Addressing) -> None:
        self._addressing = strategy
        self.hostname = strategy.hostname()

    @property
    def own_user(self) -> str:
        """The user this connection logged in as (the URL host's user being tried)."""
        peer = self._peer or self.options.hosts[0]
        return peer.user

    def peer_properties(self) -> dict[str, str]:
        """The peer's ``open`` frame properties (product, version...), as text (I/O thread)."""
        conn = self.conn
        props = conn.remote_properties if conn is not None else None
        return {str(k): str(v) for k, v in (props or {}).items()}

    # -- threads ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread and wait for the first connection (TransportError if none)."""
        self._thread.start()
        timeout = (self.options.connect_timeout + 1) * len(self.options.hosts) + 1
        self._first.wait(timeout, f"connecting to {self._hosts_text()}")

    def _hosts_text(self) -> str:
        return ", ".join(h.address for h in self.options.hosts)

    def in_io_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread soon (in order); from the I/O thread itself, now."""
        if self.in_io_thread():
            fn()
            return
        if self.closed:
            raise TransportError("amqp1 driver is closed")
        with self._work_lock:
            wake = not self._work
            self._work.append(fn)
        if wake:
            os.write(self._wake_w, b"!")

    def call(self, fn: Callable[[], T], timeout: float, what: str) -> T:
        """Run ``fn`` on the I/O thread and return its result (raising what it raised)."""
        if self.in_io_thread():
            return fn()
        future = Future()

        def run() -> None:
            try:
                future.set(fn())
            except BaseException as exc:
                future.fail(exc)

        self.submit(run)
        return future.wait(timeout, what)  # type: ignore[no-any-return]

    def report(self, event: ConnectionEvent) -> None:
        """Tell the listeners about ``event`` (on the I/O thread; any thread may report)."""
        if not self.listeners:
            return

        def tell() -> None:
            for listener in list(self.listeners):
                try:
                    listener(event)
                except Exception:
                    LOG.exception("amqp1 connection event listener raised")

        if self.in_io_thread():
            tell()
        elif not self.closed:
            with contextlib.suppress(TransportError):
                self.submit(tell)

    def schedule(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread after ``delay`` seconds (I/O thread only)."""
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_seq), fn))

    def stop(self, cleanup: Callable[[], None], timeout: float) -> None:
        """Run ``cleanup`` on the I/O thread, close the connection, end the thread."""

        def finish() -> None:
            try:
                cleanup()
            finally:
                self.closed = True
                self._stopping = True
                self._stop_at = time.monotonic() + min(timeout, CLOSE_GRACE)
                if self.conn is not None:
                    self.conn.close()

        if self.in_io_thread():
            finish()
            return
        if not self._thread.is_alive():
            self.closed = True
            return
        with self._work_lock:
            self._work.append(finish)
        os.write(self._wake_w, b"!")
        self._thread.join(timeout)

    # -- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._connect()
            while True:
                self._dispatch()
                if self._stopping and (
                    self.conn is None
                    or self.conn.state & Endpoint.REMOTE_CLOSED
                    or time.monotonic() > self._stop_at
                ):
                    self._flush()
                    break
                self._wait()
        except Exception:
            LOG.exception("amqp1 I/O thread %s died", self.label)
        finally:
            self.up.clear()
            self.closed = True
            self._close_socket()
            os.close(self._wake_r)
            os.close(self._wake_w)
            if not self._first.done:
                self._first.fail(TransportError("the amqp1 I/O thread stopped"))
            outcomes, self._outcomes = self._outcomes, {}
            for tell in outcomes.values():
                _safe(tell, "lost")

    def _wait(self) -> None:
        """Write what proton has, wait for the socket, the wake pipe or a timer; handle it."""
        sock, transport = self._sock, self._transport
        now = time.monotonic()
        deadline = self._timers[0][0] if self._timers else now + 3600
        if self._stopping:
            deadline = min(deadline, self._stop_at)
        readers: list[Any] = [self._wake_r]
        writers: list[Any] = []
        if sock is not None and transport is not None:
            tick = transport.tick(now)
            if tick:
                deadline = min(deadline, tick)
            if transport.pending() > 0:
                self._write()
                if transport.pending() > 0:
                    writers.append(sock)
            if transport.capacity() > 0:
                readers.append(sock)
        timeout = max(0.0, deadline - time.monotonic())
        try:
            readable, writable, _ = select.select(readers, writers, [], timeout)
        except InterruptedError:
            return
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
            self._run_work()
        if sock is not None and sock is self._sock:
            if sock in readable:
                self._read()
            if sock in writable:
                self._write()
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            try:
                fn()
            except Exception:
                LOG.exception("amqp1 timer task failed")

    def _run_work(self) -> None:
        while True:
            with self._work_lock:
                if not self._work:
                    return
                batch = list(self._work)
                self._work.clear()
            for fn in batch:
                try:
                    fn()
                except Exception:
                    LOG.exception("amqp1 I/O thread task failed")
            self._dispatch()

    def _read(self) -> None:
        transport, sock = self._transport, self._sock
        assert transport is not None and sock is not None
        try:
            data = sock.recv(max(1, min(READ_SIZE, transport.capacity())))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(self.conn, f"read failed: {exc}{self._early()}")
            return
        if not data:
            self._lost(self.conn, f"the peer closed the socket{self._early()}")
            return
        try:
            transport.push(data)
        except TransportException:
            self._lost(self.conn, self._transport_failure(transport))

    def _early(self) -> str:
        """A note for socket errors before the peer's open over TLS (a refused handshake)."""
        if self._tls is None or self.up.is_set():
            return ""
        return " (during the TLS handshake or before the AMQP open)"

    def _write(self) -> None:
        transport, sock = self._transport, self._sock
        if transport is None or sock is None:
            return
        pending = transport.pending()
        while pending > 0:
            try:
                sent = sock.send(transport.peek(pending))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._lost(self.conn, f"write failed: {exc}")
                return
            transport.pop(sent)
            pending = transport.pending()

    def _flush(self) -> None:
        """Best effort: write the close frames before the socket goes."""
        sock = self._sock
        if sock is None or self._transport is None:
            return
        with contextlib.suppress(OSError):
            sock.setblocking(True)
            sock.settimeout(0.5)
            pending = self._transport.pending()
            while pending > 0:
                self._transport.pop(sock.send(self._transport.peek(pending)))
                pending = self._transport.pending()

    def _dispatch(self) -> None:
        """Handle every event proton has collected."""
        collector = self._collector
        while True:
            event = collector.peek()
            if event is None:
                return
            kind = event.type
            try:
                if kind == Event.DELIVERY:
                    self._on_delivery(event.delivery)
                elif kind == Event.LINK_REMOTE_OPEN:
                    link = event.link
                    credit = self._credit.pop(_name(link), 0)
                    if link is not None and not _refused(link):  # a refusal's detach follows
                        if credit:
                            link.flow(credit)
                        self._attaching.pop(_name(link), None)
                        future = self._opening.pop(_name(link), None)
                        if future is not None:
                            future.set()
                elif kind == Event.LINK_REMOTE_CLOSE:
                    self._on_link_close(event.link)
                elif kind == Event.SESSION_REMOTE_CLOSE:
                    if not self._session_refused(event.session):
                        self._on_remote_close(event.session, "session")
                elif kind == Event.CONNECTION_REMOTE_OPEN:
                    if event.connection == self.conn:
                        self._opened()
                elif kind == Event.CONNECTION_REMOTE_CLOSE:
                    conn = event.connection
                    if conn == self.conn and not self._stopping:
                        why = str(conn.remote_condition or "closed by the peer")
                        self._lost(conn, why)
                elif (
                    kind == Event.TRANSPORT_ERROR
                    and event.connection == self.conn
                    and not self._stopping
                ):
                    self._lost(self.conn, self._transport_failure(event.transport))
            except Exception:
                LOG.exception("amqp1: handling %s failed", kind)
            collector.pop()

    def _on_link_close(self, link: Any) -> None:
        """The peer detached a link: a refused attach (or a sender it stopped taking messages
        on) fails what waits for it with the peer's reason; any other detach is a lost
        connection (:meth:`_on_remote_close`)."""
        name = _name(link)
        self._attaching.pop(name, None)
        future = self._opening.pop(name, None)
        sender = [key for key, held in self._senders.items() if _name(held) == name]
        if future is None and not (sender and link.remote_condition is not None):
            self._on_remote_close(link, f"link {name}")
            return
        node = link.target.address if link.is_sender else link.source.address
        why = refusal(node, link.remote_condition)
        LOG.warning("amqp1 %s", why)
        if link.state & Endpoint.LOCAL_ACTIVE:
            link.close()
        self.receivers.pop(name, None)
        for key in sender:
            del self._senders[key]
        for delivery, tell in list(self._outcomes.items()):
            if _name(delivery.link) == name:
                del self._outcomes[delivery]
                _safe(tell, f"{REFUSED}{why}")
        if future is not None:
            future.fail(TransportError(why))

    def _session_refused(self, session: Any) -> bool:
        """RabbitMQ 4 ends a whole session to refuse an attach or a management request
        (permissions, a missing node): fail what waits in that session with the broker's
        reason and keep the connection, instead of reconnecting to be refused again."""
        condition = session.remote_condition
        if condition is None or str(condition.name) not in REFUSALS:
            return False
        if session == self._session:
            self._senders_refused(session, condition)
            return True
        attaching = [name for name, link in self._attaching.items() if link.session == session]
        told = self.refusable.pop(session, None)
        if not attaching and told is None:
            return False
        if session.state & Endpoint.LOCAL_ACTIVE:
            session.close()
        for name in attaching:
            link = self._attaching.pop(name)
            self.receivers.pop(name, None)
            self._credit.pop(name, None)
            future = self._opening.pop(name, None)
            if future is not None:
                future.fail(TransportError(refusal(link.source.address, condition)))
        if told is not None:
            told(str(condition))
        LOG.warning("amqp1 session refused by the peer: %s", condition)
        return True

    def _senders_refused(self, session: Any, condition: Any) -> None:
        """The peer ended the senders' session to refuse a message (RabbitMQ: a ``user-id``
        that is not the connection's user, a write it does not permit): the messages
        awaiting an outcome there fail with its reason, pre-settled ones are lost, and the
        next send opens a new session; the connection stays (reconnecting would send the
        same message to be refused again)."""
        why = f"the peer refused a message: {condition}"
        LOG.warning("amqp1 %s", why)
        self._session = None
        _close_session(session)
        for key, link in list(self._senders.items()):
            if link.session == session:
                del self._senders[key]
        for delivery, tell in list(self._outcomes.items()):
            if delivery.link.session == session:
                del self._outcomes[delivery]
                _safe(tell, f"{REFUSED}{why}")

    def _on_remote_close(self, endpoint: Any, what: str) -> None:
        """The peer ended a session or link we did not close: start over on a new connection.

        RabbitMQ's plugin ends every session (not the connection) when an
        operator closes the connection or the broker shuts down; the driver's
        sessions are all needed, so a lost one is a lost connection.
        """
        condition = endpoint.remote_condition
        if not endpoint.state & Endpoint.LOCAL_ACTIVE:
            return
        endpoint.close()
        if self._stopping:
            return
        LOG.warning("amqp1 %s closed by the peer: %s", what, condition or "no reason given")
        self._lost(self.conn, f"{what} closed by the peer: {condition}")

    def _transport_failure(self, transport: Any) -> str:
        """Why proton's transport failed; TLS failures name TLS and the host."""
        condition = transport.condition if transport is not None else None
        text = str(condition or "?")
        if self._tls is not None and self._peer is not None and "SSL" in text:
            assert self.options.tls is not None
            return tls_failure(self._peer, self.options.tls, condition, self.up.is_set())
        return text

    # -- the connection -------------------------------------------------------------------

    def _connect(self) -> None:
        if self.closed:
            return
        host = self.options.hosts[self._host % len(self.options.hosts)]
        try:
            sock = socket.create_connection(
                (host.hostname, host.port), timeout=self.options.connect_timeout
            )
        except OSError as exc:
            self._failed_attempt(f"{host.address}: {exc}")
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        transport = Transport()
        if self.options.heartbeat > 0:
            transport.idle_timeout = self.options.heartbeat
        self._peer = host
        if self._tls_domain is not None:
            assert self.options.tls is not None
            self._tls = start_tls(transport, self._tls_domain, host, self.options.tls.verify)
        sasl = transport.sasl()
        sasl.allowed_mechs("PLAIN")
        sasl.allow_insecure_mechs = self._tls is None  # over TLS, PLAIN is never in clear
        conn = Connection()
        conn.container = f"rpclib-{self.label}"
        conn.hostname = self.hostname
        conn.user = host.user
        conn.password = host.password
        conn.collect(self._collector)
        transport.bind(conn)
        conn.open()
        self._sock, self._transport, self.conn = sock, transport, conn
        self._session = None

        def too_slow() -> None:
            if self.conn == conn and not self.up.is_set():
                over = " (TLS)" if self._tls is not None else ""
                self._lost(
                    conn, f"no AMQP open from {host.address}{over} within the connect timeout"
                )

        self.schedule(self.options.connect_timeout, too_slow)

    def _opened(self) -> None:
        was_reconnect = self._first.done
        self._attempt = 0
        self.generation += 1
        self.up.set()
        if was_reconnect:
            LOG.warning("amqp1 connection %s re-established", self.label)
            self.report(ConnectionEvent("reconnected"))
        parked, self._parked = self._parked, []
        now = time.monotonic()
        for deadline, route, message in parked:
            if deadline > now:
                self.send(route, message)
        for owner in list(self.owners):
            restore(self, owner, self.generation)  # retried on its own until it succeeds
        if not was_reconnect:
            self._first.set()

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        transport, self._transport = self._transport, None
        self._tls = None
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.unbind()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _lost(self, conn: Any, why: str) -> None:
        if conn is None or conn != self.conn:
            return
        self.conn = None
        self.up.clear()
        self._senders.clear()
        self.receivers.clear()
        self._session = None
        self._close_socket()
        self._credit.clear()
        self._attaching.clear()
        self.refusable.clear()
        opening, self._opening = self._opening, {}
        for future in opening.values():
            future.fail(TransportError(f"the amqp1 connection dropped while attaching ({why})"))
        outcomes, self._outcomes = self._outcomes, {}
        for tell in outcomes.values():
            _safe(tell, "lost")
        if self.closed:
            return
        LOG.warning("amqp1 connection %s lost (%s); reconnecting", self.label, why)
        self.report(ConnectionEvent("disconnected", detail=why))
        if self._addressing is not None:
            self._addressing.reset()
        for owner in list(self.owners):
            try:
                owner.connection_lost()
            except Exception:
                LOG.exception("telling %r about the lost connection failed", owner)
        peer = self._peer.address if self._peer is not None else "?"
        self._failed_attempt(why if peer in why else f"{peer}: {why}")

    def _failed_attempt(self, why: str) -> None:
        if not self._first.done:
            self._first_errors.append(why)
        if not self._first.done and self._attempt + 1 >= len(self.options.hosts):
            whys = "; ".join(self._first_errors)
            self._first.fail(
                TransportError(f"no AMQP 1.0 peer answered at {self._hosts_text()} ({whys})")
            )
            self.closed = True
            self._stopping = True
            return
        self._attempt += 1
        self._host += 1
        cap = min(self.options.retry_backoff_max, self.options.retry_backoff * 2**self._attempt)
        delay = 0.0 if not self._first.done else random.uniform(0, cap)
        self.schedule(delay, self._connect)

    # -- links (I/O thread) ---------------------------------------------------------------

    def _link_name(self, node: str) -> str:
        """Link names must be unique per connection (two links to one node are common)."""
        self._links_made += 1
        return f"{self.label}-{self._links_made}-{node}"

    def sender(self, node: str, settled: bool) -> Any:
        """The cached sender link to ``node`` (pre-settled or not) on the connection."""
        key = (node, settled)
        link = self._senders.get(key)
        if link is None:
            if self.conn is None:
                raise TransportError("amqp1 connection is down")
            if self._session is None:
                self._session = self.conn.session()
                self._session.open()
            link = self._session.sender(self._link_name(node or "anonymous"))
            if node:
                link.target.address = node  # else anonymous: each message says where (``to``)
            if settled:
                link.snd_settle_mode = Link.SND_SETTLED
            link.open()
            self._senders[key] = link
        return link

    def send(self, route: Route, message: Message, *, on_outcome: Outcome | None = None) -> None:
        """Send on the route's link: pre-settled without ``on_outcome``, else told the outcome.

        A pre-settled message sent while the connection is down waits for the
        reconnect (up to ``send_timeout``) instead of being dropped at once.
        """
        if route.subject is not None:
            message.subject = route.subject
        if route.to is not None:
            message.address = route.to
        if self.conn is None and on_outcome is None and not self.closed:
            self._parked.append((time.monotonic() + self.options.send_timeout, route, message))
            return
        if self._addressing is not None and self._addressing.verifies_user_id:
            message.user_id = self.own_user.encode()  # the broker refuses any other
        link = self.sender(route.node, on_outcome is None)
        delivery = link.send(message)
        if on_outcome is not None:
            self._outcomes[delivery] = on_outcome

    def receiver(self, session: Any, source: str, owner: Any, *, settled: bool, credit: int) -> Any:
        """Attach a receiver to ``source`` in ``session`` with ``credit``; messages go to
        ``owner.on_message(message, delivery)``. :meth:`opened` tells when the peer attached."""
        link = session.receiver(self._link_name(source))
        link.source.address = source
        if settled:
            link.snd_settle_mode = Link.SND_SETTLED
        link.open()
        self.receivers[link.name] = owner
        self._opening[link.name] = Future()
        self._attaching[link.name] = link
        if credit:
            # Granted once the peer's attach arrived: a flow sent before it counts from a
            # delivery-count the peer never chose, and RabbitMQ 4 then over-sends.
            self._credit[link.name] = credit
        return link

    def opened(self, link: Any) -> Future:
        """A future set when the peer attached ``link`` (I/O thread)."""
        return self._opening.get(link.name) or _done()

    def _on_delivery(self, delivery: Any) -> None:
        """A message arrived (receivers) or the peer settled one we sent (senders)."""
        link = delivery.link
        if link.is_sender:
            if delivery.updated:
                state = delivery.remote_state
                tell = self._outcomes.pop(delivery, None)
                delivery.settle()
                if tell is not None:
                    _safe(tell, None if state == Delivery.ACCEPTED else _OUTCOMES.get(state, "?"))
            return
        if delivery.aborted:
            delivery.settle()
            return
        if delivery.partial or not delivery.readable:
            return
        message = Message()
        message.decode(link.recv(delivery.pending))
        link.advance()
        owner = self.receivers.get(link.name)
        if owner is None:
            if not delivery.settled:
                delivery.update(Delivery.RELEASED)
            delivery.settle()
            return
        owner.on_message(message, delivery)


def _close_session(session: Any) -> None:
    if session.state & Endpoint.LOCAL_ACTIVE:
        session.close()


def _refused(link: Any) -> bool:
    """An attach answered without the node (the peer refuses it; its detach says why)."""
    terminus = link.remote_target if link.is_sender else link.remote_source
    return terminus is None or terminus.address is None


def refusal(node: str | None, condition: Any) -> str:
    """The peer's reason for refusing ``node``, and what to change."""
    text = str(condition or "no reason given")
    hint = ""
    if "amqp_address_v1_not_permitted" in text:
        hint = (
            " (this RabbitMQ 4 denies the v1 addresses of addressing=rabbitmq: "
            "use addressing=rabbitmq4, or auto, the default)"
        )
    elif "not-found" in text or "not_found" in text:
        hint = " (the node does not exist: an operator deleted it, or the broker lost it)"
    elif "unauthorized" in text or "access" in text:
        hint = " (give the URL's user permissions on the vhost)"
    return f"the peer refused to attach to {node}: {text}{hint}"


def _name(link: Any) -> str:
    return str(link.name) if link is not None else ""


def _done() -> Future:
    future = Future()
    future.set()
    return future


def _safe(tell: Outcome, what: str | None) -> None:
    try:
        tell(what)
    except Exception:
        LOG.exception("amqp1 outcome callback failed")


__all__ = ["LOG", "REFUSED", "Future", "Loop", "Outcome", "refusal"]
