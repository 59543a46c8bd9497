"""Subscriptions, the messages they deliver, and reply inboxes.

A subscription owns one channel on the consumer connection with a bounded
per-consumer prefetch and consumes both queues of its address (the durable
one and the ``.live`` one; a fanout subscription has one private queue).
How each queue is declared is in :mod:`~rpclib.transports.rabbit.declarations`.
Handlers run on the I/O thread; :class:`RabbitIncoming` can be settled from
any thread. Settling checks the delivery's *epoch* (which channel delivered
it): a message from a channel or connection that is gone was already
requeued by the broker, so settling it is ignored.

``requeue()`` republishes the message to its own queue (through
``rpclib.queues``, where each queue is bound by its name) with
``x-rpclib-attempts`` (confirmed) and then acks the original: classic
queues have no delivery count, and the redelivered flag only says "at least
once before".

``dead_letter()`` copies the message into the vhost's bounded dead-letter
queue (through ``rpclib.queues`` too) without ever waiting for the broker on
the thread that settles (the I/O thread, for what a server refuses on
arrival), so a flood of garbage
does not stall the calls behind it:

- from the durable (at-least-once) queue: a persistent, *pipelined* publish
  on the driver's confirm-mode connection; the original is acked once the
  broker confirms the copy (rejected for redelivery if it cannot be stored);
- from an at-most-once queue (``.live``, fanout): nothing was promised, so
  the copy is *transient* and unconfirmed, written on the consumer's own
  connection, and the original is acked at once. It is not persisted (on a
  classic dead-letter queue it does not survive a broker restart; a quorum
  one logs everything, bounded all the same).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from amqp.exceptions import ChannelError, NotFound

from rpclib.exceptions import TransportError, Undeliverable
from rpclib.logsummary import SummaryLog
from rpclib.transports.base import (
    Address,
    InboxEventHandler,
    InboxHandler,
    MessageHandler,
    SendOutcomeHandler,
)
from rpclib.transports.rabbit import naming
from rpclib.transports.rabbit.connection import (
    CONNECTION_ERRORS,
    ConnectionDown,
    body_of,
    encode_settle,
    expiration_ms,
    headers_of,
)
from rpclib.transports.rabbit.declarations import (
    DeclarationRefused,
    QueueSpec,
    dead_letter_queue_arguments,
    declare_queue,
    declare_reply_queue,
)

if TYPE_CHECKING:
    from rpclib.transports.rabbit.io_thread import Session
    from rpclib.transports.rabbit.publisher import PublisherPool

LOG = logging.getLogger("rpclib.transports.rabbit")

ATTEMPTS: Final = "x-rpclib-attempts"
EXPIRES_AT: Final = "x-rpclib-expires-at"
REASON: Final = "x-rpclib-reason"
SOURCE: Final = "x-rpclib-source"
SENDER: Final = "x-rpclib-sender"
"""The original sender of a message this driver put back into its queue (requeue) or
into the dead-letter queue; trusted only as :func:`sender_of` says."""
DELIVERY_COUNT: Final = "x-delivery-count"
DEAD_LETTER_KEY: Final = naming.queue_key(naming.DEAD_LETTER_QUEUE)
PERSISTENT: Final = 2
TRANSIENT: Final = 1
_QUEUE_REFUSALS: Final = frozenset({404, 405, 406})
"""Refusals about the queue itself (home node down, locked, other arguments): a reply
queue refused so is replaced by one of a fresh name."""


def queues_for(address: Address, group: str | None, principal: str) -> list[QueueSpec]:
    """The queues a subscription to ``address`` consumes (names per docs/transports/rabbit.md)."""
    if address.fanout:
        exchange = naming.fanout_exchange(address)
        return [QueueSpec(naming.fanout_queue(address, principal), exchange, "", "private")]
    return [
        QueueSpec(
            naming.queue_name(address, group),
            address.exchange,
            naming.routing_key(address),
            "durable",
        ),
        QueueSpec(
            naming.queue_name(address, group, live=True),
            address.exchange,
            naming.routing_key(address, live=True),
            "server-live" if address.server is not None else "shared-live",
        ),
    ]


class Settler:
    """What settling needs besides the consumer connection: republishes and dead letters."""

    def __init__(
        self,
        pool: PublisherPool,
        options_send_timeout: float,
        queue_type: str,
        pipeline: Callable[[], Session],
    ) -> None:
        self._pool = pool
        self._send_timeout = options_send_timeout
        self._queue_type = queue_type
        self._pipeline = pipeline
        """Opens (once) the driver's confirm-mode connection of pipelined publishes."""
        self._dlq_declared = False
        self._lock = threading.Lock()
        self.log = SummaryLog(LOG)
        """Dead-lettering trouble, one line per kind and interval (a flood must not flood)."""

    def deadline(self) -> float:
        return time.monotonic() + self._send_timeout

    def republish(self, queue: str, body: bytes, properties: dict[str, Any]) -> None:
        """Put a copy back into ``queue`` (confirmed); Undeliverable if the queue is gone."""
        self._pool.publish(
            naming.QUEUES_EXCHANGE,
            naming.queue_key(queue),
            body,
            properties,
            target=queue,
            exchange_type="topic",
            deadline=self.deadline(),
            retry_after_write=True,
        )

    def ensure_dead_letter_queue(self, deadline: float) -> None:
        """Declare the vhost's bounded dead-letter queue once per driver."""
        with self._lock:
            if not self._dlq_declared:
                arguments = dead_letter_queue_arguments(self._queue_type)
                self._pool.ensure_queue(naming.DEAD_LETTER_QUEUE, arguments, deadline)
                self._dlq_declared = True
                self._report_legacy_queue(deadline)

    def _report_legacy_queue(self, deadline: float) -> None:
        """Warn (once per driver) if the unbounded dead-letter queue of older releases exists."""
        try:
            with self._pool.with_channel(deadline) as publisher:
                try:
                    ok = publisher.channel.queue_declare(
                        naming.LEGACY_DEAD_LETTER_QUEUE, passive=True
                    )
                except NotFound:
                    publisher.open_channel()  # a failed passive declare closes the channel
                    return
        except (TransportError, *CONNECTION_ERRORS) as exc:
            LOG.debug("could not look for %s: %s", naming.LEGACY_DEAD_LETTER_QUEUE, exc)
            return
        LOG.warning(
            "the unbounded dead-letter queue %s of an older rpclib still exists (%d messages); "
            "it is no longer written: dead letters go to the bounded %s. Read what it holds, "
            "then delete it",
            naming.LEGACY_DEAD_LETTER_QUEUE,
            ok.message_count,
            naming.DEAD_LETTER_QUEUE,
        )

    def dead_letter_kept(
        self, body: bytes, properties: dict[str, Any], on_outcome: SendOutcomeHandler
    ) -> None:
        """Pipelined confirmed publish to the dead-letter queue; ``on_outcome`` hears the end.

        Returns once the publish is written (it waits only while the confirm
        window is full); raises TransportError if it cannot even be taken on.
        """
        deadline = self.deadline()
        self.ensure_dead_letter_queue(deadline)
        self._pipeline().publisher.publish(
            naming.QUEUES_EXCHANGE,
            DEAD_LETTER_KEY,
            body,
            properties,
            target=naming.DEAD_LETTER_QUEUE,
            mandatory=True,
            deadline=deadline,
            on_outcome=on_outcome,
        )

    def dead_letter_transient(
        self, session: Session, body: bytes, properties: dict[str, Any]
    ) -> None:
        """Unconfirmed publish to the dead-letter queue on ``session`` (the consumer's own)."""
        deadline = self.deadline()
        self.ensure_dead_letter_queue(deadline)
        session.publisher.publish(
            naming.QUEUES_EXCHANGE,
            DEAD_LETTER_KEY,
            body,
            properties,
            target=naming.DEAD_LETTER_QUEUE,
            mandatory=False,
            deadline=deadline,
            wait_for_connection=False,
        )


# --- incoming messages ---------------------------------------------------------------


def attempts_of(headers: dict[str, Any], redelivered: bool) -> int:
    """1 on first delivery; requeues (header), crashes (redelivered / quorum count) add one each."""
    previous = _as_int(headers.get(ATTEMPTS))
    count = headers.get(DELIVERY_COUNT)
    crashes = _as_int(count) if count is not None else int(bool(redelivered))
    return previous + crashes + 1


def sender_of(properties: dict[str, Any], own_user: str) -> str | None:
    """The authenticated sender of a delivery with ``properties``, for a consumer logged in
    as ``own_user``.

    RabbitMQ refuses a publish whose ``user_id`` is not the publishing
    connection's user, and this driver sets it on every publish, so ``user_id``
    is the sender. The one exception is a copy this driver republished to
    requeue a message (classic queues count attempts no other way): its
    ``user_id`` is the republisher's, and the original sender travels in
    :data:`SENDER`. That header is believed only when the republisher is this
    consumer's own user; from anyone else a copy carrying it is unauthenticated
    (None), so a peer that requeues (or a rogue that forges the header) can
    never make a message look like it came from someone other than its
    publisher — at worst it looks like it came from nobody.
    """
    user = properties.get("user_id")
    if user is None:
        return None
    headers = properties.get("application_headers")
    if not headers or SENDER not in headers:
        return str(user)
    if user != own_user:
        return None
    original = headers[SENDER]
    return original if type(original) is str and original else None


def _as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0
    try:
        return max(0, int(value))
    except ValueError:
        return 0


class RabbitIncoming:
    """A delivered message (the driver's :class:`~rpclib.transports.base.Incoming`)."""

    __slots__ = (
        "_at_least_once",
        "_body",
        "_epoch",
        "_generation",
        "_message",
        "_queue",
        "_settled",
        "_sub",
        "_tag",
        "attempts",
        "sender",
    )

    def __init__(
        self, sub: RabbitSubscription, epoch: int, generation: int, queue: str, message: Any
    ) -> None:
        self._sub = sub
        self._epoch = epoch
        self._generation = generation
        self._queue = queue
        self._message = message
        self._tag: int = message.delivery_info["delivery_tag"]
        self._body = body_of(message)
        self.attempts = attempts_of(headers_of(message), message.delivery_info["redelivered"])
        self.sender: str | None = sender_of(message.properties, sub.session.options.principal)
        """The broker-verified sender (see :func:`sender_of`); None if unauthenticated."""
        self._settled: str | None = None
        self._at_least_once = queue in sub.durable_queues

    @property
    def body(self) -> bytes:
        return self._body

    def ack(self) -> None:
        """Done with it: remove it from the queue."""
        self._settle("ack")

    def requeue(self) -> None:
        """Give it back for redelivery (to the tail of its queue, attempts + 1)."""
        self._settle("requeue")

    def dead_letter(self, reason: str) -> None:
        """Move it to the dead-letter queue with ``reason``; it is not redelivered."""
        self._settle("dead_letter", str(reason))

    def __repr__(self) -> str:
        return (
            f"<rabbit Incoming from {self._queue} attempts={self.attempts} "
            f"{len(self._body)} bytes {self._settled or 'unsettled'}>"
        )

    def expired(self) -> bool:
        expires_at = headers_of(self._message).get(EXPIRES_AT)
        return isinstance(expires_at, int | float) and time.time() >= expires_at

    def _settle(self, how: str, reason: str = "") -> None:
        sub = self._sub
        with sub.lock:
            if self._settled is not None:
                raise RuntimeError(
                    f"cannot {how.replace('_', ' ')} a message already settled with "
                    f"{self._settled.replace('_', ' ')}(); settle each Incoming exactly once"
                )
            self._settled = how
            self._apply(how, reason)

    def settle_if_unsettled(self, how: str) -> None:
        """Settle unless the handler already did (after a handler crash)."""
        with self._sub.lock:
            if self._settled is None:
                self._settled = how
                self._apply(how, "")

    def _apply(self, how: str, reason: str) -> None:
        """Carry out a settlement (subscription lock held, so close() cannot interleave)."""
        sub = self._sub
        if sub.epoch != self._epoch or sub.closed:
            LOG.debug(
                "%s of a message from %s ignored: its channel is gone and the broker requeued it",
                how,
                self._queue,
            )
            return
        if not sub.session.is_current(self._generation):
            LOG.debug("%s of a message from %s ignored: its connection is gone", how, self._queue)
            return
        if how == "requeue" and not self._republish():
            return
        if how == "dead_letter":
            self._to_dead_letters(reason)  # acks or rejects it, now or once the copy is stored
            return
        if not sub.write_ack(self._generation, self._tag):
            LOG.debug("ack of a message from %s ignored: its connection is gone", self._queue)

    def _copy_properties(self, headers: dict[str, Any]) -> dict[str, Any]:
        props = {
            key: value
            for key, value in self._message.properties.items()
            if key not in ("application_headers", "message_id", "expiration")
        }
        props["application_headers"] = headers
        expires_at = headers.get(EXPIRES_AT)
        if isinstance(expires_at, int | float):
            props["expiration"] = expiration_ms(expires_at - time.time())
        return props

    def _carry_sender(self, headers: dict[str, Any]) -> None:
        """Record the original sender in a copy this driver publishes (its user_id is ours).

        An unauthenticated message's copy says so (an empty sender): without
        the header its copy would pass for one of ours.
        """
        headers[SENDER] = self.sender or ""

    def _republish(self) -> bool:
        """Put a copy with attempts recorded at the tail of the queue; False if it fell back."""
        headers = headers_of(self._message)
        headers.pop(DELIVERY_COUNT, None)
        headers[ATTEMPTS] = self.attempts
        self._carry_sender(headers)
        try:
            self._sub.settler.republish(self._queue, self._body, self._copy_properties(headers))
        except (Undeliverable, TransportError) as exc:
            # Fall back to AMQP's requeue: the count only grows by the redelivered flag.
            LOG.warning(
                "requeue of a message from %s by republishing failed (%s); "
                "rejecting it for redelivery instead",
                self._queue,
                exc,
            )
            if not self._sub.write_reject(self._generation, self._tag):
                LOG.debug("reject ignored: the connection is gone (the broker requeued it)")
            return False
        return True

    def _to_dead_letters(self, reason: str) -> None:
        """Copy it to the dead-letter queue without waiting for the broker (module docstring)."""
        headers = headers_of(self._message)
        headers.pop(DELIVERY_COUNT, None)
        headers.pop(EXPIRES_AT, None)
        headers.update({REASON: reason, SOURCE: self._queue, ATTEMPTS: self.attempts})
        self._carry_sender(headers)
        props = self._copy_properties(headers)
        props.pop("expiration", None)
        sub = self._sub
        if not self._at_least_once:
            props["delivery_mode"] = TRANSIENT
            try:
                sub.settler.dead_letter_transient(sub.session, self._body, props)
            except (Undeliverable, TransportError) as exc:
                sub.settler.log.log(
                    logging.WARNING,
                    "at-most-once dead letters lost",
                    "could not copy an at-most-once message from %s to the dead letters (%s); "
                    "dropping it (%s)",
                    self._queue,
                    exc,
                    reason,
                )
            LOG.debug("dead-lettered a message from %s: %s", self._queue, reason)
            sub.write_ack(self._generation, self._tag)
            return
        props["delivery_mode"] = PERSISTENT
        try:
            sub.settler.dead_letter_kept(self._body, props, self._dead_letter_stored)
        except (Undeliverable, TransportError) as exc:
            self._dead_letter_stored(exc)

    def _dead_letter_stored(self, error: BaseException | None) -> None:
        """The dead letter's copy was confirmed (ack the original) or failed (redeliver it).

        Runs on the pipelining connection's I/O thread (or the settling one).
        """
        sub = self._sub
        with sub.lock:
            if sub.epoch != self._epoch or sub.closed:
                LOG.debug(
                    "dead letter from %s stored after its channel went: the broker requeued "
                    "the original, which will be dead-lettered again",
                    self._queue,
                )
                return
            if error is None:
                LOG.debug("dead-lettered a message from %s", self._queue)
                sub.write_ack(self._generation, self._tag)
                return
            sub.settler.log.log(
                logging.ERROR,
                "dead letters not stored",
                "could not dead-letter a message from %s (%s); rejecting it for redelivery instead",
                self._queue,
                error,
            )
            sub.write_reject(self._generation, self._tag)


# --- subscriptions -------------------------------------------------------------------


class RabbitSubscription:
    """A consumer of one address on its own channel; see the module docstring.

    States: active, *cancelled* (consumers cancelled, delivered messages
    still settleable on the open channel), *closed* (channel closed: the
    broker requeues everything unsettled).
    """

    def __init__(
        self,
        session: Session,
        settler: Settler,
        address: Address,
        group: str | None,
        handler: MessageHandler,
        prefetch: int,
    ) -> None:
        self.session = session
        self.settler = settler
        self.address = address
        self.group = group
        self.handler = handler
        self.prefetch = prefetch
        self.queues = queues_for(address, group, session.options.principal)
        self.durable_queues = frozenset(q.name for q in self.queues if q.kind == "durable")
        """The at-least-once queues (dead letters from them are kept, see the module doc)."""
        self.lock = threading.RLock()
        self.channel: Any = None
        self.epoch = 0
        self.cancelled = False
        self.closed = False
        self._tags: dict[str, QueueSpec] = {}

    def __repr__(self) -> str:
        group = f" group={self.group}" if self.group else ""
        return f"<rabbit Subscription {self.address}{group}>"

    # -- setup (I/O thread) ----------------------------------------------------------

    def start(self) -> None:
        """First setup, then track it for recovery (I/O thread).

        A refusal that goes away by itself (an exclusive queue still held by
        a previous run's connection the broker has not yet seen die, a
        queue's node down) is retried in the background; any other refusal
        raises DeclarationRefused to the caller of listen().
        """
        try:
            self.setup(self.session, recovering=False)
        except DeclarationRefused as exc:
            if not exc.retryable or not self.session.connection_alive():
                raise
            self.session.register(self)
            self.session.retry_later(self, exc)
            return
        self.session.register(self)

    def setup(self, session: Session, *, recovering: bool) -> None:
        if self.cancelled or self.closed:
            return
        for spec in self.queues:
            session.declare_exchange(spec.exchange, "fanout" if spec.kind == "private" else "topic")
            declare_queue(session, spec)
        channel = session.open_channel()
        # Per consumer (global=False): RabbitMQ 4.3 denies the shared limit (global_qos),
        # and quorum queues never had it.
        channel.basic_qos(0, min(self.prefetch, 65535), False)
        with self.lock:
            self.channel = channel
            self.epoch += 1
            epoch = self.epoch
            self._tags = {}
        for spec in self.queues:
            self._consume(channel, epoch, spec)

    def _consume(self, channel: Any, epoch: int, spec: QueueSpec) -> None:
        tag = channel.basic_consume(
            spec.name,
            no_ack=False,
            callback=functools.partial(self._on_message, epoch, spec.name),
            on_cancel=functools.partial(self._on_broker_cancel, epoch),
        )
        self._tags[tag] = spec

    def connection_lost(self) -> None:
        # No lock: a settling thread may hold it for a confirmed republish, and the
        # I/O thread must not wait for that. Any change of epoch makes older
        # deliveries stale, even if a concurrent close() bumps it too.
        self.channel = None
        self.epoch += 1  # everything delivered so far was requeued by the broker

    def broken(self) -> bool:
        channel = self.channel
        return channel is not None and not channel.is_open and not self.closed

    # -- deliveries (I/O thread) -------------------------------------------------------

    def _on_message(self, epoch: int, queue: str, message: Any) -> None:
        generation = self.session.generation
        self.session.add_event(lambda: self._deliver(epoch, generation, queue, message))

    def _deliver(self, epoch: int, generation: int, queue: str, message: Any) -> None:
        if epoch != self.epoch or self.closed:
            return  # its channel is gone: the broker requeued it
        tag = message.delivery_info["delivery_tag"]
        if self.cancelled:
            # Arrived between basic.cancel and cancel-ok: give it back.
            self.write_reject(generation, tag)
            return
        incoming = RabbitIncoming(self, epoch, generation, queue, message)
        if incoming.expired():
            LOG.debug("discarded a message from %s: its deadline passed before delivery", queue)
            incoming.settle_if_unsettled("ack")
            return
        try:
            self.handler(incoming)
        except Exception:
            LOG.exception(
                "handler for %s raised on attempt %d; requeueing the message",
                queue,
                incoming.attempts,
            )
            incoming.settle_if_unsettled("requeue")

    def _on_broker_cancel(self, epoch: int, consumer_tag: str) -> None:
        self.session.add_event(lambda: self._consume_again(epoch, consumer_tag))

    def _consume_again(self, epoch: int, consumer_tag: str) -> None:
        """The broker cancelled a consumer (its queue was deleted): declare and consume again."""
        if epoch != self.epoch or self.cancelled or self.closed:
            return
        spec = self._tags.pop(consumer_tag, None)
        if spec is None or not self.session.channel_alive(self.channel):
            return
        LOG.warning(
            "RabbitMQ cancelled the consumer of %s (queue deleted?); declaring it again", spec.name
        )
        try:
            declare_queue(self.session, spec)
        except DeclarationRefused as exc:
            # Start over on a new channel once the broker allows it (its messages requeue).
            channel, self.channel = self.channel, None
            self.epoch += 1
            if self.session.channel_alive(channel):
                channel.close()
            self.session.retry_later(self, exc)
            return
        self._consume(self.channel, epoch, spec)

    # -- writes from any thread ----------------------------------------------------------

    def write_ack(self, generation: int, tag: int) -> bool:
        channel = self.channel
        return channel is not None and self.session.write_frames(
            generation, channel, encode_settle(channel.channel_id, tag, reject=False)
        )

    def write_reject(self, generation: int, tag: int) -> bool:
        channel = self.channel
        return channel is not None and self.session.write_frames(
            generation, channel, encode_settle(channel.channel_id, tag, reject=True)
        )

    # -- cancel and close ------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop new deliveries; delivered messages stay settleable."""
        with self.lock:
            if self.cancelled:
                return
            self.cancelled = True
        if self.session.closed:
            return
        self.session.call(
            self._cancel_consumers, timeout=self.settler_timeout(), needs_connection=False
        )

    def settler_timeout(self) -> float:
        return self.session.options.send_timeout

    def _cancel_consumers(self) -> None:
        channel = self.channel
        if not self.session.channel_alive(channel):
            return
        for tag in list(self._tags):
            try:
                channel.basic_cancel(tag)
            except (ConnectionDown, *CONNECTION_ERRORS) as exc:
                LOG.debug("cancelling consumer %s: %s", tag, exc)
                return
        self._tags.clear()

    def close(self) -> None:
        """Cancel, and close the channel: the broker requeues every unsettled message."""
        with self.lock:
            if self.closed:
                return
            self.cancelled = self.closed = True
            self.epoch += 1
            channel, self.channel = self.channel, None
        if self.session.closed:
            return
        self.session.call(
            lambda: self._close_channel(channel),
            timeout=self.settler_timeout(),
            needs_connection=False,
        )

    def _close_channel(self, channel: Any) -> None:
        self.session.unregister(self)
        if not self.session.channel_alive(channel):
            return
        try:
            self._close_and_release(channel)
        except (ConnectionDown, *CONNECTION_ERRORS) as exc:
            LOG.debug("closing the channel of %r: %s", self, exc)

    def _close_and_release(self, channel: Any) -> None:
        quorum = self.session.options.queue_type == "quorum"
        if quorum:
            # basic.cancel is synchronous (a channel close is not): the count below is true.
            for tag, spec in list(self._tags.items()):
                if spec.kind == "shared-live":
                    channel.basic_cancel(tag)
        channel.close()
        if quorum:
            self.release_live_queue()

    def release_live_queue(self) -> None:
        """Delete a quorum ``.live`` topic queue nobody consumes any more (I/O thread).

        Quorum queues cannot be auto-delete (nor deleted ``if-unused``), so the
        last consumer to leave deletes it, to keep "a call to a topic with no
        servers is Undeliverable at once". A server that subscribes in between
        sees its consumer cancelled and declares the queue again. A consumer
        that dies instead leaves the queue to ``x-expires``.
        """
        if self.session.options.queue_type != "quorum" or not self.session.up:
            return
        for spec in self.queues:
            if spec.kind != "shared-live":
                continue
            try:
                ok = self.session.control().queue_declare(spec.name, passive=True)
                if ok.consumer_count == 0:
                    self.session.control().queue_delete(spec.name)
            except ChannelError as exc:
                LOG.debug("releasing %s: %s", spec.name, exc)

    def shutdown(self) -> None:
        """Driver close (I/O thread): forget everything; the connection close requeues."""
        with self.lock:
            self.cancelled = self.closed = True
            self.epoch += 1
            channel, self.channel = self.channel, None
        self.session.unregister(self)
        if self.session.options.queue_type == "quorum" and self.session.channel_alive(channel):
            try:
                self._close_and_release(channel)
            except (ConnectionDown, *CONNECTION_ERRORS) as exc:
                LOG.debug("closing the channel of %r: %s", self, exc)


# --- inboxes ------------------------------------------------------------------------------


class RabbitInbox:
    """A reply queue of this driver: durable, ``x-expires`` 1 h, consumed without acks.

    The queue outlives a dropped connection (and replies are persistent, so
    a broker restart too): replies sent while the driver reconnects wait in
    it; a passive declare after reconnecting tells whether it survived
    ("reconnected") or is new ("lost"). A queue the broker refuses to
    declare again (its node is down) is replaced by one of a fresh name
    ("lost"); if that is refused too, the driver retries with backoff.
    """

    def __init__(
        self, session: Session, handler: InboxHandler, on_event: InboxEventHandler | None
    ) -> None:
        self.session = session
        self.handler = handler
        self.on_event = on_event
        self.queue = naming.reply_queue(session.options.principal)
        self.channel: Any = None
        self.epoch = 0
        self.closed = False

    @property
    def address(self) -> str:
        return self.queue

    def __repr__(self) -> str:
        return f"<rabbit Inbox {self.queue}>"

    def start(self) -> None:
        self.setup(self.session, recovering=False)
        self.session.register(self)

    def _declare(self, session: Session) -> None:
        declare_reply_queue(session, self.queue)

    def setup(self, session: Session, *, recovering: bool) -> None:
        if self.closed:
            return
        survived = True
        if recovering:
            try:
                session.control().queue_declare(self.queue, passive=True)
            except NotFound:
                survived = False
            try:
                self._declare(session)
            except DeclarationRefused as exc:
                if exc.code not in _QUEUE_REFUSALS or not session.connection_alive():
                    raise  # not about this queue (no permission...): retried as it is
                fresh = naming.reply_queue(session.options.principal)
                LOG.warning(
                    "reply queue %s cannot be declared again (%s); replies go to %s from now on",
                    self.queue,
                    exc,
                    fresh,
                )
                self.queue, survived = fresh, False
                self._declare(session)
        else:
            self._declare(session)
        self._consume(session)
        if recovering:
            self._report("reconnected" if survived else "lost")

    def _consume(self, session: Session) -> None:
        channel = session.open_channel()
        self.epoch += 1
        epoch = self.epoch
        channel.basic_consume(
            self.queue,
            no_ack=True,
            callback=functools.partial(self._on_message, epoch),
            on_cancel=functools.partial(self._on_broker_cancel, epoch),
        )
        self.channel = channel

    def _report(self, event: str) -> None:
        callback = self.on_event
        if callback is None:
            return

        def report() -> None:
            if not self.closed:
                callback(event)

        self.session.add_event(report)

    def connection_lost(self) -> None:
        self.channel = None
        self.epoch += 1
        self._report("disconnected")

    def broken(self) -> bool:
        channel = self.channel
        return channel is not None and not channel.is_open and not self.closed

    def _on_message(self, epoch: int, message: Any) -> None:
        self.session.add_event(lambda: self._deliver(epoch, message))

    def _deliver(self, epoch: int, message: Any) -> None:
        if epoch != self.epoch or self.closed:
            return
        try:
            self.handler(body_of(message))
        except Exception:
            LOG.exception("inbox handler for %s raised; the reply is lost", self.queue)

    def _on_broker_cancel(self, epoch: int, consumer_tag: str) -> None:
        self.session.add_event(lambda: self._recreate(epoch))

    def _recreate(self, epoch: int) -> None:
        """The broker cancelled our consumer: the queue is gone, so replies may be lost."""
        if epoch != self.epoch or self.closed or not self.session.up:
            return
        LOG.warning("reply queue %s was deleted; declaring it again", self.queue)
        old, self.channel = self.channel, None
        self.epoch += 1
        if self.session.channel_alive(old):
            old.close()
        self._report("lost")
        self.session.setup_now(self)

    def close(self) -> None:
        """Delete the reply queue: later sends to this address are Undeliverable."""
        if self.closed:
            return
        self.closed = True
        if self.session.closed:
            return
        self.session.call(
            self.delete, timeout=self.session.options.send_timeout, needs_connection=False
        )

    def delete(self) -> None:
        """Cancel the consumer and delete the queue (I/O thread)."""
        self.session.unregister(self)
        self.closed = True
        self.epoch += 1
        channel, self.channel = self.channel, None
        if not self.session.up:
            LOG.info("reply queue %s left to expire: the connection is down", self.queue)
            return
        try:
            if self.session.channel_alive(channel):
                channel.close()
            self.session.control().queue_delete(self.queue)
        except (ConnectionDown, *CONNECTION_ERRORS) as exc:
            LOG.info("reply queue %s left to expire (%s)", self.queue, exc)
