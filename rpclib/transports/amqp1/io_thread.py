"""The one I/O thread of a connection: proton's Container, fed by other threads.

proton is single-threaded, so everything touching the connection runs on
the thread that runs the Container. Other threads hand it callables
(:meth:`Loop.submit`); the callables queued while the thread was busy run
in one batch on the next wake-up, and the pipe is written only when the
queue was empty, so a burst of sends costs one wake-up, not one each.
Callers that need an answer wait on their own :class:`Future`, never on the
thread.

The thread owns the proton connection. When it drops, every owner
(subscription, inbox, advert watch) hears ``connection_lost``; the thread
reconnects with doubling backoff and full jitter across the URL's hosts and
calls each owner's ``attach`` again.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol, TypeVar

from proton import Delivery, Message
from proton.handlers import MessagingHandler
from proton.reactor import (
    ApplicationEvent,
    AtMostOnce,
    Container,
    EventInjector,
)

from rpclib.exceptions import TransportError
from rpclib.transports.amqp1.addressing import Addressing, Route
from rpclib.transports.amqp1.options import Amqp1Options

LOG = logging.getLogger("rpclib.transports.amqp1")
T = TypeVar("T")
WORK: Final = "rpclib_work"

Outcome = Callable[[str | None], None]
"""Told a sent message's fate: None = accepted, else why not ("rejected", "released", "lost")."""


class Owner(Protocol):
    """Something with links on the connection, set up again after a reconnect."""

    def reconnected(self) -> None: ...

    def connection_lost(self) -> None: ...


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

    def wait(self, timeout: float, what: str) -> Any:
        if not self._event.wait(timeout):
            raise TransportError(f"{what}: no answer within {timeout:g}s")
        if self._error is not None:
            raise self._error
        return self._value


class Loop(MessagingHandler):
    """The Container thread of one driver: its connection, links and queued work."""

    def __init__(self, options: Amqp1Options, addressing: Addressing, label: str) -> None:
        super().__init__(prefetch=0, auto_accept=False, auto_settle=True)
        self.options = options
        self.addressing = addressing
        self.label = label
        self.container = Container(self)
        self.container.container_id = f"rpclib-{label}"
        self.injector = EventInjector()
        self.container.selectable(self.injector)
        self.conn: Any = None
        self.up = threading.Event()
        self.closed = False
        self._work: deque[Callable[[], None]] = deque()
        self._work_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"amqp1-io-{label}", daemon=True)
        self._senders: dict[tuple[str, bool], Any] = {}
        self._outcomes: dict[Any, Outcome] = {}
        self.receivers: dict[str, Any] = {}
        """link name -> owner with ``on_message(message, delivery)``."""
        self.owners: list[Owner] = []
        self._opening: dict[str, Future] = {}
        self._attempt = 0
        self._host = 0
        self._first = Future()
        self.generation = 0
        """Incremented on every connection: deliveries of an older one cannot be settled."""

    # -- threads ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        timeout = (self.options.connect_timeout + 1) * len(self.options.hosts)
        self._first.wait(timeout, f"connecting to {self._hosts_text()}")

    def _hosts_text(self) -> str:
        return ", ".join(h.address for h in self.options.hosts)

    def _run(self) -> None:
        try:
            self.container.run()
        except Exception:
            LOG.exception("amqp1 I/O thread %s died", self.label)
        finally:
            self.up.clear()
            self.closed = True
            if not self._first.done:
                self._first.fail(TransportError("the amqp1 I/O thread stopped"))

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
            self.injector.trigger(ApplicationEvent(WORK))

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

    def on_rpclib_work(self, event: Any) -> None:
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

    def schedule(self, delay: float, fn: Callable[[], None]) -> Any:
        """Run ``fn`` on the I/O thread after ``delay`` seconds (I/O thread only)."""
        return self.container.schedule(delay, _Timer(fn))  # type: ignore[arg-type]

    # -- the connection -------------------------------------------------------------------

    def on_start(self, event: Any) -> None:
        self._connect()

    def _connect(self) -> None:
        if self.closed:
            return
        host = self.options.hosts[self._host % len(self.options.hosts)]
        heartbeat = self.options.heartbeat
        self.conn = self.container.connect(
            url=f"amqp://{host.address}",
            user=host.user,
            password=host.password,
            allowed_mechs="PLAIN",
            sasl_enabled=True,
            reconnect=False,
            virtual_host=self.addressing.hostname(),
            heartbeat=heartbeat if heartbeat > 0 else None,
        )
        self.generation += 1
        conn = self.conn

        def too_slow() -> None:
            if self.conn == conn and not self.up.is_set():
                LOG.info("connecting to %s timed out", host.address)
                conn.close()
                self._lost(conn, "connect timeout")

        self.schedule(self.options.connect_timeout, too_slow)

    def on_connection_opened(self, event: Any) -> None:
        if event.connection != self.conn:
            return
        was_reconnect = self._first.done
        self._attempt = 0
        self.up.set()
        if was_reconnect:
            LOG.warning("amqp1 connection %s re-established", self.label)
        for owner in list(self.owners):
            try:
                owner.reconnected()
            except Exception:
                LOG.exception("re-attaching %r failed", owner)
        if not was_reconnect:
            self._first.set()

    def on_connection_error(self, event: Any) -> None:
        self._lost(event.connection, str(event.connection.remote_condition))

    def on_transport_error(self, event: Any) -> None:
        self._lost(event.connection, str(event.transport.condition))

    def on_disconnected(self, event: Any) -> None:
        self._lost(event.connection, "disconnected")

    def on_session_error(self, event: Any) -> None:
        LOG.warning("amqp1 session error: %s", event.session.remote_condition)

    def on_link_error(self, event: Any) -> None:
        LOG.warning("amqp1 link %s error: %s", event.link.name, event.link.remote_condition)

    def _lost(self, conn: Any, why: str) -> None:
        if conn is None or conn != self.conn:
            return
        self.conn = None
        self.up.clear()
        self._senders.clear()
        self.receivers.clear()
        opening, self._opening = self._opening, {}
        for future in opening.values():
            future.fail(TransportError("the amqp1 connection dropped while attaching"))
        outcomes, self._outcomes = self._outcomes, {}
        for tell in outcomes.values():
            _safe(tell, "lost")
        if self.closed:
            return
        LOG.warning("amqp1 connection %s lost (%s); reconnecting", self.label, why)
        self.addressing.reset()
        for owner in list(self.owners):
            try:
                owner.connection_lost()
            except Exception:
                LOG.exception("telling %r about the lost connection failed", owner)
        with contextlib.suppress(Exception):
            conn.close()
        if not self._first.done and self._attempt + 1 >= len(self.options.hosts):
            self._first.fail(TransportError(f"no AMQP 1.0 peer answered at {self._hosts_text()}"))
            self.closed = True
            self.container.stop()
            return
        self._attempt += 1
        self._host += 1
        cap = min(self.options.retry_backoff_max, self.options.retry_backoff * 2**self._attempt)
        delay = 0.0 if not self._first.done else random.uniform(0, cap)
        self.schedule(delay, self._connect)

    def stop(self, cleanup: Callable[[], None], timeout: float) -> None:
        """Run ``cleanup`` on the I/O thread, close the connection and end the thread."""

        def finish() -> None:
            try:
                cleanup()
            finally:
                self.closed = True
                conn, self.conn = self.conn, None
                if conn is not None:
                    conn.close()
                self.injector.close()
                self.container.stop()

        if self.in_io_thread():
            finish()
            return
        if not self._thread.is_alive():
            self.closed = True
            return
        try:
            with self._work_lock:
                self._work.append(finish)
            self.injector.trigger(ApplicationEvent(WORK))
        except Exception:
            pass
        self._thread.join(timeout)

    # -- links (I/O thread) ---------------------------------------------------------------

    def sender(self, node: str, settled: bool) -> Any:
        """The cached sender link to ``node`` (pre-settled or not) on the connection."""
        key = (node, settled)
        link = self._senders.get(key)
        if link is None:
            if self.conn is None:
                raise TransportError("amqp1 connection is down")
            link = self.container.create_sender(
                self.conn, node, options=AtMostOnce() if settled else None
            )
            self._senders[key] = link
        return link

    def send(self, route: Route, message: Message, *, on_outcome: Outcome | None = None) -> None:
        """Send on the route's link: pre-settled without ``on_outcome``, else told the outcome."""
        if route.subject is not None:
            message.subject = route.subject
        link = self.sender(route.node, on_outcome is None)
        delivery = link.send(message)
        if on_outcome is not None:
            self._outcomes[delivery] = on_outcome

    def _outcome(self, event: Any, what: str | None) -> None:
        tell = self._outcomes.pop(event.delivery, None)
        if tell is not None:
            _safe(tell, what)

    def on_accepted(self, event: Any) -> None:
        self._outcome(event, None)

    def on_rejected(self, event: Any) -> None:
        self._outcome(event, "rejected")

    def on_released(self, event: Any) -> None:
        state = event.delivery.remote_state
        self._outcome(event, "released" if state == Delivery.RELEASED else "modified")

    def receiver(self, session: Any, source: str, owner: Any, *, settled: bool, credit: int) -> Any:
        """Attach a receiver to ``source`` in ``session`` with ``credit``; messages go to
        ``owner.on_message(message, delivery)``. :meth:`wait_attached` waits for the peer."""
        link = self.container.create_receiver(
            session, source, options=AtMostOnce() if settled else None
        )
        self.receivers[link.name] = owner
        self._opening[link.name] = Future()
        if credit:
            link.flow(credit)
        return link

    def opened(self, link: Any) -> Future:
        """A future set when the peer attached ``link`` (I/O thread)."""
        return self._opening.get(link.name) or _done()

    def on_link_opened(self, event: Any) -> None:
        future = self._opening.pop(event.link.name, None)
        if future is not None:
            future.set()

    def on_link_flow(self, event: Any) -> None:
        pass
        owner = self.receivers.get(event.link.name)
        if owner is not None and hasattr(owner, "on_link_flow"):
            owner.on_link_flow()

    def on_message(self, event: Any) -> None:
        owner = self.receivers.get(event.receiver.name)
        delivery = event.delivery
        if owner is None:
            if not delivery.settled:
                delivery.update(Delivery.RELEASED)
            delivery.settle()
            return
        owner.on_message(event.message, delivery)


class _Timer:
    """A Container timer task calling one function."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def on_timer_task(self, event: Any) -> None:
        try:
            self.fn()
        except Exception:
            LOG.exception("amqp1 timer task failed")


def _done() -> Future:
    future = Future()
    future.set()
    return future


def _safe(tell: Outcome, what: str | None) -> None:
    try:
        tell(what)
    except Exception:
        LOG.exception("amqp1 outcome callback failed")


def now() -> float:
    return time.monotonic()
