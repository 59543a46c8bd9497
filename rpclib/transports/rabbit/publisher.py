"""Publish paths 2 and 3: pooled publisher connections in confirm mode.

A sender checks a connection out, publishes with ``mandatory`` and reads
that connection itself until the broker confirms; a ``basic.return`` before
the confirm means nothing could take the message (RabbitMQ always sends the
return before the ack of an unroutable mandatory message), so the send
raises Undeliverable. Only the thread holding a connection touches it, so it
may use socket timeouts freely. A maintenance thread reads and heartbeats the
idle ones so the broker does not drop them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from typing import Any, Final

from amqp.exceptions import AccessRefused, ChannelError, NotFound

from rpclib.exceptions import AccessRefused as AccessRefusedError
from rpclib.exceptions import TransportError, Undeliverable
from rpclib.transports.rabbit import naming
from rpclib.transports.rabbit.connection import (
    CONNECTION_ERRORS,
    LOG,
    Backoff,
    BrokerConnection,
    HostRing,
    PublishEncoder,
    ReadWaiter,
    buffered,
    close_quietly,
    connect,
    parse_confirm,
    publish,
    within,
)
from rpclib.transports.rabbit.declarations import declare_or_find
from rpclib.transports.rabbit.options import RabbitOptions

MAX_CONNECTIONS: Final = 8
"""Publisher connections per driver; more concurrent senders wait for one."""
_READ_SLICE: Final = 1.0
"""Longest single socket wait while confirming, so heartbeats keep flowing."""
_HEARTBEAT_CHECK: Final = 0.5
"""Seconds between heartbeat checks while frames keep arriving."""


class Refused(Exception):
    """The broker nacked a publish: it did not take the message (the connection is fine).

    A quorum queue nacks while it elects a leader (a node was lost), a queue
    with ``x-overflow=reject-publish`` while it is full: often transient, so
    at-least-once sends try again within their deadline.
    """


class _Publisher:
    """One pooled connection with one confirm-mode channel.

    Publishes are encoded by :class:`PublishEncoder` and written in one piece;
    confirms are decoded here, and every other frame (returns, heartbeats,
    channel closes) goes through py-amqp's frame handler.
    """

    def __init__(self, conn: BrokerConnection) -> None:
        self.conn = conn
        self.channel: Any = None
        self.exchanges: set[str] = set()
        self._seq = 0
        self._epoch = 0
        self._id_prefix = uuid.uuid4().hex[:12] + "."
        """Starts message ids (then channel epoch and delivery tag): unique per channel."""
        self._outstanding: dict[int, str | None] = {}
        """delivery tag -> None while unconfirmed, then "ack" or "nack"."""
        self._returned: dict[str, str] = {}
        """message id -> the broker's reason, for returns not yet matched to a confirm."""
        self._encoder: PublishEncoder | None = None
        self._waiter = ReadWaiter(conn.sock)
        self._next_heartbeat_tick = 0.0
        self.open_channel()

    def open_channel(self) -> None:
        """(Re)open the confirm-mode channel (after the broker closed the previous one)."""
        channel = self.conn.channel()
        channel.confirm_select()
        channel.events["basic_return"].add(self._on_return)
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        self.channel = channel
        self._encoder = PublishEncoder(
            channel.channel_id, self.conn.frame_max, self.conn.rpclib_user
        )
        self._seq = 0
        self._epoch += 1
        self._outstanding.clear()
        self._returned.clear()

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        message_id = message.properties.get("message_id")
        if message_id:
            self._returned[message_id] = str(getattr(exc, "reply_text", "") or exc)

    def _settle(self, tag: int, multiple: bool, outcome: str) -> None:
        if not multiple:
            if tag in self._outstanding:
                self._outstanding[tag] = outcome
            return
        for pending in self._outstanding:
            if pending <= tag:
                self._outstanding[pending] = outcome

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, "ack")

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, "nack")

    def declare_exchange(self, name: str, kind: str, deadline: float) -> None:
        def find() -> None:
            self.open_channel()  # the refusal closed the channel
            self.channel.exchange_declare(name, kind, passive=True)

        with self.conn.transport.having_timeout(_remaining(deadline)):
            declare_or_find(
                lambda: self.channel.exchange_declare(name, kind, durable=True, auto_delete=False),
                find,
            )
        self.exchanges.add(name)

    def ensure_queue(self, name: str, arguments: dict[str, Any] | None, deadline: float) -> None:
        """Use the durable queue ``name`` as it is, or create it with ``arguments`` if missing;
        then bind it by its name to ``rpclib.queues`` unless the account may not (the admin
        did: rabbit/access.py binds the dead-letter queue so no account needs to)."""
        with self.conn.transport.having_timeout(_remaining(deadline)):
            try:
                self.channel.queue_declare(name, passive=True)
            except NotFound:
                self.open_channel()  # a failed passive declare closes the channel
                self.channel.queue_declare(
                    name, durable=True, auto_delete=False, arguments=arguments or None
                )
            exchange = naming.QUEUES_EXCHANGE
            if exchange not in self.exchanges:
                self.declare_exchange(exchange, "topic", deadline)
            try:
                self.channel.queue_bind(name, exchange, naming.queue_key(name))
            except AccessRefused as exc:
                self.open_channel()  # the refusal closed the channel
                LOG.debug("%s is bound by the admin, not by this account: %s", name, exc)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: dict[str, Any],
        *,
        mandatory: bool,
        deadline: float,
    ) -> str | None:
        """Publish and wait for the confirm; the broker's reason if it returned the message."""
        self._seq += 1
        tag = self._seq
        message_id = f"{self._id_prefix}{self._epoch}.{tag}"
        self._outstanding[tag] = None
        assert self._encoder is not None
        frames = self._encoder.encode(
            exchange, routing_key, body, properties, mandatory=mandatory, message_id=message_id
        )
        if frames is not None:
            self.conn.transport.write(frames)
            self.conn.bytes_sent += 1  # as py-amqp's frame writer (heartbeats)
        else:  # a body larger than a frame: py-amqp splits it
            publish(
                self.channel,
                exchange,
                routing_key,
                body,
                {**properties, "message_id": message_id},
                mandatory=mandatory,
            )
        try:
            while self._outstanding[tag] is None:
                self._read_one(deadline)
            outcome = self._outstanding[tag]
        finally:
            self._outstanding.pop(tag, None)
        returned = self._returned.pop(message_id, None)
        if outcome == "nack":
            raise Refused("the broker refused the message (basic.nack)")
        return returned

    def _read_one(self, deadline: float) -> None:
        """Wait (up to ``_READ_SLICE``) for one frame and handle it; heartbeat meanwhile."""
        conn = self.conn
        if not (buffered(conn) or self._waiter.wait(min(_remaining(deadline), _READ_SLICE))):
            self._heartbeat(force=True)
            return
        # Data is there: a buffered frame, or one recv (a whole frame bar a partial one,
        # whose rest the socket's read timeout bounds).
        frame = conn.transport.read_frame()
        frame_type, channel_id, payload = frame
        confirm = (
            parse_confirm(payload)
            if frame_type == 1 and channel_id == self.channel.channel_id
            else None
        )
        if confirm is None:
            conn.on_inbound_frame(frame)
        else:
            conn.bytes_recv += 1  # as py-amqp's frame handler (heartbeats)
            tag, multiple, nack = confirm
            self._settle(tag, multiple, "nack" if nack else "ack")
        self._heartbeat()

    def _heartbeat(self, force: bool = False) -> None:
        """py-amqp's heartbeat check, at most every ``_HEARTBEAT_CHECK`` s while busy."""
        now = time.monotonic()
        if force or now >= self._next_heartbeat_tick:
            self._next_heartbeat_tick = now + _HEARTBEAT_CHECK
            self.conn.heartbeat_tick()

    def service(self) -> None:
        """Idle upkeep: read whatever arrived (heartbeats, blocked notices), send heartbeats."""
        conn = self.conn
        while buffered(conn) or self._waiter.wait(0):
            conn.blocking_read()
        self._heartbeat()


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the send's deadline passed")
    return left


class PublisherPool:
    """Checked-out confirm-mode publisher connections; see the module docstring."""

    def __init__(self, options: RabbitOptions, ring: HostRing, label: str) -> None:
        self._options = options
        self._ring = ring
        self._label = label
        self._idle: deque[_Publisher] = deque()
        self._servicing = 0
        """Idle publishers the maintenance thread has out right now (back within moments)."""
        self._count = 0
        self._cond = threading.Condition()
        self._closed = False
        self.exchanges: set[str] = set()
        """Exchanges known to exist (declared by any of this driver's connections)."""
        self._maintenance: threading.Thread | None = None
        self._stop = threading.Event()

    # -- checkout --------------------------------------------------------------------

    def _acquire(self, deadline: float) -> _Publisher:
        while True:
            publisher = self._checkout(deadline)
            if publisher is None:
                break
            try:
                # Read what arrived while idle: a connection the broker closed shows up
                # here, before a message is risked on it.
                publisher.service()
            except CONNECTION_ERRORS as exc:
                LOG.info("pooled publisher connection was dropped: %s", exc)
                self._discard(publisher)
                continue
            return publisher
        try:
            return self._open(deadline)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _checkout(self, deadline: float) -> _Publisher | None:
        """An idle publisher, or None after reserving a slot for a new connection."""
        with self._cond:
            while True:
                if self._closed:
                    raise TransportError("the rabbit driver is closed")
                if self._idle:
                    return self._idle.pop()
                if self._count < MAX_CONNECTIONS and not self._servicing:
                    self._count += 1
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransportError(
                        f"no publisher connection became free {within(self._options)}"
                    )
                self._cond.wait(left)

    def _open(self, deadline: float) -> _Publisher:
        backoff = Backoff(self._options.retry_backoff, self._options.retry_backoff_max)
        while True:
            try:
                conn = connect(
                    self._options,
                    self._ring,
                    name=f"rpclib publisher {self._label}",
                    read_timeout=float(self._options.heartbeat or 60),
                    deadline=deadline,
                )
            except CONNECTION_ERRORS as exc:
                delay = backoff.next_delay()
                if time.monotonic() + delay >= deadline or self._closed:
                    raise TransportError(
                        f"cannot connect to RabbitMQ to publish {within(self._options)}: {exc}"
                    ) from exc
                LOG.warning("publisher connection failed (%s); retrying in %.2fs", exc, delay)
                time.sleep(delay)
                continue
            try:
                setup = min(self._options.connect_timeout, max(0.01, deadline - time.monotonic()))
                with conn.transport.having_timeout(setup):
                    publisher = _Publisher(conn)
            except CONNECTION_ERRORS:
                close_quietly(conn)
                raise
            self._start_maintenance()
            return publisher

    def _release(self, publisher: _Publisher) -> None:
        with self._cond:
            if not self._closed:
                self._idle.append(publisher)
                self._cond.notify()
                return
            self._count -= 1
        close_quietly(publisher.conn)

    def _discard(self, publisher: _Publisher) -> None:
        close_quietly(publisher.conn)
        with self._cond:
            self._count -= 1
            self._cond.notify()

    # -- publishing ----------------------------------------------------------------------

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: dict[str, Any],
        *,
        target: str,
        exchange_type: str | None,
        deadline: float,
        retry_after_write: bool,
    ) -> None:
        """Publish with ``mandatory`` and wait for the confirm.

        Raises Undeliverable if the broker returned the message, TransportError
        if it could not be confirmed by ``deadline``. A failure after the
        message was written, and a broker's refusal (``basic.nack``), are
        retried only if ``retry_after_write`` (at-least-once: a duplicate is
        allowed, a loss is not): during a failover a quorum queue nacks until
        it has a leader again.
        """
        backoff = Backoff(self._options.retry_backoff, self._options.retry_backoff_max)
        while True:
            publisher = self._acquire(deadline)
            written = False
            try:
                if exchange_type is not None and exchange not in publisher.exchanges:
                    publisher.declare_exchange(exchange, exchange_type, deadline)
                    self.exchanges.add(exchange)
                written = True
                returned = publisher.publish(
                    exchange, routing_key, body, properties, mandatory=True, deadline=deadline
                )
            except Refused as exc:
                # The connection is fine, but a channel that a quorum queue's old leader
                # refused can keep being refused (RabbitMQ 3.10): try again on a new one.
                self._discard(publisher)
                if not retry_after_write:
                    raise TransportError(
                        f"the broker refused a message to {target}: {exc}"
                    ) from exc
                error: BaseException = exc
            except NotFound as exc:
                # The exchange was deleted behind our back: forget it and declare it again.
                self._discard(publisher)
                self.exchanges.discard(exchange)
                error = exc
            except ChannelError as exc:
                self._discard(publisher)
                refusal = AccessRefusedError if isinstance(exc, AccessRefused) else TransportError
                raise refusal(f"the broker refused a message to {target}: {exc}") from exc
            except (*CONNECTION_ERRORS, TimeoutError) as exc:
                self._discard(publisher)
                if written and not retry_after_write:
                    raise TransportError(
                        f"connection failed while publishing to {target}; "
                        f"the message may or may not have been delivered: {exc}"
                    ) from exc
                error = exc
            except BaseException:
                self._discard(publisher)
                raise
            else:
                self._release(publisher)
                if returned is not None:
                    raise Undeliverable(target, f"no queue is bound to it ({returned})")
                return
            delay = backoff.next_delay()
            if time.monotonic() + delay >= deadline:
                raise TransportError(
                    f"could not publish to {target} {within(self._options)}: {error}"
                ) from error
            LOG.warning("publishing to %s failed (%s); retrying in %.2fs", target, error, delay)
            time.sleep(delay)

    def ensure_queue(self, name: str, arguments: dict[str, Any] | None, deadline: float) -> None:
        """Make sure the durable queue ``name`` (dead letters) exists, whatever its type."""
        publisher = self._acquire(deadline)
        try:
            publisher.ensure_queue(name, arguments, deadline)
        except BaseException:
            self._discard(publisher)
            raise
        self._release(publisher)

    def with_channel(self, deadline: float) -> _Checkout:
        """A checked-out connection's channel for synchronous work (reading dead letters)."""
        return _Checkout(self, deadline)

    # -- upkeep ------------------------------------------------------------------------------

    def _start_maintenance(self) -> None:
        with self._cond:
            if self._maintenance is not None or self._closed:
                return
            self._maintenance = threading.Thread(
                target=self._maintain, name=f"rpclib-rabbit-publishers:{self._label}", daemon=True
            )
            self._maintenance.start()

    def _maintain(self) -> None:
        heartbeat = self._options.heartbeat
        interval = max(0.25, heartbeat / 4) if heartbeat else 5.0
        while not self._stop.wait(interval):
            with self._cond:
                idle = list(self._idle)
            for publisher in idle:
                with self._cond:
                    if publisher not in self._idle:
                        continue  # checked out meanwhile: its holder reads it
                    self._idle.remove(publisher)
                    self._servicing += 1
                try:
                    publisher.service()
                except CONNECTION_ERRORS as exc:
                    LOG.info("idle publisher connection dropped: %s", exc)
                    self._discard(publisher)
                else:
                    self._release(publisher)
                finally:
                    with self._cond:
                        self._servicing -= 1
                        self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle = list(self._idle)
            self._idle.clear()
            self._count -= len(idle)
            self._cond.notify_all()
            maintenance = self._maintenance
        self._stop.set()
        for publisher in idle:
            try:
                publisher.conn.close()
            except Exception:
                close_quietly(publisher.conn)
        if maintenance is not None and maintenance is not threading.current_thread():
            maintenance.join()


class _Checkout:
    """Context manager lending one pooled publisher; discards it if the body raised."""

    def __init__(self, pool: PublisherPool, deadline: float) -> None:
        self._pool = pool
        self._deadline = deadline
        self._publisher: _Publisher | None = None

    def __enter__(self) -> _Publisher:
        self._publisher = self._pool._acquire(self._deadline)
        return self._publisher

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self._publisher is not None
        if exc_type is None:
            self._pool._release(self._publisher)
        else:
            self._pool._discard(self._publisher)
