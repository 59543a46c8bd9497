"""Notification listeners: deliver notifications to endpoint methods named by priority.

A listener subscribes to ``f"{topic}.{priority}"`` for each target and each
priority some endpoint implements (a method called ``info``, ``error``, ...;
``warning`` is accepted for ``warn``), in consumer group ``pool``. Every pool
gets each notification once and the listeners of one pool compete for them,
so a pool scales out by starting more listeners.

On the driver's thread the envelope header is checked and the endpoints'
filters are applied: a malformed message is dead-lettered with the reason at
once, one no endpoint wants is acknowledged without decoding its payload.
The rest runs on a bounded thread pool. A message is acknowledged after every
matching endpoint returned; requeued if one returned
:attr:`NotificationResult.REQUEUE` or raised; dead-lettered after
``max_attempts`` deliveries. Endpoints may see a notification more than once
(requeues, crashes): ``metadata["message_id"]`` is the key to drop duplicates.
"""

from __future__ import annotations

import collections
import enum
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rpclib import envelope
from rpclib.consumer import Consumer, Counters
from rpclib.envelope import Envelope, Kind
from rpclib.exceptions import Forbidden, MalformedMessage, MessageTooLarge, is_retryable
from rpclib.logsummary import SummaryLog
from rpclib.notify_drivers import PRIORITIES
from rpclib.policy import Policy
from rpclib.serializer import Serializer
from rpclib.target import Target
from rpclib.transport import Transport
from rpclib.transports.base import Address, Incoming, Subscription

LOG = logging.getLogger("rpclib.listener")


class NotificationResult(enum.Enum):
    """What an endpoint method may return (None means HANDLED)."""

    HANDLED = "handled"
    REQUEUE = "requeue"


class NotificationFilter:
    """Which notifications an endpoint sees (``endpoint.filter_rule``).

    Every given condition must hold. ``event_type`` and ``publisher_id`` are
    regular expressions searched in the value (anchor them with ``^``/``$``);
    ``context`` and ``metadata`` map keys to regular expressions searched in
    the value under that key (as text), and a missing key does not match.
    """

    __slots__ = ("_context", "_event_type", "_metadata", "_publisher_id")

    def __init__(
        self,
        *,
        event_type: str | None = None,
        publisher_id: str | None = None,
        context: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self._event_type = _compile("event_type", event_type)
        self._publisher_id = _compile("publisher_id", publisher_id)
        self._context = {k: _required(f"context[{k!r}]", v) for k, v in (context or {}).items()}
        self._metadata = {k: _required(f"metadata[{k!r}]", v) for k, v in (metadata or {}).items()}

    def match(
        self,
        ctx: Mapping[str, Any],
        publisher_id: str,
        event_type: str,
        metadata: Mapping[str, Any],
    ) -> bool:
        """True if the notification passes this filter."""
        if self._event_type is not None and not self._event_type.search(event_type):
            return False
        if self._publisher_id is not None and not self._publisher_id.search(publisher_id):
            return False
        return _match_keys(self._context, ctx) and _match_keys(self._metadata, metadata)

    def __repr__(self) -> str:
        parts = [
            f"{name}={pattern.pattern!r}"
            for name, pattern in (
                ("event_type", self._event_type),
                ("publisher_id", self._publisher_id),
            )
            if pattern is not None
        ]
        parts += [f"context[{k!r}]={p.pattern!r}" for k, p in self._context.items()]
        parts += [f"metadata[{k!r}]={p.pattern!r}" for k, p in self._metadata.items()]
        return f"NotificationFilter({', '.join(parts)})"


def _compile(name: str, pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        raise TypeError(f"filter {name} must be a regular expression string, got {pattern!r}")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"filter {name}: bad regular expression {pattern!r}: {exc}") from None


def _required(name: str, pattern: str) -> re.Pattern[str]:
    compiled = _compile(name, pattern)
    if compiled is None:
        raise TypeError(f"filter {name} must be a regular expression string, got None")
    return compiled


def _match_keys(patterns: Mapping[str, re.Pattern[str]], values: Mapping[str, Any]) -> bool:
    for key, pattern in patterns.items():
        if key not in values:
            return False
        value = values[key]
        if not pattern.search(value if isinstance(value, str) else str(value)):
            return False
    return True


@dataclass
class ListenerStats(Counters):
    """Counters an operator can read (``listener.stats``), in messages."""

    handled: int = 0
    failed: int = 0
    requeued: int = 0
    dead_lettered: int = 0
    malformed: int = 0
    filtered: int = 0
    forbidden: int = 0


@dataclass(frozen=True, slots=True)
class _Callback:
    """One endpoint method for one priority, with the endpoint's filter."""

    name: str
    func: Callable[..., Any]
    filter: NotificationFilter | None


@dataclass(slots=True)
class _Received:
    """A notification whose header passed the checks, not yet settled."""

    incoming: Incoming
    env: Envelope
    priority: str
    event_type: str
    publisher_id: str
    ctx: dict[str, Any]
    metadata: dict[str, Any]
    callbacks: list[_Callback] = field(default_factory=list)


def _callbacks(endpoints: Iterable[object]) -> dict[str, list[_Callback]]:
    """Map each priority to the endpoint methods handling it, in endpoint order."""
    found: dict[str, list[_Callback]] = {}
    count = 0
    for endpoint in endpoints:
        count += 1
        rule = getattr(endpoint, "filter_rule", None)
        if rule is not None and not isinstance(rule, NotificationFilter):
            raise TypeError(
                f"{type(endpoint).__name__}.filter_rule must be a NotificationFilter, got {rule!r}"
            )
        implemented = 0
        for priority in PRIORITIES:
            func = getattr(endpoint, priority, None)
            if func is None and priority == "warn":
                func = getattr(endpoint, "warning", None)
            if func is None:
                continue
            if not callable(func):
                raise TypeError(f"{type(endpoint).__name__}.{priority} is not callable")
            name = f"{type(endpoint).__name__}.{getattr(func, '__name__', priority)}"
            found.setdefault(priority, []).append(_Callback(name, func, rule))
            implemented += 1
        if not implemented:
            raise ValueError(
                f"endpoint {endpoint!r} implements no notification priority "
                f"(methods named {', '.join(PRIORITIES)})"
            )
    if not count:
        raise ValueError("a notification listener needs at least one endpoint")
    return found


class _ListenerBase(Consumer):
    """Subscriptions, header checks and settlement shared by both listeners."""

    def __init__(
        self,
        transport: Transport,
        targets: Iterable[Target],
        endpoints: Iterable[object],
        pool: str | None,
        *,
        executor_threads: int,
        allow_requeue: bool,
        max_attempts: int,
        serializer: Serializer | None,
        prefetch: int,
        policy: Policy | None,
    ) -> None:
        self.targets = list(targets)
        if not self.targets:
            raise ValueError("a notification listener needs at least one target")
        for target in self.targets:
            if not target.topic or target.server is not None or target.fanout:
                raise ValueError(
                    f"a notification target names a topic (and optionally an exchange) only, "
                    f"got {target!r}"
                )
        if pool is not None and (not isinstance(pool, str) or not pool):
            raise ValueError(f"pool must be a non-empty string or None, got {pool!r}")
        if max_attempts < 1 or prefetch < 1:
            raise ValueError("max_attempts and prefetch must be positive")
        super().__init__(executor_threads=executor_threads, thread_name="rpclib-notify")
        self.transport = transport
        self.pool = pool
        self.allow_requeue = allow_requeue
        self.max_attempts = max_attempts
        self.serializer = serializer or Serializer()
        self.stats = ListenerStats()
        self._callbacks = _callbacks(endpoints)
        self._prefetch = prefetch
        self.policy = policy
        self._log = SummaryLog(LOG)

    @property
    def addresses(self) -> list[Address]:
        """Every address this listener consumes from."""
        out: list[Address] = []
        for target in self.targets:
            exchange = target.exchange or self.transport.default_exchange
            for priority in PRIORITIES:
                if priority in self._callbacks:
                    out.append(Address(exchange, f"{target.topic}.{priority}"))
        return out

    # --- lifecycle (see rpclib.consumer) ----------------------------------------------

    def _subscribe(self) -> list[Subscription]:
        driver = self.transport.driver
        return [
            driver.listen(address, self._handler(address), group=self.pool, prefetch=self._prefetch)
            for address in self.addresses
        ]

    def _on_started(self) -> None:
        LOG.info(
            "notification listener (pool %s) listening on %s",
            self.pool or "default",
            ", ".join(str(a) for a in self.addresses),
        )

    def _on_closed(self) -> None:
        self._log.flush()

    # hook for the two listeners
    def _accept(self, received: _Received) -> None:
        raise NotImplementedError

    # --- receiving (driver thread) ---------------------------------------------------------

    def _handler(self, address: Address) -> Callable[[Incoming], None]:
        priority = address.topic.rsplit(".", 1)[1]

        def handle(incoming: Incoming) -> None:
            self._on_message(address, priority, incoming)

        return handle

    def _on_message(self, address: Address, priority: str, incoming: Incoming) -> None:
        """Driver thread: check the header, apply filters, hand over or settle."""
        try:
            received = self._check(priority, incoming)
        except (MalformedMessage, MessageTooLarge) as exc:
            self.stats.add("malformed")
            self.stats.add("dead_lettered")
            self._log.log(
                logging.ERROR,
                "malformed notifications",
                "dead-lettering a malformed notification on %s: %s",
                address,
                exc,
            )
            incoming.dead_letter(f"malformed notification: {exc}")
            return
        if self.policy is not None:
            decision = self.policy.check_notification(incoming.sender, received.event_type)
            if not decision.allowed:
                refused = Forbidden(
                    incoming.sender, received.event_type, None, decision.rule, action="send"
                )
                self.stats.add("forbidden")
                self.stats.add("dead_lettered")
                self._log.log(
                    logging.WARNING,
                    "forbidden notifications",
                    "dead-lettering a notification on %s: %s",
                    address,
                    refused,
                )
                incoming.dead_letter(f"Forbidden: {refused}")
                return
        received.callbacks = [
            cb
            for cb in self._callbacks.get(priority, [])
            if cb.filter is None
            or cb.filter.match(
                received.ctx, received.publisher_id, received.event_type, received.metadata
            )
        ]
        if not received.callbacks:
            self.stats.add("filtered")
            incoming.ack()
            return
        self._accept(received)

    def _check(self, priority: str, incoming: Incoming) -> _Received:
        env = envelope.decode(incoming.body, max_size=self.transport.max_message_size)
        if env.kind is not Kind.NOTIFICATION:
            raise MalformedMessage(f"unexpected {env.kind.name} envelope on a notification topic")
        h = env.header
        sent_priority = h[envelope.PRIORITY]
        event_type = h[envelope.EVENT_TYPE]
        publisher_id = h[envelope.PUBLISHER]
        ctx = h[envelope.CONTEXT]
        sent_at = h[envelope.SENT_AT]
        if sent_priority != priority:
            raise MalformedMessage(f"priority {sent_priority!r} sent to a {priority!r} topic")
        if not isinstance(event_type, str) or not event_type:
            raise MalformedMessage(f"event type must be a non-empty string, got {event_type!r:.80}")
        if not isinstance(publisher_id, str):
            raise MalformedMessage(f"publisher must be a string, got {publisher_id!r:.80}")
        if type(ctx) is not dict or not all(type(k) is str for k in ctx):
            raise MalformedMessage(f"ctx must be a map with string keys, got {ctx!r:.80}")
        if type(sent_at) not in (int, float):
            raise MalformedMessage(f"send time must be a number, got {sent_at!r:.80}")
        metadata = {
            "message_id": env.message_id.hex(),
            "timestamp": float(sent_at),
            "priority": priority,
            "attempts": incoming.attempts,
            "sender": incoming.sender,
        }
        return _Received(incoming, env, priority, event_type, publisher_id, ctx, metadata)

    # --- handling (pool threads) -----------------------------------------------------------

    def _payload(self, received: _Received) -> tuple[bool, Any]:
        """Decode the payload; dead-letter the message if it cannot be."""
        try:
            return True, received.env.body(self.serializer, received.ctx)
        except Exception as exc:
            self.stats.add("malformed")
            self.stats.add("dead_lettered")
            self._log.log(
                logging.ERROR,
                "malformed notifications",
                "dead-lettering notification %s %s: undecodable payload: %s",
                received.event_type,
                received.metadata["message_id"],
                exc,
            )
            received.incoming.dead_letter(f"undecodable payload: {type(exc).__name__}: {exc}")
            return False, None

    def _call(self, callback: _Callback, args: tuple[Any, ...]) -> str | BaseException:
        """Run one endpoint method: "ok", "requeue" or the exception it raised."""
        try:
            result = callback.func(*args)
        except Exception as exc:
            return exc
        if result is NotificationResult.REQUEUE:
            return "requeue"
        return "ok"

    def _settle(
        self,
        received: _Received,
        error: BaseException | None,
        error_from: str,
        requeue_by: list[str],
        *,
        log: bool = True,
    ) -> str:
        """Ack, requeue or dead-letter one message by the outcome of its endpoints.

        Returns what was done: "ack", "requeue" or "dead_letter".
        """
        incoming = received.incoming
        what = f"{received.event_type} {received.metadata['message_id']}"
        attempts = incoming.attempts
        if error is None and requeue_by and not self.allow_requeue:
            if log:
                LOG.warning(
                    "%s asked to requeue notification %s but allow_requeue is False; acknowledging",
                    ", ".join(requeue_by),
                    what,
                )
            requeue_by = []
        if error is None and not requeue_by:
            self.stats.add("handled")
            incoming.ack()
            return "ack"
        if error is not None:
            self.stats.add("failed")
        cause = _cause(error, error_from, requeue_by)
        permanent = error is not None and not is_retryable(error)
        if attempts < self.max_attempts and not permanent:
            if log:
                LOG.warning(
                    "notification %s: %s (attempt %d of %d), requeueing",
                    what,
                    cause,
                    attempts,
                    self.max_attempts,
                )
            self.stats.add("requeued")
            incoming.requeue()
            return "requeue"
        tried = "permanent error, not retried" if permanent else f"after {attempts} attempts"
        reason = f"{cause} ({tried})"
        if log:
            LOG.error("dead-lettering notification %s: %s", what, reason, exc_info=error)
        self.stats.add("dead_lettered")
        incoming.dead_letter(reason)
        return "dead_letter"


def _cause(error: BaseException | None, error_from: str, requeue_by: list[str]) -> str:
    if error is not None:
        return f"{error_from} raised {type(error).__name__}: {error}"
    return f"{', '.join(requeue_by)} asked to requeue it"


class NotificationListener(_ListenerBase):
    """Calls ``endpoint.<priority>(ctx, publisher_id, event_type, payload, metadata)``.

    ``metadata`` holds ``message_id`` (hex, stable across redeliveries),
    ``timestamp`` (when it was sent, ``time.time()``), ``priority`` and
    ``attempts`` (1 on first delivery) and ``sender`` (the principal the
    transport authenticated, or None). With a ``policy``, a notification
    whose sender may not send its event type is dead-lettered with the
    reason and never reaches an endpoint. Endpoint methods run on a pool of
    ``executor_threads``; return None, :attr:`NotificationResult.HANDLED` or
    :attr:`NotificationResult.REQUEUE`. A REQUEUE (with ``allow_requeue``)
    or an exception requeues the notification, and after ``max_attempts``
    deliveries it is dead-lettered with the reason. ``prefetch`` caps the
    unsettled messages per subscription (default: twice the threads).
    """

    def __init__(
        self,
        transport: Transport,
        targets: Iterable[Target],
        endpoints: Iterable[object],
        pool: str | None = None,
        *,
        executor_threads: int = 8,
        allow_requeue: bool = True,
        max_attempts: int = 5,
        serializer: Serializer | None = None,
        prefetch: int | None = None,
        policy: Policy | None = None,
    ) -> None:
        super().__init__(
            transport,
            targets,
            endpoints,
            pool,
            executor_threads=executor_threads,
            allow_requeue=allow_requeue,
            max_attempts=max_attempts,
            serializer=serializer,
            prefetch=prefetch or executor_threads * 2,
            policy=policy,
        )

    def _accept(self, received: _Received) -> None:
        # Waits per publisher (its authenticated sender), served round robin: one
        # publisher's burst delays another's notifications by about one each.
        if not self._pool.submit(lambda: self._handle(received), received.incoming.sender):
            received.incoming.requeue()  # shutting down: another listener of the pool takes it

    def _handle(self, received: _Received) -> None:
        ok, payload = self._payload(received)
        if not ok:
            return
        args = (
            received.ctx,
            received.publisher_id,
            received.event_type,
            payload,
            received.metadata,
        )
        error: BaseException | None = None
        error_from = ""
        requeue_by: list[str] = []
        started = time.monotonic() if LOG.isEnabledFor(logging.DEBUG) else 0.0
        for callback in received.callbacks:
            outcome = self._call(callback, args)
            if outcome == "requeue":
                requeue_by.append(callback.name)
            elif isinstance(outcome, BaseException) and error is None:
                error, error_from = outcome, callback.name
        settled = self._settle(received, error, error_from, requeue_by)
        if started:
            LOG.debug(
                "handled notification %s %s from %s at %s: %s in %.1f ms (request_id=%s)",
                received.event_type,
                received.metadata["message_id"],
                received.publisher_id,
                received.priority,
                settled if error is None else f"{settled} ({_cause(error, error_from, [])})",
                (time.monotonic() - started) * 1000.0,
                received.ctx.get("request_id"),
            )


@dataclass(slots=True)
class _Batch:
    items: list[_Received] = field(default_factory=list)
    due: float = 0.0


class BatchNotificationListener(_ListenerBase):
    """Calls ``endpoint.<priority>(notifications)`` with lists of one priority.

    Each notification is a dict with ``ctx``, ``publisher_id``,
    ``event_type``, ``payload`` and ``metadata`` (as for
    :class:`NotificationListener`); an endpoint gets only those its filter
    passes, and is not called if none does. A batch is handed to the pool
    when it holds ``batch_size`` notifications or ``batch_timeout`` seconds
    after its first one arrived (None: only when full, or on stop). Every
    message of a batch is settled by the batch's outcome: acknowledged,
    or requeued (dead-lettered once it reached ``max_attempts``) if an
    endpoint raised or asked to requeue. ``prefetch`` (per subscription)
    must be at least ``batch_size`` so a batch can fill; the default is
    twice it, so the next batch fills while one is handled.
    """

    def __init__(
        self,
        transport: Transport,
        targets: Iterable[Target],
        endpoints: Iterable[object],
        pool: str | None = None,
        *,
        batch_size: int = 100,
        batch_timeout: float | None = 1.0,
        executor_threads: int = 4,
        allow_requeue: bool = True,
        max_attempts: int = 5,
        serializer: Serializer | None = None,
        prefetch: int | None = None,
        policy: Policy | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
        if batch_timeout is not None and not batch_timeout > 0:
            raise ValueError(f"batch_timeout must be positive or None, got {batch_timeout!r}")
        if prefetch is not None and prefetch < batch_size:
            raise ValueError(
                f"prefetch ({prefetch}) must be >= batch_size ({batch_size}), "
                "or a batch could never fill"
            )
        super().__init__(
            transport,
            targets,
            endpoints,
            pool,
            executor_threads=executor_threads,
            allow_requeue=allow_requeue,
            max_attempts=max_attempts,
            serializer=serializer,
            prefetch=prefetch or max(2 * batch_size, executor_threads * 2),
            policy=policy,
        )
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        self._batches: dict[str, _Batch] = {}
        self._batch_cond = threading.Condition()
        self._timer: threading.Thread | None = None
        self._closing_batches = False

    @property
    def pending(self) -> int:
        """Notifications received and waiting for their batch to fill or time out."""
        with self._batch_cond:
            return sum(len(b.items) for b in self._batches.values())

    def _on_start(self) -> None:
        if self.batch_timeout is not None:
            self._timer = threading.Thread(
                target=self._run_timer, name="rpclib-notify-batches", daemon=True
            )
            self._timer.start()

    def _before_drain(self) -> None:
        self._on_stop()

    def _on_stop(self) -> None:
        """Hand every partial batch to the pool now; later arrivals go at once."""
        with self._batch_cond:
            self._closing_batches = True
            ready = [b.items for b in self._batches.values() if b.items]
            self._batches.clear()
            self._batch_cond.notify_all()
        for items in ready:
            self._dispatch(items)

    def _accept(self, received: _Received) -> None:
        self._pool.hold()  # buffered messages count as in flight for wait()
        ready: list[_Received] | None = None
        with self._batch_cond:
            batch = self._batches.get(received.priority)
            if batch is None:
                batch = self._batches[received.priority] = _Batch()
            if not batch.items:
                batch.due = time.monotonic() + (self.batch_timeout or 0.0)
                self._batch_cond.notify_all()
            batch.items.append(received)
            if len(batch.items) >= self.batch_size or self._closing_batches:
                ready, batch.items = batch.items, []
        if ready:
            self._dispatch(ready)

    def _run_timer(self) -> None:
        assert self.batch_timeout is not None
        while True:
            expired: list[list[_Received]] = []
            with self._batch_cond:
                if self._closing_batches:
                    return
                now = time.monotonic()
                waiting = [b for b in self._batches.values() if b.items]
                for batch in waiting:
                    if batch.due <= now:
                        expired.append(batch.items)
                        batch.items = []
                if not expired:
                    due = min((b.due for b in waiting), default=None)
                    self._batch_cond.wait(None if due is None else due - now)
                    continue
            for items in expired:
                self._dispatch(items)

    def _dispatch(self, items: list[_Received]) -> None:
        """Hand a batch to the pool (its messages are already counted in flight)."""
        if not self._pool.submit(lambda: self._run_batch(items)):
            self._pool.release(len(items))
            for received in items:  # shutting down: other listeners of the pool take them
                received.incoming.requeue()

    def _run_batch(self, items: list[_Received]) -> None:
        try:
            self._handle_batch(items)
        finally:
            self._pool.release(len(items))

    def _handle_batch(self, items: list[_Received]) -> None:
        priority = items[0].priority
        decoded: list[tuple[_Received, dict[str, Any]]] = []
        for received in items:
            ok, payload = self._payload(received)
            if ok:
                decoded.append(
                    (
                        received,
                        {
                            "ctx": received.ctx,
                            "publisher_id": received.publisher_id,
                            "event_type": received.event_type,
                            "payload": payload,
                            "metadata": received.metadata,
                        },
                    )
                )
        if not decoded:
            return
        error: BaseException | None = None
        error_from = ""
        requeue_by: list[str] = []
        started = time.monotonic() if LOG.isEnabledFor(logging.DEBUG) else 0.0
        for callback in self._callbacks.get(priority, []):
            batch = [item for received, item in decoded if callback in received.callbacks]
            if not batch:
                continue
            outcome = self._call(callback, (batch,))
            if outcome == "requeue":
                requeue_by.append(callback.name)
            elif isinstance(outcome, BaseException) and error is None:
                error, error_from = outcome, callback.name
        done = collections.Counter(
            self._settle(received, error, error_from, requeue_by, log=False)
            for received, _ in decoded
        )
        if started:
            LOG.debug(
                "handled a batch of %d %s notification(s) (%s): %s in %.1f ms (request_ids=%s)",
                len(decoded),
                priority,
                ", ".join(sorted({received.event_type for received, _ in decoded})),
                ", ".join(f"{n} {how}" for how, n in sorted(done.items())),
                (time.monotonic() - started) * 1000.0,
                sorted({str(received.ctx.get("request_id")) for received, _ in decoded}),
            )
        if error is None and not requeue_by:
            return
        cause = _cause(error, error_from, requeue_by)
        if error is None and not self.allow_requeue:
            LOG.warning(
                "%s, but allow_requeue is False: acknowledged %d %s notification(s)",
                cause,
                done["ack"],
                priority,
            )
            return
        LOG.log(
            logging.ERROR if done["dead_letter"] else logging.WARNING,
            "batch of %d %s notification(s): %s; requeued %d, dead-lettered %d (max_attempts %d)",
            len(decoded),
            priority,
            cause,
            done["requeue"],
            done["dead_letter"],
            self.max_attempts,
            exc_info=error,
        )


__all__ = [
    "BatchNotificationListener",
    "ListenerStats",
    "NotificationFilter",
    "NotificationListener",
    "NotificationResult",
]
