"""Publish paths 1 and 4: on a session's connection, without waiting for the broker.

Calls (``send`` with ``on_undeliverable``), replies and adverts go out on a
channel of the session's connection without publisher confirms: nobody waits
for them, and confirms cost the broker, and both ends' I/O threads, a frame
per message (measured: about 11% of sequential call throughput). A call's
``basic.return`` is matched to its callback by message id; the entry is
dropped when the return comes or when the call's deadline passes (its caller
has given up by then). Replies and adverts are not in that table at all; a
returned reply is recognised by its routing key.

Only the session that carries pipelined publishes (``confirms=True``) puts
its channel in confirm mode: there a confirm settles a kept message, at most
``confirm_window`` are unconfirmed, and what a lost channel left unconfirmed
is published again on the next one.

Senders write from their own threads under the session's write lock; the
session's I/O thread reads returns and confirms and calls in here.

A channel opened while a quorum queue elects a leader (a cluster node was
lost) may never learn the new leader: RabbitMQ 3.10 starts the channel's
queue client from the queue record, which still names the dead leader, and
the new leader only tells channels it knows. Without confirms, what such a
channel publishes to that queue is dropped without a word (calls to a topic
time out until the process restarts). So the path-1 channel is replaced a
few times in the seconds after every connect (:data:`REFRESH_AFTER`), by
when the election is over. On a confirm-mode channel such publishes are
nacked instead: a nacked pipelined publish is kept and sent again on a new
channel after a backoff (until its deadline), as after a lost connection.
"""

from __future__ import annotations

import heapq
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from amqp.exceptions import ChannelError

from rpclib.exceptions import TransportError, Undeliverable
from rpclib.transports.base import SendOutcomeHandler
from rpclib.transports.rabbit.connection import (
    CONNECTION_ERRORS,
    LOG,
    Backoff,
    ConnectionDown,
    PublishEncoder,
    publish,
    within,
)
from rpclib.transports.rabbit.naming import QUEUES_EXCHANGE, is_reply_queue, queue_of_key

if TYPE_CHECKING:
    from rpclib.transports.rabbit.io_thread import Session


_REPLY_EXCHANGES: Final = frozenset({QUEUES_EXCHANGE, ""})
"""Where replies go: ``rpclib.queues``, or the default exchange for an older release's inbox."""
REFRESH_AFTER: Final = (1.0, 3.0, 10.0)
"""Seconds after a connect at which the path-1 channel is replaced (see the module doc)."""


@dataclass(eq=False)
class _Resend:
    """A pipelined at-least-once publish, kept until confirmed: sent again after a reconnect."""

    exchange: str
    exchange_kind: str
    routing_key: str
    body: bytes
    properties: dict[str, Any]
    deadline: float
    """Monotonic time after which it fails instead of being sent again."""
    on_outcome: SendOutcomeHandler


@dataclass(eq=False)
class _PendingPublish:
    """A path-1 publish whose return (or, pipelined, whose confirm) may still come."""

    tag: int
    message_id: str
    target: str
    on_return: Callable[[Undeliverable], None] | None
    returned: str | None = None
    resend: _Resend | None = None


class FastPublisher:
    """The path-1 channel of one session, and the books of what was published on it."""

    def __init__(self, session: Session, *, confirms: bool) -> None:
        self.session = session
        self.options = session.options
        self.confirms = confirms
        """Publisher confirms on the channel: only for pipelined publishes."""
        self.channel: Any = None
        self._encoder: PublishEncoder | None = None
        self._seq = 0
        self.epoch = 0
        """Counts channels opened (a repair replaces the channel, not the connection)."""
        self._id_prefix = uuid.uuid4().hex[:8] + "."
        """Starts message ids (then epoch and sequence number: unique per session)."""
        self._lock = threading.Lock()
        self._pending: dict[int, _PendingPublish] = {}
        """Publishes awaiting their confirm, by delivery tag (confirm mode only)."""
        self._by_id: dict[str, _PendingPublish] = {}
        """Publishes whose return is still wanted, by message id."""
        self._expiry: list[tuple[float, str]] = []
        """(monotonic time, message id): when a return is no longer wanted (no confirms)."""
        self._window = threading.Condition(self._lock)
        self._pipelined = 0
        """Pipelined publishes taken on and not yet confirmed or failed (the window's fill)."""
        self._resends: list[_Resend] = []
        """Pipelined publishes whose channel died unconfirmed: sent again once one is up."""
        self.outcomes: deque[Callable[[], None]] = deque()
        """Failure reports of pipelined publishes, run at the top of the I/O loop."""
        self.returned_replies = 0
        """Replies (``send_to_inbox``) the broker returned: their inbox was gone."""
        self._refreshes: list[float] = []
        """Monotonic times at which to replace the channel (no-confirm sessions only)."""
        self._timed = False
        self._replace_at: float | None = None
        """When to replace the confirm-mode channel after a pipelined publish was nacked."""
        self._nack_backoff = Backoff(self.options.retry_backoff, self.options.retry_backoff_max)
        self._generation = -1
        """The connection generation the channel was last opened on."""

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: dict[str, Any],
        *,
        target: str,
        mandatory: bool,
        deadline: float,
        on_return: Callable[[Undeliverable], None] | None = None,
        return_wanted_until: float | None = None,
        wait_for_connection: bool = True,
        on_outcome: SendOutcomeHandler | None = None,
        exchange_kind: str = "topic",
    ) -> None:
        """Publish on this session's connection without waiting for the broker (path 1).

        A return is reported through ``on_return`` (from the I/O thread) if it
        comes before ``return_wanted_until`` (monotonic; default ``deadline``).
        Other publishes (replies, adverts) are not tracked at all: no message
        id, no table entry; a returned reply is recognised by its routing key
        and logged (:meth:`_on_return`). Without a connection, waits for one
        until ``deadline``, or returns at once unless ``wait_for_connection``.

        With ``on_outcome`` the publish is *pipelined* (path 4; confirm-mode
        sessions only): it waits for room in the confirm window, is kept until confirmed
        (sent again after a reconnect or a channel repair, until ``deadline``),
        and ``on_outcome`` hears how it ended (see :meth:`Driver.send_pipelined`).
        """
        resend: _Resend | None = None
        if on_outcome is not None:
            if not self.confirms:
                raise TransportError("pipelined publishes need a session with confirms")
            self._reserve_window(target, deadline)
            resend = _Resend(
                exchange, exchange_kind, routing_key, body, properties, deadline, on_outcome
            )
        try:
            self._publish(
                exchange,
                routing_key,
                body,
                properties,
                target=target,
                mandatory=mandatory,
                deadline=deadline,
                on_return=on_return,
                return_wanted_until=deadline
                if return_wanted_until is None
                else return_wanted_until,
                wait_for_connection=wait_for_connection,
                resend=resend,
            )
        except BaseException:
            if resend is not None:
                self._release_window()
            raise

    def _publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: dict[str, Any],
        *,
        target: str,
        mandatory: bool,
        deadline: float,
        on_return: Callable[[Undeliverable], None] | None,
        return_wanted_until: float,
        wait_for_connection: bool,
        resend: _Resend | None,
    ) -> None:
        while True:
            if not self.session.up:
                if not wait_for_connection:
                    return
                if self.session.in_io_thread() or not self.session.wait_up(deadline):
                    raise TransportError(
                        f"cannot publish to {target}: the RabbitMQ connection is down and did "
                        f"not come back {within(self.options)}"
                    )
            with self.session.write_lock:
                if not self.session.up:
                    continue
                channel_epoch = self.epoch
                try:
                    self._write(
                        exchange,
                        routing_key,
                        body,
                        properties,
                        target=target,
                        mandatory=mandatory,
                        on_return=on_return,
                        return_wanted_until=return_wanted_until,
                        resend=resend,
                    )
                except (ConnectionDown, *CONNECTION_ERRORS) as exc:
                    failure: BaseException | None = exc
                else:
                    failure = None
            if failure is None:
                return
            LOG.debug("path-1 publish to %s failed (%s); retrying", target, failure)
            self.session.wake()
            if self.session.in_io_thread() or not self._await_new_channel(channel_epoch, deadline):
                raise TransportError(f"cannot publish to {target}: {failure}") from failure

    def _write(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: dict[str, Any],
        *,
        target: str,
        mandatory: bool,
        on_return: Callable[[Undeliverable], None] | None,
        return_wanted_until: float,
        resend: _Resend | None,
    ) -> None:
        """Encode and write one publish on the current channel (write lock held).

        A publish with ``on_return`` or ``resend`` is tracked: it gets a message
        id and a table entry (its return, and in confirm mode its confirm, find
        it); if the write fails, the entry is removed again.
        """
        self._seq += 1  # the delivery tag, in confirm mode
        tag = self._seq
        pending: _PendingPublish | None = None
        message_id: str | None = None
        if on_return is not None or resend is not None:
            # Unique for the session (returns are matched by it).
            message_id = f"{self._id_prefix}{self.epoch}.{tag}"
            pending = _PendingPublish(tag, message_id, target, on_return, resend=resend)
            with self._lock:
                self._by_id[message_id] = pending
                if self.confirms:
                    self._pending[tag] = pending
                else:
                    heapq.heappush(self._expiry, (return_wanted_until, message_id))
        try:
            encoder = self._encoder
            assert encoder is not None  # set with the channel, before _up
            frames = encoder.encode(
                exchange, routing_key, body, properties, mandatory=mandatory, message_id=message_id
            )
            if frames is not None:
                if not self.channel.is_open:
                    # Raw frames on a channel the broker closed would close the
                    # connection: wait for _repair's new channel instead.
                    raise ConnectionDown("the publish channel was closed")
                self.session.write_raw(frames)
            else:
                publish(
                    self.channel,
                    exchange,
                    routing_key,
                    body,
                    {**properties, "message_id": message_id}
                    if message_id is not None
                    else properties,
                    mandatory=mandatory,
                )
        except BaseException:
            if pending is not None:
                self._forget_pending(tag, pending)
            raise

    # -- the confirm window of pipelined publishes -------------------------------------------

    def _reserve_window(self, target: str, deadline: float) -> None:
        with self._window:
            while self._pipelined >= self.options.confirm_window:
                if self.session.closed:
                    raise TransportError("the rabbit driver is closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransportError(
                        f"cannot publish to {target}: {self._pipelined} earlier messages are "
                        f"still unconfirmed after send_timeout ({self.options.send_timeout:g}s)"
                    )
                self._window.wait(left)
            self._pipelined += 1

    def _release_window(self) -> None:
        with self._window:
            self._pipelined -= 1
            self._window.notify()

    def _conclude(self, resend: _Resend, error: BaseException | None) -> None:
        """A pipelined publish ended: free its window slot and tell its sender."""
        self._release_window()
        if error is None:
            try:
                resend.on_outcome(None)
            except Exception:
                LOG.exception("a pipelined send's outcome handler failed")
            return
        callback = resend.on_outcome
        if self.session.in_io_thread() and not self.session.stopped:
            # At the top of the loop, not inside a py-amqp read: it may call the driver.
            # Its own queue: events of a failed connection attempt are dropped, these not.
            self.outcomes.append(lambda: callback(error))
            return
        try:
            callback(error)
        except Exception:
            LOG.exception("a pipelined send's outcome handler failed")

    def resend_unconfirmed(self) -> None:
        """Send again what the last channel left unconfirmed (I/O thread, channel up).

        Raises on a connection error, keeping what was not yet written for the
        next attempt.
        """
        self.expire_resends()
        items, self._resends = self._resends, []
        sent = 0
        while items:
            item = items[0]
            target = f"{item.exchange}/{item.routing_key}"
            try:
                if item.exchange and item.exchange not in self.session.exchanges:
                    self.session.declare_exchange(item.exchange, item.exchange_kind)
                with self.session.write_lock:
                    self._write(
                        item.exchange,
                        item.routing_key,
                        item.body,
                        item.properties,
                        target=target,
                        mandatory=True,
                        on_return=None,
                        return_wanted_until=item.deadline,
                        resend=item,
                    )
            except ChannelError as exc:
                if not self.session.connection_alive():
                    self._resends = items + self._resends
                    raise
                items.pop(0)
                self._conclude(item, TransportError(f"cannot publish to {target}: {exc}"))
                continue
            except BaseException:
                self._resends = items + self._resends
                raise
            items.pop(0)
            sent += 1
        if sent:
            LOG.info("sent %d unconfirmed message(s) again after the channel was replaced", sent)

    def expire_resends(self) -> None:
        """Fail kept publishes whose deadline passed while no channel took them (I/O thread)."""
        now = time.monotonic()
        expired = [item for item in self._resends if now >= item.deadline]
        if not expired:
            return
        self._resends = [item for item in self._resends if now < item.deadline]
        self._fail_kept(
            expired,
            f"was not confirmed within send_timeout ({self.options.send_timeout:g}s): "
            "its channel was lost",
        )

    def _fail_kept(self, items: list[_Resend], why: str) -> None:
        """End kept pipelined publishes with a TransportError saying ``why``."""
        for item in items:
            self._conclude(
                item, TransportError(f"a message to {item.exchange}/{item.routing_key} {why}")
            )

    def _forget_pending(self, tag: int, pending: _PendingPublish) -> None:
        with self._lock:
            self._pending.pop(tag, None)
            self._by_id.pop(pending.message_id, None)

    def _await_new_channel(self, epoch: int, deadline: float) -> bool:
        """Wait until a publish channel newer than ``epoch`` is up; False at ``deadline``."""
        with self.session.up_cond:
            while self.epoch == epoch or not self.session.up:
                if self.session.closed:
                    raise TransportError("the rabbit driver is closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.session.up_cond.wait(left)
        return True

    # -- confirms and returns of path 1 (I/O thread) ---------------------------------------

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        message_id = message.properties.get("message_id")
        reason = str(getattr(exc, "reply_text", "") or exc)
        with self._lock:
            pending = self._by_id.get(message_id) if message_id else None
            if pending is not None and pending.resend is None:
                del self._by_id[pending.message_id]
                self._pending.pop(pending.tag, None)
        if pending is not None:
            pending.returned = reason
            if pending.resend is None:
                self._finish(pending, nack=False)
            # else its confirm (which follows the return) settles it
        elif exchange in _REPLY_EXCHANGES and is_reply_queue(queue_of_key(routing_key)):
            # Replies are not tracked (nobody waits for them): the caller is gone.
            self.returned_replies += 1
            LOG.warning(
                "reply to %s returned: %s — the caller is gone", queue_of_key(routing_key), reason
            )
        else:
            LOG.debug("returned message to %r/%r not tracked: %s", exchange, routing_key, reason)

    def on_confirm(self, tag: int, multiple: bool, *, nack: bool = False) -> None:
        if not nack and self._replace_at is None:
            self._nack_backoff.reset()
        with self._lock:
            if multiple:
                done = [t for t in self._pending if t <= tag]
            else:
                done = [tag] if tag in self._pending else []
            finished = [self._pending.pop(t) for t in done]
            for pending in finished:
                self._by_id.pop(pending.message_id, None)
        for pending in finished:
            self._finish(pending, nack=nack)

    def _finish(self, pending: _PendingPublish, *, nack: bool) -> None:
        error: BaseException | None = None
        if pending.returned is not None:
            error = Undeliverable(pending.target, f"no queue is bound to it ({pending.returned})")
        elif nack:
            error = Undeliverable(pending.target, "the broker refused it (basic.nack)")
        if pending.resend is not None:
            resend = pending.resend
            if nack and pending.returned is None and time.monotonic() < resend.deadline:
                # Refused, not lost: kept (its window slot too) and sent again on a new channel.
                self._resends.append(resend)
                self._want_replacement()
                return
            self._conclude(resend, error)
        elif error is not None:
            if pending.on_return is not None:
                callback, undeliverable = pending.on_return, error
                assert isinstance(undeliverable, Undeliverable)
                self.session.add_event(lambda: callback(undeliverable))
            else:
                LOG.info("message to %s was not delivered: %s", pending.target, error)

    def forget_expired(self, now: float) -> None:
        """Drop the table entries of publishes whose return is no longer wanted."""
        expiry = self._expiry
        if not expiry or expiry[0][0] > now:
            return
        with self._lock:
            while expiry and expiry[0][0] <= now:
                _, message_id = heapq.heappop(expiry)
                self._by_id.pop(message_id, None)

    def fail_pending(self, reason: str, *, keep: bool = True) -> None:
        """The channel is gone: no confirm or return will come for path-1 publishes.

        Nobody waits on most of them; calls learn of the loss through their
        inbox's events. Pipelined ones are kept to be sent again (``keep``) or
        failed (the driver is closing).
        """
        # Under the write lock: a sender between registering a publish and finding its
        # write failed must not have that publish taken from it (it retries it itself).
        with self.session.write_lock, self._lock:
            pending = sorted(self._by_id.values(), key=lambda p: p.tag)
            self._pending.clear()
            self._by_id.clear()
            self._expiry.clear()
        kept = [p.resend for p in pending if p.resend is not None]
        if len(kept) < len(pending):
            LOG.debug("%d unconfirmed path-1 publish(es) dropped: %s", len(pending), reason)
        if not kept:
            return
        if keep:
            self._resends.extend(kept)
            return
        self._fail_kept(kept, f"was not confirmed before {reason}")

    def open_channel(self) -> None:
        """The channel of path-1 publishes, in confirm mode if this session has confirms."""
        channel = self.session.open_channel()
        channel.events["basic_return"].add(self._on_return)
        if self.confirms:
            channel.confirm_select()
            channel.events["basic_ack"].add(lambda tag, multiple: self.on_confirm(tag, multiple))
            channel.events["basic_nack"].add(
                lambda tag, multiple: self.on_confirm(tag, multiple, nack=True)
            )
        connection = channel.connection
        encoder = PublishEncoder(channel.channel_id, connection.frame_max, connection.rpclib_user)
        with self.session.write_lock:
            self.channel = channel
            self._encoder = encoder
            self._seq = 0
            self.epoch += 1
        if self.session.generation != self._generation:
            self._generation = self.session.generation
            self._schedule_refreshes()

    def _schedule_refreshes(self) -> None:
        """After a connect: replace the channel at :data:`REFRESH_AFTER` (I/O thread)."""
        if self.confirms:
            return
        now = time.monotonic()
        self._refreshes = [now + delay for delay in REFRESH_AFTER]
        if not self._timed:
            self.session.add_timed(self)
            self._timed = True

    def _want_replacement(self) -> None:
        """A pipelined publish was nacked: replace the channel after a backoff (I/O thread).

        A quorum queue nacks while it elects a leader, and on RabbitMQ 3.10 may
        go on nacking a channel that published during the election.
        """
        if self._replace_at is None:
            self._replace_at = time.monotonic() + self._nack_backoff.next_delay()
            if not self._timed:
                self.session.add_timed(self)
                self._timed = True

    def tick(self, now: float) -> float | None:
        """Replace the channel if a refresh or a replacement is due (I/O thread)."""
        due: list[float] = []
        if self._replace_at is not None:
            if now >= self._replace_at:
                self._replace_at = None
                self._replace_nacked()
            else:
                due.append(self._replace_at)
        if self._refreshes:
            if now >= self._refreshes[0]:
                self._refreshes.pop(0)
                old = self.channel
                if old is not None and old.is_open and self.session.up:
                    self.open_channel()
                    self._forget_channel(old)
            if self._refreshes:
                due.append(self._refreshes[0])
        return min(due) if due else None

    def _replace_nacked(self) -> None:
        """Send nacked pipelined publishes again on a new confirm-mode channel (I/O thread)."""
        old = self.channel
        if old is None or not old.is_open or not self.session.up:
            return  # the reconnect sends them again
        LOG.info("pipelined publishes were refused (basic.nack); sending them on a new channel")
        with self.session.write_lock:  # no sender may write between the books and the swap
            self.fail_pending("the channel was replaced after a basic.nack")
            self.open_channel()
        self._forget_channel(old)
        with self.session.up_cond:
            self.session.up_cond.notify_all()
        self.resend_unconfirmed()

    def _forget_channel(self, channel: Any) -> None:
        """Close a replaced channel; returns of calls published on it are no longer matched."""
        try:
            channel.close()
        except ChannelError as exc:
            LOG.debug("closing a replaced publish channel: %s", exc)

    def replace_if_closed(self) -> None:
        """The broker may have closed the channel: keep its books, open another (I/O thread)."""
        channel = self.channel
        if channel is None or channel.is_open:
            return
        LOG.warning("the broker closed the publish channel: %s", channel.closed_by_broker)
        self.fail_pending(f"publish channel closed: {channel.closed_by_broker}")
        self.session.exchanges.clear()
        self.open_channel()
        with self.session.up_cond:
            self.session.up_cond.notify_all()
        self.resend_unconfirmed()

    def connection_lost(self, reason: str) -> None:
        """The connection dropped (I/O thread): no return or confirm will come on the channel."""
        self.channel = None
        self.fail_pending(reason)

    def run_outcomes(self) -> None:
        """Report failed pipelined publishes (I/O thread, top of the loop)."""
        while self.outcomes:
            report = self.outcomes.popleft()
            try:
                report()
            except Exception:
                LOG.exception("a pipelined send's outcome handler failed")

    def shut_down(self) -> None:
        """The session stopped: fail everything still kept, wake senders waiting for room."""
        self.fail_pending("the driver closed", keep=False)
        unsent, self._resends = self._resends, []
        self._fail_kept(unsent, "was not sent again before the driver closed")
        self.run_outcomes()
        with self._window:
            self._window.notify_all()
