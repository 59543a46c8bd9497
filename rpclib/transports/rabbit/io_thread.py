"""The consumer connection and the one I/O thread that reads it.

Only the I/O thread reads the connection: it waits in a selector on the
socket and a wake-up pipe, reads every whole frame that arrived (one frame
at a time, no select between buffered frames), calls handlers, runs
commands other threads hand it (declarations, consumes, cancels) and sends
heartbeats. Other threads only *write* on the connection (acks, path-1
publishes), through a per-connection write lock around py-amqp's frame
writer (:class:`~rpclib.transports.rabbit.connection.LockedWriter`).

py-amqp calls our callbacks from inside whatever read is in progress,
including the nested reads of a synchronous method (``queue_declare`` waits
for declare-ok by reading). So callbacks only *queue* work; the loop runs it
at top level, where a handler may call back into the driver (ack, send,
close its own subscription) without re-entering py-amqp.

Path-1 publishes (calls, replies, adverts, pipelined casts) are written by
their senders; the books of what was published on the connection live in
:mod:`~rpclib.transports.rabbit.fast_publish`, which the loop feeds with
returns and confirms.

On a connection error the loop tells every resource (subscriptions,
inboxes, advert watches), reconnects with doubling backoff and full jitter
across the URL's hosts, and sets every resource up again in order. A
resource the broker refuses to set up again (a declaration refused, a
queue's home node down) is retried on its own backoff until it succeeds,
never abandoned; both the refusal and the recovery are reported as
:class:`ConnectionEvent` to the driver's listeners.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

from amqp.exceptions import AccessRefused, AMQPError, ChannelError, UnexpectedFrame

from rpclib.exceptions import AccessRefused as AccessRefusedError
from rpclib.exceptions import TransportError
from rpclib.transports.base import ConnectionEvent, ConnectionEventHandler
from rpclib.transports.rabbit.connection import (
    CONNECTION_ERRORS,
    LOG,
    Backoff,
    BrokerConnection,
    ConnectionDown,
    Delivery,
    HostRing,
    LockedWriter,
    buffered,
    close_quietly,
    connect,
    is_deliver,
    parse_confirm,
    parse_deliver,
    shutdown_socket,
)
from rpclib.transports.rabbit.declarations import (
    DeclarationRefused,
    declare_or_find,
    refusal_of,
    refused,
)
from rpclib.transports.rabbit.fast_publish import FastPublisher
from rpclib.transports.rabbit.options import RabbitOptions

T = TypeVar("T")

_FRAMES_PER_PASS: Final = 256
"""Frames read before the loop runs queued work again (keeps commands and heartbeats timely)."""
_MAX_WAIT: Final = 1.0


class Resource(Protocol):
    """Something living on the consumer connection, set up again after every reconnect."""

    def setup(self, session: Session, *, recovering: bool) -> None:
        """(Re)declare and consume on the session's current connection (I/O thread)."""

    def connection_lost(self) -> None:
        """The connection dropped (I/O thread); its channels are gone."""

    def broken(self) -> bool:
        """Whether the broker closed this resource's channel (it is then set up again)."""


@dataclass(eq=False)
class _Retry:
    backoff: Backoff
    due: float
    attempts: int = 0


class Timed(Protocol):
    def tick(self, now: float) -> float | None:
        """Do what is due at monotonic time ``now``; return when next to be called, if ever."""


@dataclass(eq=False)
class _Command:
    fn: Callable[[], Any]
    needs_connection: bool
    done: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    abandoned: bool = False
    result: Any = None
    error: BaseException | None = None


class Session:
    """The consumer connection, its I/O thread, and everything set up on it."""

    def __init__(
        self, options: RabbitOptions, ring: HostRing, label: str, *, confirms: bool = False
    ) -> None:
        self.options = options
        self._ring = ring
        self._label = label
        self.write_lock = threading.RLock()
        self._conn: BrokerConnection | None = None
        self._writer: LockedWriter | None = None
        self.generation = 0
        self._up = False
        self.up_cond = threading.Condition()
        self._control: Any = None
        self.publisher = FastPublisher(self, confirms=confirms)
        """Path-1 publishing on this connection (see fast_publish)."""
        self._commands: deque[_Command] = deque()
        self._commands_lock = threading.Lock()
        self._events: deque[Callable[[], None]] = deque()
        self._resources: list[Resource] = []
        self._retries: dict[Resource, _Retry] = {}
        """Resources the broker refused to set up, and when to try each again."""
        self.listeners: list[ConnectionEventHandler] = []
        """Called on the I/O thread with every ConnectionEvent."""
        self._reports: deque[ConnectionEvent] = deque()
        self._timed: list[Timed] = []
        self.exchanges: set[str] = set()
        """Exchanges declared on this connection's broker (cleared on reconnect)."""
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_selector = selectors.DefaultSelector()
        self._wake_selector.register(self._wake_r, selectors.EVENT_READ)
        self._selector: selectors.BaseSelector | None = None
        """Watches the connection's socket and the wake-up pipe (per connection)."""
        self._stopping = False
        self._stopped = False
        self._next_tick = 0.0
        self._thread = threading.Thread(
            target=self._run, name=f"rpclib-rabbit-io:{label}", daemon=True
        )
        self._read_timeout = float(options.heartbeat) if options.heartbeat else 60.0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Connect (each host once, from the caller's thread) and start the I/O thread."""
        try:
            self._connect_and_setup()
        except CONNECTION_ERRORS as exc:
            self._close_wake()
            hosts = ", ".join(host.address for host in self.options.hosts)
            raise TransportError(f"cannot connect to RabbitMQ at {hosts}: {exc}") from exc
        self._thread.start()

    def in_io_thread(self) -> bool:
        return threading.current_thread() is self._thread

    @property
    def up(self) -> bool:
        return self._up

    @property
    def closed(self) -> bool:
        """Whether close() began (resources then only mark themselves closed)."""
        return self._stopping or self._stopped

    @property
    def stopped(self) -> bool:
        """Whether the I/O thread has stopped for good."""
        return self._stopped

    def close(self, cleanup: Callable[[], None], timeout: float) -> None:
        """Run ``cleanup`` on the I/O thread, then close the connection and stop the thread."""
        try:
            self.call(cleanup, timeout=timeout, needs_connection=False)
        except TransportError as exc:
            LOG.warning("closing the rabbit driver: cleanup did not finish: %s", exc)
        self._stopping = True
        self.wake()
        if not self.in_io_thread():
            self._thread.join(timeout + self._read_timeout)

    # -- running work on the I/O thread ------------------------------------------------------

    def call(self, fn: Callable[[], T], *, timeout: float, needs_connection: bool = True) -> T:
        """Run ``fn`` on the I/O thread (inline if already on it) and return its result.

        A command that needs the connection waits for it (across a reconnect)
        until ``timeout``, then raises TransportError.
        """
        if self.in_io_thread():
            if needs_connection and not self._up:
                raise TransportError("the RabbitMQ connection is down (reconnecting)")
            return fn()
        command = _Command(fn, needs_connection)
        with self._commands_lock:
            if self._stopped or self._stopping:
                raise TransportError("the rabbit driver is closed")
            self._commands.append(command)
        self.wake()
        if not command.done.wait(timeout):
            with self._commands_lock:
                if not command.started:
                    command.abandoned = True
            if command.abandoned or not command.done.wait(timeout):
                raise TransportError(
                    f"the RabbitMQ connection did not complete the operation within {timeout:g}s"
                )
        if command.error is not None:
            raise command.error
        return command.result  # type: ignore[no-any-return]

    def wake(self) -> None:
        # A full pipe means the loop will wake anyway; a closed one that it stopped.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def add_event(self, fn: Callable[[], None]) -> None:
        """Queue ``fn`` to run at the top of the I/O loop (from py-amqp callbacks)."""
        self._events.append(fn)

    # -- resources ---------------------------------------------------------------------------

    def register(self, resource: Resource) -> None:
        """Track ``resource`` so it is set up again after a reconnect (I/O thread)."""
        self._resources.append(resource)

    def unregister(self, resource: Resource) -> None:
        if resource in self._resources:
            self._resources.remove(resource)
        self._retries.pop(resource, None)

    def report(self, event: ConnectionEvent) -> None:
        """Tell the listeners (at the top of the I/O loop, never inside a py-amqp read)."""
        if self.listeners:
            self._reports.append(event)

    def retry_later(self, resource: Resource, exc: BaseException) -> None:
        """The broker refused to set ``resource`` up: try again after a jittered backoff.

        Reported as a "not restored" event on the first refusal and logged at
        every one; never given up while the resource is registered.
        """
        retry = self._retries.get(resource)
        if retry is None:
            backoff = Backoff(self.options.retry_backoff, self.options.retry_backoff_max)
            retry = self._retries[resource] = _Retry(backoff, 0.0)
        retry.attempts += 1
        delay = retry.backoff.next_delay()
        retry.due = time.monotonic() + delay
        self._next_tick = min(self._next_tick, retry.due)
        LOG.warning(
            "could not set up %r (attempt %d): %s; trying again in %.1fs",
            resource,
            retry.attempts,
            exc,
            delay,
        )
        if retry.attempts == 1:
            self.report(ConnectionEvent("not restored", repr(resource), str(exc)))

    def setup_now(self, resource: Resource) -> None:
        """Set ``resource`` up again at once (I/O thread); a refusal schedules a retry."""
        self._setup_resource(resource, due=True)

    def add_timed(self, timed: Timed) -> None:
        self._timed.append(timed)

    def remove_timed(self, timed: Timed) -> None:
        if timed in self._timed:
            self._timed.remove(timed)

    def open_channel(self) -> Any:
        """A new channel on the current connection (I/O thread)."""
        if self._conn is None:
            raise ConnectionDown("not connected")
        return self._conn.channel()

    def control(self) -> Any:
        """The channel for declarations, which may fail (and then is replaced next time)."""
        if self._control is None or not self._control.is_open:
            self._control = self.open_channel()
        return self._control

    def declare_exchange(self, name: str, kind: str) -> None:
        """Declare a durable exchange once per connection (I/O thread).

        Raises DeclarationRefused if the broker refuses (another type, no permission).
        """
        if name not in self.exchanges:
            try:
                declare_or_find(
                    lambda: self.control().exchange_declare(
                        name, kind, durable=True, auto_delete=False
                    ),
                    lambda: self.control().exchange_declare(name, kind, passive=True),
                )
            except AMQPError as exc:
                if refusal_of(exc) is None:
                    raise
                raise refused(
                    f"{kind} exchange {name}", exc, "exchange", self.options.queue_type_source
                ) from exc
            self.exchanges.add(name)

    def is_current(self, generation: int) -> bool:
        """Whether connection ``generation`` is the live one."""
        return self._up and generation == self.generation

    def channel_alive(self, channel: Any) -> bool:
        return channel is not None and channel.is_open and self._up

    # -- writing from any thread ---------------------------------------------------------------

    def write(self, generation: int, fn: Callable[[], object]) -> bool:
        """Run the write ``fn`` under the write lock if connection ``generation`` is still up.

        Returns False (and writes nothing) if that connection is gone: the
        broker has requeued whatever the write was about.
        """
        with self.write_lock:
            if not self._up or generation != self.generation:
                return False
            try:
                fn()
            except (ConnectionDown, *CONNECTION_ERRORS) as exc:
                LOG.debug("write on the consumer connection failed: %s", exc)
                self.wake()
                return False
            return True

    def write_frames(self, generation: int, channel: Any, frames: bytes) -> bool:
        """Write encoded frames of ``channel`` if it and connection ``generation`` are still up.

        Returns False (and writes nothing) otherwise: the broker has requeued
        whatever the frames were about.
        """
        with self.write_lock:
            if not self._up or generation != self.generation or not channel.is_open:
                return False
            try:
                self._writer.write_raw(frames)  # type: ignore[union-attr]
            except (ConnectionDown, *CONNECTION_ERRORS) as exc:
                LOG.debug("write on the consumer connection failed: %s", exc)
                self.wake()
                return False
            return True

    def write_raw(self, frames: bytes) -> None:
        """Write encoded frames on the current connection (write lock held, connection up)."""
        self._writer.write_raw(frames)  # type: ignore[union-attr]

    def wait_up(self, deadline: float) -> bool:
        """Wait until the connection is up; False if ``deadline`` (monotonic) passed first."""
        with self.up_cond:
            while not self._up:
                if self._stopping or self._stopped:
                    raise TransportError("the rabbit driver is closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.up_cond.wait(left)
        return True

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                if not self._up:
                    self._reconnect()
                    continue
                try:
                    self._serve()
                except ChannelError as exc:
                    if self.connection_alive():
                        LOG.warning("the broker closed a channel: %s", exc)
                        self._repair()
                    elif not self._stopping:
                        self._lost(exc)
                except (ConnectionDown, *CONNECTION_ERRORS) as exc:
                    if not self._stopping:
                        self._lost(exc)
        except BaseException:
            LOG.exception("the rabbit I/O thread crashed")
            raise
        finally:
            self._shutdown()

    def _serve(self) -> None:
        conn = self._conn
        writer = self._writer
        if conn is None or writer is None or not self.connection_alive():
            broken = writer.broken if writer is not None else None
            raise ConnectionDown(f"a write failed: {broken}" if broken else "connection closed")
        selector = self._selector
        assert selector is not None
        ready = buffered(conn)
        if not ready:
            ready = self._wait(selector, self._next_timeout())
        if ready:
            # Every complete frame one recv brought in (the transport reads in chunks),
            # then handlers: no select between frames. The socket stays blocking, so a
            # partial frame waits for its rest (bounded by SO_RCVTIMEO); a read that
            # times out keeps it buffered.
            transport = conn.transport
            on_frame = conn.on_inbound_frame
            pub = self.publisher.channel
            # Confirms of path-1 publishes skip py-amqp's generic method dispatch.
            pub_id = pub.channel_id if pub is not None and pub.is_open else -1
            # basic.deliver is decoded here too (method, header, body frames): `partial`
            # holds deliveries begun but not complete, per channel. The loop only ends
            # with it empty, so py-amqp's own nested reads (a queue_declare waiting for
            # its ok, run by the events and commands below) never meet half a delivery.
            partial: dict[int, Delivery] = {}
            # A channel the broker closed while a delivery was half read: raised after it.
            deferred: ChannelError | None = None
            frames = 0
            try:
                while True:
                    frame = transport.read_frame()
                    frame_type, channel_id, payload = frame
                    if frame_type == 1:
                        confirm = parse_confirm(payload) if channel_id == pub_id else None
                        if confirm is not None:
                            conn.bytes_recv += 1  # as py-amqp's frame handler (heartbeats)
                            tag, multiple, nack = confirm
                            self.publisher.on_confirm(tag, multiple, nack=nack)
                        elif is_deliver(payload) and channel_id not in partial:
                            conn.bytes_recv += 1
                            partial[channel_id] = Delivery(channel_id, parse_deliver(payload))
                        else:
                            deferred = self._handle_frame(on_frame, frame, partial) or deferred
                    elif partial and channel_id in partial:
                        conn.bytes_recv += 1
                        delivery = partial[channel_id]
                        if frame_type == 2 and delivery.body_size < 0:
                            complete = delivery.on_header(payload)
                        elif frame_type == 3 and delivery.body_size > 0:
                            complete = delivery.on_body(payload)
                        else:
                            raise UnexpectedFrame(
                                f"frame type {frame_type} in a delivery on channel {channel_id}"
                            )
                        if complete:
                            del partial[channel_id]
                            self._on_delivery(conn, delivery)
                    else:
                        deferred = self._handle_frame(on_frame, frame, partial) or deferred
                    frames += 1
                    if not partial:
                        if deferred is not None:
                            raise deferred
                        if frames >= _FRAMES_PER_PASS or not buffered(conn):
                            break
            except TimeoutError:
                if partial:
                    raise ConnectionDown(
                        "a delivery stopped arriving half way (no frame within the read timeout)"
                    ) from None
        self._dispatch_events()
        self._run_commands()
        self._tick()

    @staticmethod
    def _handle_frame(
        on_frame: Callable[[Any], Any], frame: Any, partial: dict[int, Delivery]
    ) -> ChannelError | None:
        """py-amqp's frame handler; a ChannelError is returned (not raised) mid-delivery.

        Raising it would make the loop repair channels (nested py-amqp reads)
        before the delivery's remaining frames were read.
        """
        try:
            on_frame(frame)
        except ChannelError as exc:
            if not partial:
                raise
            return exc
        return None

    def _on_delivery(self, conn: BrokerConnection, delivery: Delivery) -> None:
        """Hand a delivery decoded by the loop to its consumer, as py-amqp's basic.deliver."""
        channel = conn.channels.get(delivery.channel) if conn.channels else None
        info = delivery.delivery_info
        if channel is None or channel.is_closing:
            # py-amqp ignores methods on a closing channel; the broker requeues.
            LOG.debug("delivery %s on closed channel %s dropped", info, delivery.channel)
            return
        delivery.channel = channel
        callback = channel.callbacks.get(info["consumer_tag"])
        if callback is None:
            LOG.warning(
                "rejecting delivery %s for unknown consumer %s",
                info["delivery_tag"],
                info["consumer_tag"],
            )
            channel.basic_reject(info["delivery_tag"], requeue=True)
            return
        callback(delivery)

    def _wait(self, selector: selectors.BaseSelector, timeout: float) -> bool:
        """Wait for the socket or a wake-up; whether the socket is readable."""
        sock_ready = False
        for key, _ in selector.select(timeout):
            if key.data == "wake":
                self._drain_wake()
            else:
                sock_ready = True
        return sock_ready

    def _next_timeout(self) -> float:
        now = time.monotonic()
        due = min(self._next_tick, now + _MAX_WAIT)
        return max(0.0, due - now) if not self._events and not self._commands else 0.0

    def _tick(self) -> None:
        now = time.monotonic()
        self.publisher.forget_expired(now)
        if now >= self._next_tick and self._conn is not None:
            self._conn.heartbeat_tick()
            hb = self.options.heartbeat
            self._next_tick = now + (min(_MAX_WAIT, hb / 4) if hb else _MAX_WAIT)
        if self._retries:
            self._retry_due(now)
        if not self._timed:
            return
        for timed in list(self._timed):
            due = timed.tick(now)
            if due is not None:
                self._next_tick = min(self._next_tick, due)

    def _retry_due(self, now: float) -> None:
        for resource, retry in list(self._retries.items()):
            if retry.due <= now and self._up:
                self._setup_resource(resource, due=True)
            elif resource in self._retries:
                self._next_tick = min(self._next_tick, retry.due)

    def _dispatch_events(self) -> None:
        self.publisher.run_outcomes()
        while self._reports:
            event = self._reports.popleft()
            for listener in list(self.listeners):
                try:
                    listener(event)
                except Exception:
                    LOG.exception("rabbit connection event listener failed")
        while self._events:
            fn = self._events.popleft()
            try:
                fn()
            except (ConnectionDown, *CONNECTION_ERRORS):
                raise
            except Exception:
                LOG.exception("rabbit driver callback failed")

    def _run_commands(self) -> None:
        while self._commands:  # unlocked peek: only the loop takes commands out
            with self._commands_lock:
                command = next(
                    (
                        c
                        for c in self._commands
                        if c.abandoned or not c.needs_connection or self._up
                    ),
                    None,
                )
                if command is None:
                    return
                self._commands.remove(command)
                if command.abandoned:
                    continue
                command.started = True
            try:
                command.result = command.fn()
            except ChannelError as exc:
                refusal = AccessRefusedError if isinstance(exc, AccessRefused) else TransportError
                command.error = refusal(f"the broker refused: {exc}")
                command.error.__cause__ = exc
                command.done.set()
                if self.connection_alive():
                    self._repair()
                    continue
                raise
            except (ConnectionDown, *CONNECTION_ERRORS) as exc:
                if command.needs_connection and not self._stopping:
                    # Run it again once reconnected (its caller is still waiting).
                    command.started = False
                    with self._commands_lock:
                        self._commands.appendleft(command)
                else:
                    command.error = TransportError(f"connection failed: {exc}")
                    command.done.set()
                raise
            except BaseException as exc:
                command.error = exc
                command.done.set()
            else:
                command.done.set()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass  # drained (BlockingIOError) or closed

    def _idle_wait(self, seconds: float) -> None:
        """Sleep between reconnect attempts while still running commands that need no connection."""
        deadline = time.monotonic() + seconds
        while not self._stopping:
            self._dispatch_events()
            self._run_commands()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._wake_selector.select(left):
                self._drain_wake()

    # -- connecting, losing, recovering ---------------------------------------------------------

    def connection_alive(self) -> bool:
        conn = self._conn
        writer = self._writer
        return bool(
            conn is not None
            and conn.connected
            and conn.channels is not None
            and writer is not None
            and writer.broken is None
        )

    def _connect_and_setup(self) -> None:
        conn = connect(
            self.options,
            self._ring,
            name=f"rpclib consumer {self._label}",
            read_timeout=self._read_timeout,
        )
        try:
            writer = LockedWriter(conn, self.write_lock)
            conn.frame_writer = writer
            conn.on_blocked = lambda reason: LOG.warning(
                "RabbitMQ blocked the connection: %s", reason
            )
            conn.on_unblocked = lambda: LOG.info("RabbitMQ unblocked the connection")
            self._replace_selector(conn)
            with self.write_lock:
                self._conn, self._writer = conn, writer
                self.generation += 1
                self._control = None
                self.exchanges.clear()
            self.publisher.open_channel()
            with self.write_lock:
                self._up = True  # resources' setup below may publish (advert sync)
            self.publisher.resend_unconfirmed()
            for resource in list(self._resources):
                self._setup_resource(resource)
            self._next_tick = 0.0
        except BaseException:
            with self.write_lock:
                self._up = False
            self._replace_selector(None)
            close_quietly(conn)
            self._conn = None
            self._events.clear()  # nothing from a failed attempt may reach handlers
            raise
        with self.up_cond:
            self.up_cond.notify_all()

    def _replace_selector(self, conn: BrokerConnection | None) -> None:
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if conn is not None:
            selector = selectors.DefaultSelector()
            selector.register(conn.sock, selectors.EVENT_READ, "sock")
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            self._selector = selector

    def _setup_resource(self, resource: Resource, *, due: bool = False) -> None:
        """Set ``resource`` up again; a refusal schedules a retry instead of raising.

        A resource waiting for its retry is left alone until it is due, even
        across reconnects: a refusal that closes the whole connection (541)
        then costs one reconnect per backoff step, not a loop.
        """
        retry = self._retries.get(resource)
        if retry is not None and not due and retry.due > time.monotonic():
            return
        try:
            resource.setup(self, recovering=True)
        except (DeclarationRefused, ChannelError) as exc:
            self.retry_later(resource, exc)
            if not self.connection_alive():
                raise ConnectionDown(f"the broker closed the connection: {exc}") from exc
            return
        if self._retries.pop(resource, None) is not None:
            LOG.warning("set up %r again after the broker's earlier refusal", resource)
            self.report(ConnectionEvent("restored", repr(resource)))

    def _repair(self) -> None:
        """Some channel was closed by the broker: replace it, keep the connection."""
        self.publisher.replace_if_closed()
        for resource in list(self._resources):
            if resource.broken():
                self._setup_resource(resource)

    def _lost(self, exc: BaseException) -> None:
        LOG.warning("RabbitMQ connection lost (%s); reconnecting", exc or type(exc).__name__)
        self.report(ConnectionEvent("disconnected", detail=str(exc)))
        conn = self._conn
        with self.write_lock:
            self._up = False
            if self._writer is not None and self._writer.broken is None:
                self._writer.broken = exc
        self._replace_selector(None)
        if conn is not None:
            shutdown_socket(conn)
            close_quietly(conn)
        self._conn = None
        self._control = None
        self.publisher.connection_lost(str(exc))
        self._dispatch_events()
        for resource in list(self._resources):
            try:
                resource.connection_lost()
            except Exception:
                LOG.exception("%r failed to handle the connection loss", resource)

    def _reconnect(self) -> None:
        backoff = Backoff(self.options.retry_backoff, self.options.retry_backoff_max)
        while not self._stopping:
            self._idle_wait(backoff.next_delay())
            if self.closed:  # close() may have begun while we slept
                return
            self.publisher.expire_resends()
            self._dispatch_events()
            try:
                self._connect_and_setup()
            except (ConnectionDown, *CONNECTION_ERRORS) as exc:
                LOG.warning("reconnecting to RabbitMQ failed: %s", exc)
                continue
            LOG.info("reconnected to RabbitMQ (connection generation %d)", self.generation)
            self.report(ConnectionEvent("reconnected"))
            return

    def _shutdown(self) -> None:
        with self._commands_lock:
            self._stopped = True
            leftover = list(self._commands)
            self._commands.clear()
        for command in leftover:
            command.error = TransportError("the rabbit driver is closed")
            command.done.set()
        conn = self._conn
        with self.write_lock:
            self._up = False
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:
                LOG.debug("closing the consumer connection: %s", exc)
                close_quietly(conn)
        self._conn = None
        self.publisher.shut_down()
        with self.up_cond:
            self.up_cond.notify_all()
        self._close_wake()

    def _close_wake(self) -> None:
        self._replace_selector(None)
        self._wake_selector.close()
        for sock in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                sock.close()
