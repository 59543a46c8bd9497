"""The in-process transport: ``memory://`` and ``memory://NAME``.

The embedded default and the transport the test suite runs on, so it keeps
the semantics of :mod:`rpclib.transports.base` exactly, as a broker would.

Buses
=====

``memory://`` connects to the bus ``"default"``, ``memory://NAME`` to the bus
``NAME`` (the URL host, so lower-cased). A bus plays the broker: it lives in
the process, outlives the drivers connected to it, and two
:class:`MemoryDriver` s on one bus behave like two processes sharing a broker.
Buses are isolated from each other. :func:`reset_bus` drops one (its queues,
inboxes, adverts and dead letters; drivers still connected to it get
:class:`~rpclib.exceptions.TransportError` from then on).

Queues
======

- A durable *topic queue* per (exchange, topic, group) (``group=None`` is a
  group of its own, the one RPC servers use) and a durable *server queue* per
  (exchange, topic, server). ``listen`` or ``declare`` creates them; they keep
  their messages after their consumers leave, until a consumer returns.
- A *fanout queue* per fanout subscription, deleted when it closes (so
  unsettled fanout messages are lost with it, as with an auto-delete queue).
- An *inbox* per :meth:`MemoryDriver.open_inbox`, deleted when it closes.

Routing: a topic message goes to one queue per group; consumers in a group
compete, round robin among those with prefetch credit. ``AT_LEAST_ONCE``
needs a declared queue (else ``Undeliverable``) and goes to every group's
queue whether or not anyone consumes it. ``AT_MOST_ONCE`` needs a consumer
listening now: it goes only to the groups that have one, and is
``Undeliverable`` if none has. Fanout without a listener and unknown or closed
inboxes are ``Undeliverable`` whatever the guarantee.

Delivery and settlement
=======================

Each subscription has one delivery thread calling its handler. ``attempts``
counts hand-overs to handlers, so requeues and redeliveries increment it.
Requeued messages go back to the head of their queue, as in AMQP. A handler
that raises is a consumer crash: the exception is logged with its traceback
and the message, if still unsettled, is requeued. Settling one message twice
raises RuntimeError.

``Subscription.cancel()`` leaves the queue and waits for a running handler
call to return (unless called from inside it); messages already handed over
stay settleable. ``Subscription.close()`` cancels, then requeues whatever is
still unsettled; settling such a message afterwards is ignored (logged at
debug). Called from inside the handler, close requeues the message being
handled at once. Messages whose ``expires_at`` (``time.time()``) passes
before hand-over are discarded and counted in :meth:`MemoryDriver.stats`.

Accounts
========

A bus may hold accounts (:func:`add_account`, :func:`remove_account`), as a
broker does: then every driver must name one in its URL
(``memory://user:password@NAME``), and every message it sends carries that
user as its authenticated sender (``Incoming.sender``), set by the bus, not by
the message. A bus without accounts takes no credentials and its messages
have no sender. Removing an account refuses new drivers for it; drivers
already connected keep their identity, as broker connections do.

An account may also carry :class:`~rpclib.access.Grants` (``grants=`` or
:func:`rpclib.access.provision` on ``memory://NAME``): the bus then refuses,
with :class:`~rpclib.transports.memory_grants.AccessRefused`, what they do not
allow (see :mod:`rpclib.transports.memory_grants`). Grants are looked up on
every operation, so changing them applies to connected drivers at once.
Replaying and purging dead letters (operator work: ``rpclib dead-letters``)
take an account without grants.

Adverts live in a per-bus table. Every ``advertise`` (new body or plain
refresh) is reported as ``(server, body)``, ``withdraw`` and TTL expiry as
``(server, None)``; a per-bus clock thread fires expiries on time. Each watch
has its own thread, so handlers never run under bus locks and a slow watcher
delays nobody else; ``watch_adverts`` returns once that thread has reported
the current adverts. Closing a driver withdraws the adverts it published.

Fault injection
===============

URL options, all optional::

    memory://chaos?drop=0.1&duplicate=0.05&reorder=0.2&delay=0.01&seed=7&faults=all

``drop``, ``duplicate``, ``reorder`` are probabilities in [0, 1]; ``delay`` is
a maximum in seconds (each message waits uniform(0, delay) before it reaches
its queue); ``seed`` makes the run reproducible; ``faults`` picks the traffic
they apply to: ``messages`` (:meth:`~MemoryDriver.send`, the default),
``replies`` (:meth:`~MemoryDriver.send_to_inbox`) or ``all``. Each accepted
send draws its decisions from the driver's ``random.Random(seed)``, in send
order. A dropped ``AT_MOST_ONCE`` message or reply is lost (send still
returns); a dropped ``AT_LEAST_ONCE`` message models a lost delivery, so it
arrives as a redelivery (``attempts`` 2), never lost. A duplicate is a second
copy; a reordered message is held back until the next message reaches the
same queue (or ~50 ms pass). :attr:`MemoryDriver.fault_counts` and
:meth:`MemoryDriver.fault_decisions` show what happened.

Choices where the contract is silent
====================================

- ``group`` applies to topics only: passing one with a server or fanout
  address is a ValueError, as is :meth:`~MemoryDriver.declare` of a fanout
  address (fanout queues exist only as long as their subscription).
- ``prefetch`` must be >= 1; advert ``ttl`` must be a positive finite number;
  ``advertise``/``withdraw`` need ``address.server``.
- Any driver may ``withdraw`` a server's advert; ``close()`` withdraws only
  the adverts this driver published last.
- A message a cancelled fanout subscription requeues stays in its private
  queue and is lost when the subscription closes (nothing else can reach it).
- Inbox addresses look like ``memory-inbox:BUS:HEX``; one from another bus is
  Undeliverable.
"""

from __future__ import annotations

import heapq
import hmac
import itertools
import logging
import math
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

from rpclib.access import Grants
from rpclib.exceptions import InvalidTransportURL, TransportError, Undeliverable
from rpclib.transports.base import (
    Address,
    AdvertHandler,
    DeadLetter,
    Driver,
    Guarantee,
    Inbox,
    InboxEventHandler,
    InboxHandler,
    MessageHandler,
    QueueDepth,
    Subscription,
)
from rpclib.transports.memory_grants import AccessRefused, Guard
from rpclib.transports.url import TransportURL

__all__ = ["FaultDecision", "MemoryDriver", "reset_all_buses", "reset_bus"]

_LOG = logging.getLogger("rpclib.transports.memory")

DEFAULT_BUS: Final = "default"
_REORDER_RELEASE: Final = 0.05
"""Seconds a reordered message waits for a successor before it is released anyway."""
_DEAD_LETTER_LIMIT: Final = 10_000
"""Dead letters kept per bus (oldest are forgotten first)."""
_DEAD_LETTER_BYTES: Final = 64 * 1024 * 1024
"""Bodies kept at most among a bus's dead letters, whatever their count (as rabbit://)."""
_FAULT_LOG_LIMIT: Final = 10_000
_KNOWN_OPTIONS: Final = frozenset({"drop", "duplicate", "reorder", "delay", "seed", "faults"})
_FAULT_SCOPES: Final = {
    "messages": frozenset({"message"}),
    "replies": frozenset({"reply"}),
    "all": frozenset({"message", "reply"}),
}

Traffic = Literal["message", "reply"]


# --- buses ------------------------------------------------------------------

_BUSES: dict[str, _Bus] = {}
_BUSES_LOCK = threading.Lock()


def _get_bus(name: str) -> _Bus:
    with _BUSES_LOCK:
        bus = _BUSES.get(name)
        if bus is None:
            bus = _BUSES[name] = _Bus(name)
        return bus


def add_account(bus: str, user: str, password: str, *, grants: Grants | None = None) -> None:
    """Create or change an account on bus ``bus``: drivers must then authenticate.

    With ``grants`` the account may do only what they allow; without, anything.
    """
    if not user or not password or ":" in user or "@" in user:
        raise ValueError(f"an account needs a user (without ':' or '@') and a password: {user!r}")
    if grants is not None and grants.principal != user:
        raise ValueError(f"grants for {grants.principal!r} given to account {user!r}")
    target = _get_bus(bus.lower())
    with target.lock:
        if target.accounts is None:
            target.accounts = {}
        target.accounts[user] = password
        if grants is None:
            target.grants.pop(user, None)
        else:
            target.grants[user] = grants


def remove_account(bus: str, user: str) -> None:
    """Remove ``user`` from bus ``bus`` (KeyError if it has no such account)."""
    target = _get_bus(bus.lower())
    with target.lock:
        if target.accounts is None or user not in target.accounts:
            raise KeyError(f"memory bus {bus!r} has no account {user!r}")
        del target.accounts[user]
        target.grants.pop(user, None)


def reset_bus(name: str = DEFAULT_BUS) -> None:
    """Drop bus ``name``: stop its threads and forget its queues, adverts and dead letters.

    Drivers still connected to it raise TransportError from then on (the
    broker is gone); the next driver for ``memory://NAME`` gets a fresh bus.
    """
    with _BUSES_LOCK:
        bus = _BUSES.pop(name, None)
    if bus is not None:
        bus.shutdown()


def reset_all_buses() -> None:
    """Drop every bus (for test isolation)."""
    with _BUSES_LOCK:
        names = list(_BUSES)
    for name in names:
        reset_bus(name)


class _Message:
    """One copy of a message in one queue."""

    __slots__ = ("attempts", "body", "expires_at", "sender")

    def __init__(
        self, body: bytes, expires_at: float | None, attempts: int, sender: str | None = None
    ) -> None:
        self.body = body
        self.expires_at = expires_at
        self.attempts = attempts
        self.sender = sender

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class _DeadRecord:
    """A dead letter as the bus keeps it: with the queue it came from, for replay."""

    __slots__ = ("letter", "queue", "sender")

    def __init__(self, letter: DeadLetter, queue: _Queue | None, sender: str | None) -> None:
        self.letter = letter
        self.queue = queue
        self.sender = sender


class _Resource:
    """Something a driver opened on a bus (subscription, inbox, watch)."""

    def close(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        """Stop without requeueing: the bus is being dropped."""
        raise NotImplementedError


class _Bus:
    """The broker: queues, inboxes, adverts and dead letters, all under one lock."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.closed = False
        self.topics: dict[tuple[str, str], dict[str | None, _Queue]] = {}
        self.servers: dict[tuple[str, str, str], _Queue] = {}
        self.fanouts: dict[tuple[str, str], list[_Queue]] = {}
        self.inboxes: dict[str, _InboxSub] = {}
        self.adverts: dict[tuple[str, str], dict[str, _Advert]] = {}
        self.watches: dict[tuple[str, str], list[_Watch]] = {}
        self.dead: deque[_DeadRecord] = deque(maxlen=_DEAD_LETTER_LIMIT)
        self.dead_bytes = 0
        self.accounts: dict[str, str] | None = None
        self.grants: dict[str, Grants] = {}
        self.guard = Guard(name)
        self.expired = 0
        self.resources: set[_Resource] = set()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = itertools.count()
        self._clock = threading.Condition(self.lock)
        self._clock_thread: threading.Thread | None = None

    def add_dead_letter(
        self, letter: DeadLetter, queue: _Queue | None = None, sender: str | None = None
    ) -> None:
        """Keep ``letter`` (from ``queue``, sent by ``sender``); forget the oldest beyond the
        count and byte bounds (lock held)."""
        if len(self.dead) == self.dead.maxlen:
            self.dead_bytes -= len(self.dead[0].letter.body)
        self.dead.append(_DeadRecord(letter, queue, sender))
        self.dead_bytes += len(letter.body)
        while self.dead_bytes > _DEAD_LETTER_BYTES and len(self.dead) > 1:
            self.dead_bytes -= len(self.dead.popleft().letter.body)

    def find_dead_letter(self, key: str) -> _DeadRecord:
        """The oldest dead letter with ``key``; KeyError if none (lock held)."""
        for record in self.dead:
            if record.letter.key == key:
                return record
        raise KeyError(f"no dead letter with key {key!r} on memory bus {self.name!r}")

    def take_dead_letter(self, key: str) -> _DeadRecord:
        """Remove and return the oldest dead letter with ``key``; KeyError if none (lock held)."""
        for i, record in enumerate(self.dead):
            if record.letter.key == key:
                del self.dead[i]
                self.dead_bytes -= len(record.letter.body)
                return record
        raise KeyError(f"no dead letter with key {key!r} on memory bus {self.name!r}")

    def check_open(self) -> None:
        """Raise if the bus was reset (call with the lock held)."""
        if self.closed:
            raise TransportError(f"memory bus {self.name!r} was reset")

    # Timers run on the bus clock thread *with the lock held*: they only move
    # messages and queue watch events, never call handlers.

    def schedule(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` under the bus lock in ``delay`` seconds (call with the lock held)."""
        if self.closed:
            return
        due = time.monotonic() + delay
        heapq.heappush(self._timers, (due, next(self._timer_seq), callback))
        if self._clock_thread is None:
            self._clock_thread = threading.Thread(
                target=self._run_clock, name=f"rpclib-memory:{self.name}:clock", daemon=True
            )
            self._clock_thread.start()
        else:
            self._clock.notify()

    def _run_clock(self) -> None:
        with self.lock:
            while not self.closed:
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, callback = heapq.heappop(self._timers)
                    try:
                        callback()
                    except Exception:
                        _LOG.exception("timer on memory bus %r failed", self.name)
                if not self._timers:
                    # Idle: exit so forgotten buses hold no threads; schedule() restarts it.
                    self._clock_thread = None
                    return
                self._clock.wait(self._timers[0][0] - now)

    def count_expired(self, sink: _Sink) -> None:
        self.expired += 1
        _LOG.debug("discarded a message to %s: its deadline passed before delivery", sink.label)

    def sweep_expired(self) -> None:
        """Discard expired messages still waiting in any queue (call with the lock held)."""
        now = time.time()
        for queue in self.all_queues():
            kept = deque(m for m in queue.ready if not m.expired(now))
            for _ in range(len(queue.ready) - len(kept)):
                self.count_expired(queue)
            queue.ready = kept

    def all_queues(self) -> Iterable[_Queue]:
        for groups in self.topics.values():
            yield from groups.values()
        yield from self.servers.values()
        for fanouts in self.fanouts.values():
            yield from fanouts

    def route(self, address: Address, guarantee: Guarantee) -> list[_Queue]:
        """The queues a message to ``address`` goes to; Undeliverable if none (lock held)."""
        key = (address.exchange, address.topic)
        if address.fanout:
            queues = list(self.fanouts.get(key, ()))
            if not queues:
                raise Undeliverable(str(address), "no fanout listener")
            return queues
        if address.server is not None:
            queue = self.servers.get((*key, address.server))
            if queue is None:
                raise Undeliverable(str(address), "no queue was ever declared for this server")
            if guarantee is Guarantee.AT_MOST_ONCE and not queue.consumers:
                raise Undeliverable(str(address), "the server is not listening now")
            return [queue]
        groups = self.topics.get(key)
        if not groups:
            raise Undeliverable(str(address), "no queue was ever declared for this topic")
        if guarantee is Guarantee.AT_LEAST_ONCE:
            return list(groups.values())
        live = [queue for queue in groups.values() if queue.consumers]
        if not live:
            raise Undeliverable(str(address), "no consumer is listening now")
        return live

    def queue_for(self, address: Address, group: str | None) -> _Queue:
        """The durable queue of a topic group or server, created if new (lock held)."""
        key = (address.exchange, address.topic)
        if address.server is not None:
            skey = (*key, address.server)
            queue = self.servers.get(skey)
            if queue is None:
                queue = self.servers[skey] = _Queue(self, str(address))
            return queue
        groups = self.topics.setdefault(key, {})
        queue = groups.get(group)
        if queue is None:
            label = str(address) if group is None else f"{address} [group {group}]"
            queue = groups[group] = _Queue(self, label)
        return queue

    def shutdown(self) -> None:
        """Stop everything on this bus (from :func:`reset_bus`)."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            resources = list(self.resources)
            self.resources.clear()
            self._timers.clear()
            self._clock.notify_all()
            clock = self._clock_thread
        for resource in resources:
            resource.kill()
        if clock is not None and clock is not threading.current_thread():
            clock.join()


# --- sinks: queues and inboxes ----------------------------------------------


class _Sink:
    """Where messages wait: a queue or an inbox. Every method needs the bus lock."""

    def __init__(self, bus: _Bus, label: str) -> None:
        self.bus = bus
        self.label = label
        self.ready: deque[_Message] = deque()
        self.held: list[_Message] = []
        self.deleted = False

    def put(self, msg: _Message, *, hold: bool = False) -> None:
        """Enqueue ``msg``; ``hold`` keeps it back until the next message (reorder fault)."""
        if self.deleted:
            _LOG.debug("message for deleted %s lost", self.label)
            return
        if hold:
            self.held.append(msg)
            self.bus.schedule(_REORDER_RELEASE, lambda: self._release(msg))
            return
        self.ready.append(msg)
        if self.held:
            self.ready.extend(self.held)
            self.held.clear()
        self.wake()

    def _release(self, msg: _Message) -> None:
        for i, held in enumerate(self.held):
            if held is msg:
                del self.held[i]
                if not self.deleted:
                    self.ready.append(msg)
                    self.wake()
                return

    def wake(self) -> None:
        raise NotImplementedError


class _Queue(_Sink):
    """A queue and the consumers competing for its messages."""

    def __init__(self, bus: _Bus, label: str, *, fanout_key: tuple[str, str] | None = None) -> None:
        super().__init__(bus, label)
        self.fanout_key = fanout_key
        """(exchange, topic) of a fanout subscription's private queue; None if durable."""
        self.consumers: list[_Subscription] = []
        self._next = 0

    def wake(self) -> None:
        self.dispatch()

    def requeue(self, msgs: list[_Message]) -> None:
        """Put ``msgs`` back at the head, in order, for redelivery."""
        if self.deleted:
            _LOG.debug("%d unsettled message(s) of deleted %s lost", len(msgs), self.label)
            return
        self.ready.extendleft(reversed(msgs))
        self.dispatch()

    def dispatch(self) -> None:
        """Hand ready messages to consumers with credit, round robin."""
        now = time.time()
        while self.ready and self.consumers:
            count = len(self.consumers)
            for offset in range(count):
                consumer = self.consumers[(self._next + offset) % count]
                if consumer.has_credit():
                    break
            else:
                return
            self._next = (self._next + offset + 1) % count
            msg = self.ready.popleft()
            while msg.expired(now):
                self.bus.count_expired(self)
                if not self.ready:
                    return
                msg = self.ready.popleft()
            consumer.offer(msg)


# --- incoming messages and subscriptions -------------------------------------


class _Delivery:
    """A message handed to a handler (the driver's :class:`~rpclib.transports.base.Incoming`)."""

    __slots__ = ("_attempts", "_msg", "_revoked", "_settled", "_sub")

    def __init__(self, sub: _Subscription, msg: _Message) -> None:
        self._sub = sub
        self._msg = msg
        self._attempts = msg.attempts
        self._settled: str | None = None
        self._revoked = False

    @property
    def body(self) -> bytes:
        return self._msg.body

    @property
    def attempts(self) -> int:
        return self._attempts

    @property
    def sender(self) -> str | None:
        """The account of the driver that sent it (None on a bus without accounts)."""
        return self._msg.sender

    def ack(self) -> None:
        """Done with it: remove it from the queue."""
        self._settle("ack")

    def requeue(self) -> None:
        """Give it back for redelivery (to this or another consumer)."""
        self._settle("requeue")

    def dead_letter(self, reason: str) -> None:
        """Move it to the bus's dead letters with ``reason``; it is not redelivered."""
        self._settle("dead_letter", str(reason))

    def __repr__(self) -> str:
        state = self._settled or ("revoked" if self._revoked else "unsettled")
        return (
            f"<memory Incoming from {self._sub.queue.label} "
            f"attempts={self._attempts} {len(self._msg.body)} bytes {state}>"
        )

    def _settle(self, how: str, reason: str = "") -> None:
        sub = self._sub
        with sub.bus.lock:
            if self._settled is not None:
                raise RuntimeError(
                    f"cannot {how.replace('_', ' ')} a message already settled with "
                    f"{self._settled.replace('_', ' ')}(); settle each Incoming exactly once"
                )
            self._settled = how
            if self._revoked:
                _LOG.debug(
                    "%s of a message from %s after its subscription closed ignored "
                    "(it was requeued for redelivery)",
                    how,
                    sub.queue.label,
                )
                return
            sub.unsettled.remove(self)
            self._apply(how, reason)

    def settle_if_unsettled(self, how: str) -> None:
        """Settle unless the handler (or close) already did: for handler crashes."""
        with self._sub.bus.lock:
            if self._settled is None and not self._revoked:
                self._settled = how
                self._sub.unsettled.remove(self)
                self._apply(how, "")

    def _apply(self, how: str, reason: str) -> None:
        """Carry out a settlement (bus lock held)."""
        queue = self._sub.queue
        if how == "requeue":
            queue.requeue([self._msg])
        elif how == "dead_letter":
            queue.bus.add_dead_letter(
                DeadLetter(queue.label, self._msg.body, reason, self._attempts),
                queue,
                self._msg.sender,
            )
            _LOG.debug("dead-lettered a message from %s: %s", queue.label, reason)
        queue.dispatch()

    def revoke(self) -> _Message:
        """Take the message back from a closing subscription (lock held)."""
        self._revoked = True
        return self._msg


class _Subscription(_Resource):
    """A consumer on a queue, with its own delivery thread.

    States: active, then *cancelled* (no new deliveries; delivered messages
    stay settleable), then *closed* (unsettled messages taken back and
    requeued; settling them later is ignored).
    """

    def __init__(
        self,
        driver: MemoryDriver,
        queue: _Queue,
        handler: MessageHandler,
        prefetch: int,
    ) -> None:
        self.driver = driver
        self.bus = queue.bus
        self.queue = queue
        self.handler = handler
        self.prefetch = prefetch
        self.cancelled = False
        self.closed = False
        self.buffer: deque[_Message] = deque()
        """Dispatched to this consumer but not yet handed to the handler (at most one)."""
        self.unsettled: list[_Delivery] = []
        self._wakeup = threading.Condition(self.bus.lock)
        self.thread = threading.Thread(
            target=self._run, name=f"rpclib-memory:{self.bus.name}:{queue.label}", daemon=True
        )

    def has_credit(self) -> bool:
        """Can take one more message without exceeding prefetch (lock held)."""
        return not self.cancelled and not self.buffer and len(self.unsettled) < self.prefetch

    def offer(self, msg: _Message) -> None:
        self.buffer.append(msg)
        self._wakeup.notify()

    def _run(self) -> None:
        while True:
            with self.bus.lock:
                while not self.buffer and not self.cancelled:
                    self._wakeup.wait()
                if self.cancelled:
                    return
                msg = self.buffer.popleft()
                if msg.expired(time.time()):
                    self.bus.count_expired(self.queue)
                    self.queue.dispatch()
                    continue
                msg.attempts += 1
                delivery = _Delivery(self, msg)
                self.unsettled.append(delivery)
                self.queue.dispatch()
            try:
                self.handler(delivery)
            except Exception:
                _LOG.exception(
                    "handler for %s raised on attempt %d; requeueing the message",
                    self.queue.label,
                    delivery.attempts,
                )
                delivery.settle_if_unsettled("requeue")

    def cancel(self) -> None:
        """Stop new deliveries and wait for a running handler (unless called from it).

        Messages already handed to the handler stay settleable.
        """
        with self.bus.lock:
            if not self.cancelled:
                self._cancel()
        self._join()

    def close(self) -> None:
        """Cancel, then requeue every message still unsettled."""
        self.cancel()
        with self.bus.lock:
            if self.closed:
                return
            self.closed = True
            if self.queue.fanout_key is not None:
                self.queue.deleted = True
            msgs = [delivery.revoke() for delivery in self.unsettled]
            self.unsettled.clear()
            if msgs:
                self.queue.requeue(msgs)
            self.bus.resources.discard(self)
        self.driver._forget(self)

    def kill(self) -> None:
        with self.bus.lock:
            if not self.cancelled:
                self._cancel()
            self.closed = True
            for delivery in self.unsettled:
                delivery.revoke()
            self.unsettled.clear()
        self._join()

    def _cancel(self) -> None:
        """Leave the queue; give back the message not yet handed over (lock held)."""
        self.cancelled = True
        self._wakeup.notify()
        queue = self.queue
        queue.consumers.remove(self)
        key = queue.fanout_key
        if key is not None:
            fanouts = self.bus.fanouts.get(key, [])
            if queue in fanouts:
                fanouts.remove(queue)
            if not fanouts:
                self.bus.fanouts.pop(key, None)
        if self.buffer:
            msgs = list(self.buffer)
            self.buffer.clear()
            queue.requeue(msgs)

    def _join(self) -> None:
        if self.thread is not threading.current_thread():
            self.thread.join()


# --- inboxes ------------------------------------------------------------------


class _InboxSub(_Sink, _Resource):
    """A private reply address with its own delivery thread; at-most-once, never acked."""

    def __init__(self, driver: MemoryDriver, handler: InboxHandler) -> None:
        bus = driver._bus
        address = f"memory-inbox:{bus.name}:{uuid.uuid4().hex}"
        super().__init__(bus, address)
        self.driver = driver
        self.handler = handler
        self._wakeup = threading.Condition(bus.lock)
        self.thread = threading.Thread(
            target=self._run, name=f"rpclib-memory:{bus.name}:inbox", daemon=True
        )

    @property
    def address(self) -> str:
        return self.label

    def wake(self) -> None:
        self._wakeup.notify()

    def _run(self) -> None:
        while True:
            with self.bus.lock:
                while not self.ready and not self.deleted:
                    self._wakeup.wait()
                if self.deleted:
                    return
                body = self.ready.popleft().body
            try:
                self.handler(body)
            except Exception:
                _LOG.exception("inbox handler for %s raised; the reply is lost", self.label)

    def close(self) -> None:
        """Delete the inbox (later sends to it are Undeliverable) and stop its thread."""
        with self.bus.lock:
            if self.deleted:
                return
            self._stop()
        if self.thread is not threading.current_thread():
            self.thread.join()
        self.driver._forget(self)

    def kill(self) -> None:
        with self.bus.lock:
            if not self.deleted:
                self._stop()
        if self.thread is not threading.current_thread():
            self.thread.join()

    def _stop(self) -> None:
        self.deleted = True
        self.ready.clear()
        self.held.clear()
        self.bus.inboxes.pop(self.label, None)
        self.bus.resources.discard(self)
        self._wakeup.notify()


# --- adverts --------------------------------------------------------------------


class _Advert:
    __slots__ = ("body", "generation", "owner")

    def __init__(self, body: bytes, owner: MemoryDriver, generation: int) -> None:
        self.body = body
        self.owner = owner
        self.generation = generation


class _Watch(_Resource):
    """One watch_adverts handler with its own event thread.

    The snapshot taken at watch time is queued first, so it is reported
    before any later change; ``snapshot_done`` is set once the handler has
    seen all of it (watch_adverts waits for that before returning).
    """

    def __init__(
        self,
        driver: MemoryDriver,
        key: tuple[str, str],
        handler: AdvertHandler,
        snapshot: list[tuple[str, bytes]],
    ) -> None:
        self.driver = driver
        self.bus = driver._bus
        self.key = key
        self.handler = handler
        self.closed = False
        self.events: deque[tuple[str, bytes | None]] = deque(snapshot)
        self._snapshot_left = len(snapshot)
        self.snapshot_done = threading.Event()
        if not snapshot:
            self.snapshot_done.set()
        self._wakeup = threading.Condition(self.bus.lock)
        self.thread = threading.Thread(
            target=self._run,
            name=f"rpclib-memory:{self.bus.name}:watch:{key[0]}/{key[1]}",
            daemon=True,
        )

    def post(self, server: str, body: bytes | None) -> None:
        """Queue an event for the handler (lock held)."""
        self.events.append((server, body))
        self._wakeup.notify()

    def _run(self) -> None:
        while True:
            with self.bus.lock:
                while not self.events and not self.closed:
                    self._wakeup.wait()
                if self.closed:
                    return
                server, body = self.events.popleft()
            try:
                self.handler(server, body)
            except Exception:
                _LOG.exception("advert watch handler for %s/%s raised", *self.key)
            if self._snapshot_left:
                self._snapshot_left -= 1  # only this thread touches it once started
                if not self._snapshot_left:
                    self.snapshot_done.set()

    def cancel(self) -> None:
        """Stop reporting; waits for a running handler unless called from it."""
        self.kill()

    def close(self) -> None:
        """Same as cancel: a watch has nothing to settle."""
        self.kill()
        self.driver._forget(self)

    def kill(self) -> None:
        with self.bus.lock:
            if not self.closed:
                self.closed = True
                self.events.clear()
                watches = self.bus.watches.get(self.key, [])
                if self in watches:
                    watches.remove(self)
                if not watches:
                    self.bus.watches.pop(self.key, None)
                self.bus.resources.discard(self)
                self._wakeup.notify()
        self.snapshot_done.set()
        if self.thread is not threading.current_thread():
            self.thread.join()


# --- fault injection --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What fault injection did to one accepted send (see :meth:`MemoryDriver.fault_decisions`)."""

    index: int
    """Position in this driver's sequence of fault-eligible sends, from 0."""
    traffic: Traffic
    target: str
    drop: bool
    duplicate: bool
    reorder: bool
    delay: float


class _Faults:
    """The fault-injection options of one driver and its random decision stream."""

    def __init__(self, url: TransportURL) -> None:
        self.drop = _probability(url, "drop")
        self.duplicate = _probability(url, "duplicate")
        self.reorder = _probability(url, "reorder")
        self.max_delay = url.float_option("delay", 0.0)
        if not math.isfinite(self.max_delay):
            raise InvalidTransportURL(str(url), f"option delay={self.max_delay} must be finite")
        scope = url.option("faults", "messages")
        if scope not in _FAULT_SCOPES:
            raise InvalidTransportURL(
                str(url),
                f"option faults={scope!r} must be one of {', '.join(sorted(_FAULT_SCOPES))}",
            )
        self.scope = _FAULT_SCOPES[scope]
        default_seed = random.SystemRandom().randrange(2**32)
        self.seed = url.int_option("seed", default_seed, minimum=-(2**63))
        self.active = bool(self.drop or self.duplicate or self.reorder or self.max_delay)
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._index = 0
        self.counts = {"dropped": 0, "duplicated": 0, "reordered": 0, "delayed": 0}
        self.log: deque[FaultDecision] = deque(maxlen=_FAULT_LOG_LIMIT)

    def decide(self, traffic: Traffic, target: str, *, lossy: bool) -> FaultDecision | None:
        """Draw the faults of the next send; None if faults do not apply to ``traffic``.

        Four numbers are drawn per send whatever the outcome, so the decision
        sequence depends only on the seed and the order of sends. ``lossy``
        says whether a drop loses the message (then nothing else applies).
        """
        if not self.active or traffic not in self.scope:
            return None
        with self._lock:
            r_drop, r_dup, r_reorder, r_delay = (self._rng.random() for _ in range(4))
            drop = r_drop < self.drop
            if drop and lossy:
                decision = FaultDecision(self._index, traffic, target, True, False, False, 0.0)
            else:
                decision = FaultDecision(
                    self._index,
                    traffic,
                    target,
                    drop,
                    r_dup < self.duplicate,
                    r_reorder < self.reorder,
                    r_delay * self.max_delay,
                )
            self._index += 1
            self.log.append(decision)
            self.counts["dropped"] += decision.drop
            self.counts["duplicated"] += decision.duplicate
            self.counts["reordered"] += decision.reorder
            self.counts["delayed"] += decision.delay > 0
        return decision


def _probability(url: TransportURL, name: str) -> float:
    value = url.float_option(name, 0.0)
    if value > 1.0:
        raise InvalidTransportURL(str(url), f"option {name}={value} must be between 0 and 1")
    return value


def bus_name(url: TransportURL) -> str:
    """The bus a ``memory://`` URL names; a port, path or host list is an error."""
    if len(url.hosts) > 1:
        raise InvalidTransportURL(str(url), "memory:// names one bus, not a host list")
    if url.virtual_host.strip("/"):
        raise InvalidTransportURL(
            str(url), f"memory:// takes no path (got {url.virtual_host!r}); name the bus as host"
        )
    if not url.hosts:
        return DEFAULT_BUS
    host = url.hosts[0]
    if host.port is not None:
        raise InvalidTransportURL(str(url), "memory:// takes no port")
    return host.hostname


def _authenticate(url: TransportURL, bus: _Bus) -> str | None:
    """The account this driver sends as (None on a bus without accounts)."""
    host = url.hosts[0] if url.hosts else None
    user = host.username if host else None
    password = host.password if host else None
    with bus.lock:
        has_accounts = bus.accounts is not None
        known = bus.accounts.get(user) if bus.accounts is not None and user else None
    if not has_accounts:
        if user is not None or password is not None:
            raise TransportError(
                f"memory bus {bus.name!r} has no accounts: drop the credentials from the URL, "
                "or create accounts with rpclib.transports.memory.add_account()"
            )
        return None
    if not user:
        raise TransportError(
            f"memory bus {bus.name!r} requires authentication: "
            "name an account as memory://user:password@bus"
        )
    if known is None or not hmac.compare_digest(known.encode(), (password or "").encode()):
        raise TransportError(
            f"memory bus {bus.name!r} refused user {user!r}: unknown user or wrong password"
        )
    return user


# --- the driver -------------------------------------------------------------------


class MemoryDriver(Driver):
    """Driver for ``memory://[NAME][?faults...]``; see the module docstring."""

    def __init__(self, url: TransportURL) -> None:
        super().__init__(url)
        url.reject_unknown_options(set(_KNOWN_OPTIONS))
        self.bus_name = bus_name(url)
        self._faults = _Faults(url)
        if self._faults.active:
            _LOG.debug("fault injection on %s with seed %d", url, self._faults.seed)
        self._bus = _get_bus(self.bus_name)
        self.user = _authenticate(url, self._bus)
        self._lock = threading.Lock()
        self._closed = False
        self._resources: set[_Resource] = set()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<MemoryDriver bus={self.bus_name!r}{state}>"

    # -- introspection -------------------------------------------------------

    @property
    def fault_seed(self) -> int:
        """The seed of the fault decisions (drawn at random unless the URL gives ``seed``)."""
        return self._faults.seed

    @property
    def fault_counts(self) -> dict[str, int]:
        """How many sends were dropped, duplicated, reordered and delayed so far."""
        with self._faults._lock:
            return dict(self._faults.counts)

    def fault_decisions(self) -> list[FaultDecision]:
        """The decisions of the last (up to 10,000) fault-eligible sends, oldest first."""
        with self._faults._lock:
            return list(self._faults.log)

    def stats(self) -> dict[str, int]:
        """Bus-wide counters: ``expired`` (discarded by deadline), ``ready``, ``dead_letters``."""
        bus = self._bus
        with bus.lock:
            self._check_open()
            bus.sweep_expired()
            return {
                "expired": bus.expired,
                "ready": sum(len(queue.ready) for queue in bus.all_queues()),
                "dead_letters": len(bus.dead),
            }

    # -- messages ----------------------------------------------------------------

    def send(
        self,
        address: Address,
        body: bytes,
        *,
        guarantee: Guarantee,
        expires_at: float | None = None,
        on_undeliverable: Callable[[Undeliverable], None] | None = None,
    ) -> None:
        """Route ``body`` to its queues now; Undeliverable if the contract says so."""
        body = bytes(body)
        bus = self._bus
        with bus.lock:
            self._check_open()
            self._bus.guard.send(self._grants(), address)
            queues = bus.route(address, guarantee)
            self._put(
                queues,
                body,
                expires_at,
                "message",
                str(address),
                lossy=guarantee is Guarantee.AT_MOST_ONCE,
            )

    def listen(
        self,
        address: Address,
        handler: MessageHandler,
        *,
        group: str | None = None,
        prefetch: int = 64,
    ) -> Subscription:
        """Consume from the address's queue (a new private one for fanout)."""
        _check_group(address, group)
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        bus = self._bus
        with bus.lock:
            self._check_open()
            bus.guard.consume(self._grants(), address, group)
            if address.fanout:
                queue = _Queue(bus, str(address), fanout_key=(address.exchange, address.topic))
                bus.fanouts.setdefault((address.exchange, address.topic), []).append(queue)
            else:
                queue = bus.queue_for(address, group)
            sub = _Subscription(self, queue, handler, prefetch)
            self._adopt(sub)
            queue.consumers.append(sub)
            sub.thread.start()
            queue.dispatch()
        return sub

    def declare(self, address: Address, group: str | None = None) -> None:
        """Create the durable queue of a topic group or server."""
        if address.fanout:
            raise ValueError(f"cannot declare {address}: fanout queues exist only while subscribed")
        _check_group(address, group)
        with self._bus.lock:
            self._check_open()
            self._bus.guard.declare(self._grants(), address, group)
            self._bus.queue_for(address, group)

    def remove_server_queues(self, address: Address) -> list[str]:
        """Delete the queue of a retired server (whoever may declare it may remove it)."""
        if address.server is None or address.fanout:
            raise ValueError(f"{address} is not a server address")
        with self._bus.lock:
            self._check_open()
            self._bus.guard.declare(self._grants(), address, None)
            key = (address.exchange, address.topic, address.server)
            queue = self._bus.servers.get(key)
            if queue is None:
                return []
            if queue.consumers:
                raise TransportError(f"the queue of {address} is in use: a server listens on it")
            del self._bus.servers[key]
            return [str(address)]

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of this bus, oldest first (the last 10,000 are kept)."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        with self._bus.lock:
            self._check_open()
            return [record.letter for record in itertools.islice(self._bus.dead, limit)]

    # -- operator capabilities (rpclib inspect, rpclib dead-letters) --------------------------

    def advertised_topics(self, exchange: str, *, listen: float = 12.0) -> list[str]:
        """The topics of ``exchange`` with an advert on this bus now (the bus knows: no wait)."""
        with self._bus.lock:
            self._check_open()
            return sorted(
                topic
                for (ex, topic), table in self._bus.adverts.items()
                if ex == exchange and table
            )

    def queue_depths(self, exchange: str, topic: str, servers: list[str]) -> list[QueueDepth]:
        """The topic's group queues and the named servers' queues that exist, with depths."""
        bus = self._bus
        with bus.lock:
            self._check_open()
            bus.sweep_expired()
            queues = list(bus.topics.get((exchange, topic), {}).values())
            queues += [
                bus.servers[(exchange, topic, server)]
                for server in sorted(servers)
                if (exchange, topic, server) in bus.servers
            ]
            return [
                QueueDepth(
                    queue.label,
                    len(queue.ready) + len(queue.held),
                    len(queue.consumers),
                    sum(len(c.unsettled) + len(c.buffer) for c in queue.consumers),
                )
                for queue in queues
            ]

    def replay_dead_letter(self, key: str) -> DeadLetter:
        """Put the dead letter back into the queue it came from, as one more attempt.

        It keeps its original sender: the bus authenticated it when it was
        first sent, and replaying changes nothing about who sent it.
        """
        bus = self._bus
        with bus.lock:
            self._check_open()
            self._unrestricted("replay", "dead letters")
            record = bus.find_dead_letter(key)
            queue = record.queue
            if queue is None or queue.deleted:
                raise Undeliverable(record.letter.address, "its queue is gone")
            bus.take_dead_letter(key)
            queue.put(_Message(record.letter.body, None, record.letter.attempts, record.sender))
            return record.letter

    def purge_dead_letters(self, keys: list[str] | None = None) -> int:
        """Forget the dead letters with ``keys`` (every one with None); how many went."""
        bus = self._bus
        with bus.lock:
            self._check_open()
            self._unrestricted("purge", "dead letters")
            if keys is None:
                count = len(bus.dead)
                bus.dead.clear()
                bus.dead_bytes = 0
                return count
            count = 0
            for key in keys:
                try:
                    bus.take_dead_letter(key)
                except KeyError:
                    continue
                count += 1
            return count

    # -- inboxes ------------------------------------------------------------------

    def open_inbox(self, handler: InboxHandler, on_event: InboxEventHandler | None = None) -> Inbox:
        """Open a private reply address; ``handler`` runs on the inbox's own thread.

        A bus in the process never disconnects, so ``on_event`` is never called.
        """
        bus = self._bus
        with bus.lock:
            self._check_open()
            inbox = _InboxSub(self, handler)
            self._adopt(inbox)
            bus.inboxes[inbox.address] = inbox
            inbox.thread.start()
        return inbox

    def send_to_inbox(self, inbox_address: str, body: bytes) -> None:
        """Deliver ``body`` to an open inbox on this bus; Undeliverable if there is none."""
        body = bytes(body)
        bus = self._bus
        with bus.lock:
            self._check_open()
            inbox = bus.inboxes.get(inbox_address)
            if inbox is None:
                raise Undeliverable(
                    inbox_address, "no such inbox (closed, or opened on another bus)"
                )
            self._put([inbox], body, None, "reply", inbox_address, lossy=True)

    # -- adverts --------------------------------------------------------------------

    def advertise(self, address: Address, body: bytes, ttl: float) -> None:
        """Publish or refresh the advert; watchers get ``(server, body)`` every time."""
        server = _advert_server(address)
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError(f"advert ttl must be a positive number of seconds, got {ttl!r}")
        body = bytes(body)
        bus = self._bus
        key = (address.exchange, address.topic)
        with bus.lock:
            self._check_open()
            bus.guard.advertise(self._grants(), address)
            table = bus.adverts.setdefault(key, {})
            previous = table.get(server)
            generation = previous.generation + 1 if previous is not None else 0
            table[server] = _Advert(body, self, generation)
            bus.schedule(ttl, lambda: _expire_advert(bus, key, server, generation))
            for watch in bus.watches.get(key, ()):
                watch.post(server, body)

    def withdraw(self, address: Address) -> None:
        """Remove the advert (whoever published it); watchers get ``(server, None)``."""
        server = _advert_server(address)
        with self._bus.lock:
            self._check_open()
            self._bus.guard.advertise(self._grants(), address)
            _remove_advert(self._bus, (address.exchange, address.topic), server)

    def watch_adverts(self, exchange: str, topic: str, handler: AdvertHandler) -> Subscription:
        """Report current adverts (sorted by server) before returning, then every change.

        Handlers run on the watch's own thread; this call waits until the
        handler has seen the snapshot.
        """
        bus = self._bus
        key = (exchange, topic)
        with bus.lock:
            self._check_open()
            bus.guard.watch(self._grants(), exchange, topic)
            snapshot = [
                (server, ad.body) for server, ad in sorted(bus.adverts.get(key, {}).items())
            ]
            watch = _Watch(self, key, handler, snapshot)
            self._adopt(watch)
            bus.watches.setdefault(key, []).append(watch)
            watch.thread.start()
        watch.snapshot_done.wait()
        return watch

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Close this driver's subscriptions, inboxes and watches; withdraw its adverts."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            resources = list(self._resources)
        for resource in resources:
            resource.close()
        bus = self._bus
        with bus.lock:
            if bus.closed:
                return
            for key, table in list(bus.adverts.items()):
                for server, advert in list(table.items()):
                    if advert.owner is self:
                        _remove_advert(bus, key, server)

    def _check_open(self) -> None:
        """Raise TransportError if this driver or its bus is closed (bus lock held)."""
        if self._closed:
            raise TransportError(f"memory driver for {self.url} is closed")
        self._bus.check_open()

    def _unrestricted(self, operation: str, target: str) -> None:
        """Refuse an operator's operation to an account with grants (bus lock held).

        Replaying puts a message into any queue and purging destroys others'
        evidence: neither fits in a least-privilege account's grants.
        """
        if self.user is not None and self._grants() is not None:
            raise AccessRefused(self.user, operation, target)

    def _grants(self) -> Grants | None:
        """This driver's account's grants now (None: unrestricted; bus lock held)."""
        return None if self.user is None else self._bus.grants.get(self.user)

    def _adopt(self, resource: _Resource) -> None:
        """Track a new subscription/inbox/watch so close() and reset_bus() can stop it."""
        with self._lock:
            if self._closed:  # close() raced with us after _check_open
                raise TransportError(f"memory driver for {self.url} is closed")
            self._resources.add(resource)
        self._bus.resources.add(resource)

    def _forget(self, resource: _Resource) -> None:
        with self._lock:
            self._resources.discard(resource)

    def _put(
        self,
        sinks: list[_Queue] | list[_InboxSub],
        body: bytes,
        expires_at: float | None,
        traffic: Traffic,
        target: str,
        *,
        lossy: bool,
    ) -> None:
        """Enqueue one accepted send into ``sinks``, applying injected faults (bus lock held)."""
        decision = self._faults.decide(traffic, target, lossy=lossy)
        attempts, copies, hold, delay = 0, 1, False, 0.0
        if decision is not None:
            if decision.drop and lossy:
                _LOG.debug("fault injection dropped a %s to %s", traffic, target)
                return
            # A dropped AT_LEAST_ONCE delivery is redelivered: count the lost attempt.
            attempts = 1 if decision.drop else 0
            copies = 2 if decision.duplicate else 1
            hold, delay = decision.reorder, decision.delay
        bus = self._bus
        for sink in sinks:
            for _ in range(copies):
                msg = _Message(body, expires_at, attempts, self.user)
                if delay > 0:
                    bus.schedule(delay, _deferred_put(sink, msg, hold))
                else:
                    sink.put(msg, hold=hold)


def _deferred_put(sink: _Sink, msg: _Message, hold: bool) -> Callable[[], None]:
    return lambda: sink.put(msg, hold=hold)


def _check_group(address: Address, group: str | None) -> None:
    if group is not None and (address.fanout or address.server is not None):
        raise ValueError(f"consumer groups apply to topics only, not to {address}")


def _advert_server(address: Address) -> str:
    if address.server is None or address.fanout:
        raise ValueError(f"an advert needs a server-directed address, got {address}")
    return address.server


def _remove_advert(bus: _Bus, key: tuple[str, str], server: str) -> None:
    """Delete an advert and tell watchers (bus lock held)."""
    table = bus.adverts.get(key)
    if table is None or table.pop(server, None) is None:
        return
    if not table:
        del bus.adverts[key]
    for watch in bus.watches.get(key, ()):
        watch.post(server, None)


def _expire_advert(bus: _Bus, key: tuple[str, str], server: str, generation: int) -> None:
    """Timer: remove the advert unless it was refreshed (or replaced) since (bus lock held)."""
    advert = bus.adverts.get(key, {}).get(server)
    if advert is not None and advert.generation == generation:
        _LOG.debug("advert of %s on %s/%s expired", server, *key)
        _remove_advert(bus, key, server)
