"""Notification drivers: where a :class:`~rpclib.notifier.Notifier` sends what it emits.

Built in:

``messaging``
    Through the transport, one envelope per notification and topic, to
    ``Address(exchange, f"{topic}.{priority}")`` with at-least-once delivery.
    The caller never waits for the transport: notifications go into a bounded
    buffer drained by one background sender thread. A full buffer drops (and
    counts, and logs) instead of blocking the service; transport errors are
    retried with backoff while the buffer holds.
``log``
    One logging line per notification on logger
    ``rpclib.notification.<event_type>``, at the level matching the priority.
``noop``
    Discards everything (notifications switched off).
``routing``
    Sends each notification to the drivers whose rules match its event type and
    priority; see :class:`RoutingDriver` for the configuration shape.

Your own driver subclasses :class:`NotificationDriver` and is passed to the
Notifier as an instance.
"""

from __future__ import annotations

import abc
import atexit
import collections
import datetime
import fnmatch
import json
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rpclib import envelope
from rpclib.envelope import Kind
from rpclib.exceptions import TransportError, Undeliverable, is_retryable
from rpclib.serializer import Serializer
from rpclib.transport import Transport
from rpclib.transports.base import Address, Guarantee

LOG = logging.getLogger("rpclib.notifier")

EXIT_FLUSH_TIMEOUT = 5.0
"""Seconds an exiting process spends sending what its notifiers still buffer."""

_LIVE_SENDERS: weakref.WeakSet[MessagingDriver] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """Send buffered notifications before the interpreter exits (the sender is a daemon)."""
    for driver in list(_LIVE_SENDERS):
        driver.close(EXIT_FLUSH_TIMEOUT)


PRIORITIES: tuple[str, ...] = ("audit", "debug", "info", "warn", "error", "critical", "sample")
"""Every notification priority, as it travels on the wire and names topics."""

_ALIASES = {"warning": "warn"}


def normalize_priority(priority: str) -> str:
    """The wire name of ``priority`` (``warning`` is ``warn``); ValueError if unknown."""
    if not isinstance(priority, str):
        raise ValueError(f"a priority is a string, got {priority!r}")
    name = priority.lower()
    name = _ALIASES.get(name, name)
    if name not in PRIORITIES:
        known = ", ".join(PRIORITIES)
        raise ValueError(f"unknown notification priority {priority!r} (known: {known})")
    return name


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification as the Notifier hands it to every driver.

    ``message_id`` is the notification's unique id (the envelope's id on the
    wire); ``timestamp`` is ``time.time()`` when it was emitted.
    """

    message_id: bytes
    priority: str
    event_type: str
    publisher_id: str
    ctx: Mapping[str, Any]
    payload: Any
    timestamp: float

    @property
    def id(self) -> str:
        """The message id as hex, as listeners see it in ``metadata["message_id"]``."""
        return self.message_id.hex()


@dataclass(frozen=True, slots=True)
class NotifierStats:
    """Delivery counters, counted in messages (a notification sent to two topics counts twice).

    ``sent``: accepted by the transport (or written by the log driver);
    ``dropped``: discarded because the buffer was full or the notifier closed;
    ``undeliverable``: no queue existed for the address (nobody ever listened);
    ``failed``: given up after transport errors, or a driver error.
    """

    sent: int = 0
    dropped: int = 0
    undeliverable: int = 0
    failed: int = 0

    def __add__(self, other: NotifierStats) -> NotifierStats:
        return NotifierStats(
            self.sent + other.sent,
            self.dropped + other.dropped,
            self.undeliverable + other.undeliverable,
            self.failed + other.failed,
        )


class _Counters:
    """Thread-safe mutable counters behind a driver's :class:`NotifierStats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = {"sent": 0, "dropped": 0, "undeliverable": 0, "failed": 0}

    def add(self, name: str, n: int = 1) -> int:
        with self._lock:
            self._values[name] += n
            return self._values[name]

    def snapshot(self) -> NotifierStats:
        with self._lock:
            return NotifierStats(**self._values)


class NotificationDriver(abc.ABC):
    """Base class of notification drivers.

    :meth:`notify` is called on the emitting service's thread, so it must not
    block for long. It should raise only when the notification itself cannot
    be sent (e.g. a payload that cannot be encoded): delivery problems are
    the driver's to count and log.
    """

    @abc.abstractmethod
    def notify(self, notification: Notification, topics: Sequence[str]) -> None:
        """Emit ``notification``; ``topics`` are the notifier's topics (ignore if irrelevant)."""

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything accepted so far was delivered; False if ``timeout`` passed."""
        return True

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is pending (up to ``timeout``) and release threads."""
        return None

    @property
    def stats(self) -> NotifierStats:
        """Counters of this driver (zero unless it counts)."""
        return NotifierStats()

    @property
    def enabled(self) -> bool:
        """False for drivers that discard everything (lets callers skip building payloads)."""
        return True


def notify_all(
    drivers: Sequence[NotificationDriver], notification: Notification, topics: Sequence[str]
) -> None:
    """Call every driver; re-raise the first error only after all were tried.

    One driver's failure (say, a payload the messaging driver cannot encode)
    must not keep the notification from the others (say, the log).
    """
    first: Exception | None = None
    for driver in drivers:
        try:
            driver.notify(notification, topics)
        except Exception as exc:
            if first is None:
                first = exc
    if first is not None:
        raise first


class _RateLimitedLog:
    """Logs a line per key at most once per ``interval``, then says how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[object, float] = {}
        self._suppressed: collections.Counter[object] = collections.Counter()
        # key -> level, message and arguments of the last suppressed line (formatted on flush)
        self._held: dict[object, tuple[int, str, tuple[object, ...]]] = {}
        self._lock = threading.Lock()

    def log(self, key: object, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] += 1
                self._held[key] = (level, msg, args)
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
            self._held.pop(key, None)
        if suppressed:
            msg += " (%d similar line(s) suppressed in the last %.0fs)"
            args = (*args, suppressed, self._interval)
        self._logger.log(level, msg, *args)

    def forget(self, key: object) -> None:
        with self._lock:
            self._last.pop(key, None)
            self._suppressed.pop(key, None)
            self._held.pop(key, None)

    def flush(self) -> None:
        """Write one line per key whose lines were suppressed since it last wrote (on close)."""
        with self._lock:
            held = [(self._suppressed[key], *self._held[key]) for key in self._held]
            self._suppressed.clear()
            self._held.clear()
        for count, level, msg, args in held:
            last = msg % args if args else msg
            self._logger.log(level, "%d similar line(s) suppressed; the last: %s", count, last)


@dataclass(slots=True)
class _DropSpell:
    """Drops since the buffer filled: summarised when it half-empties again, or on close."""

    since: float
    reason: str
    dropped: int = 0


@dataclass(slots=True)
class _Outgoing:
    """One encoded notification waiting in the buffer, with the addresses still to send to."""

    message_id: str
    event_type: str
    data: bytes
    addresses: list[Address] = field(default_factory=list)


class MessagingDriver(NotificationDriver):
    """Sends notifications through the transport without ever blocking the caller.

    :meth:`notify` encodes on the caller's thread (an unencodable payload or
    plain-value violation raises there, where the bug is) and appends to a
    buffer of ``buffer_size`` notifications; one sender thread drains it.

    - Buffer full, or closed: the notification is dropped, counted, logged.
    - ``Undeliverable`` (no queue for the topic): logged as an error, counted,
      not retried.
    - ``TransportError``: retried with exponential backoff (``retry_backoff``
      doubling up to ``max_backoff`` seconds) while new notifications keep
      filling the buffer; after ``retry`` retries (None: until closed) it is
      counted as failed.

    ``ensure_pools`` names consumer groups (notification pools) that must keep
    messages even before they first listen: each address is declared for them
    (``driver.declare(address, group=pool)``) before the first send to it.
    Repeated log lines are rate-limited to one per ``log_interval`` per cause.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        exchange: str | None = None,
        serializer: Serializer | None = None,
        buffer_size: int = 1000,
        ensure_pools: Iterable[str | None] = (),
        retry: int | None = None,
        retry_backoff: float = 0.1,
        max_backoff: float = 5.0,
        log_interval: float = 60.0,
    ) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, got {buffer_size!r}")
        if retry is not None and retry < 0:
            raise ValueError(f"retry must be None (until closed) or >= 0, got {retry!r}")
        if not retry_backoff > 0 or not max_backoff >= retry_backoff:
            raise ValueError("need 0 < retry_backoff <= max_backoff")
        self.transport = transport
        self.exchange = exchange or transport.default_exchange
        self.serializer = serializer or Serializer()
        self.buffer_size = buffer_size
        self.ensure_pools: tuple[str | None, ...] = tuple(ensure_pools)
        self.retry = retry
        self.retry_backoff = retry_backoff
        self.max_backoff = max_backoff
        self._counters = _Counters()
        self._log = _RateLimitedLog(LOG, log_interval)
        self._dropping: _DropSpell | None = None  # drops since the buffer was last fine
        self._queue: collections.deque[_Outgoing] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        _LIVE_SENDERS.add(self)
        self._abort = False
        self._declared: set[Address] = set()

    # --- emitting (caller's thread) ---------------------------------------------------------

    def notify(self, notification: Notification, topics: Sequence[str]) -> None:
        n = notification
        header = {
            envelope.PRIORITY: n.priority,
            envelope.EVENT_TYPE: n.event_type,
            envelope.PUBLISHER: n.publisher_id,
            envelope.CONTEXT: dict(n.ctx),
            envelope.SENT_AT: n.timestamp,
        }
        data = envelope.encode(
            self.serializer,
            Kind.NOTIFICATION,
            n.message_id,
            header,
            n.payload,
            max_size=self.transport.max_message_size,
        )
        addresses = [Address(self.exchange, f"{topic}.{n.priority}") for topic in topics]
        if not addresses:
            return
        with self._cond:
            if self._closing:
                reason = "the notifier is closed"
            elif len(self._queue) >= self.buffer_size:
                reason = (
                    f"the buffer of {self.buffer_size} is full (the transport is not keeping up)"
                )
            else:
                self._queue.append(_Outgoing(n.id, n.event_type, data, addresses))
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="rpclib-notifier", daemon=True
                    )
                    self._thread.start()
                self._cond.notify_all()
                return
            spell = self._dropping
            if spell is None:
                spell = self._dropping = _DropSpell(time.monotonic(), reason)
            spell.dropped += len(addresses)
        total = self._counters.add("dropped", len(addresses))
        self._log.log(
            ("dropped", reason),
            logging.WARNING,
            "dropping notification %s %s: %s (%d dropped so far)",
            n.event_type,
            n.id,
            reason,
            total,
        )

    # --- flushing and closing --------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue, timeout)

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop accepting, send what is buffered for up to ``timeout``, drop the rest."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
        self.flush(timeout)
        with self._cond:
            self._abort = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(1.0)
        with self._cond:
            leftover = sum(len(item.addresses) for item in self._queue)
            self._queue.clear()
            self._cond.notify_all()
            spell, self._dropping = self._dropping, None
        if spell is not None:
            LOG.warning(
                "notifier closing: %d notification message(s) were dropped in its last %.1fs (%s)",
                spell.dropped,
                time.monotonic() - spell.since,
                spell.reason,
            )
        self._log.flush()
        if leftover:
            self._counters.add("dropped", leftover)
            LOG.warning(
                "notifier closed with %d notification message(s) still unsent; dropped them",
                leftover,
            )

    @property
    def stats(self) -> NotifierStats:
        return self._counters.snapshot()

    # --- the sender thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._abort:
                    if self._closing:
                        return
                    self._cond.wait()
                if self._abort:
                    return
                item = self._queue[0]
            if not self._send(item):
                return  # aborted by close(): the item stays queued and is counted there
            with self._cond:
                if self._queue and self._queue[0] is item:
                    self._queue.popleft()
                self._cond.notify_all()
                spell = self._dropping
                if spell is not None and len(self._queue) <= self.buffer_size // 2:
                    self._dropping = None  # half empty again: the transport caught up
                else:
                    spell = None
            if spell is not None:
                self._resumed(spell)

    def _resumed(self, spell: _DropSpell) -> None:
        """Summarise a spell of drops now that the buffer has room again."""
        self._log.forget(("dropped", spell.reason))  # the next spell's first drop logs at once
        LOG.warning(
            "notifications flowing again: %d notification message(s) were dropped over %.1fs (%s)",
            spell.dropped,
            time.monotonic() - spell.since,
            spell.reason,
        )

    def _send(self, item: _Outgoing) -> bool:
        """Send ``item`` to each of its addresses, retrying transport errors.

        Returns False if close() aborted the retries before it was done.
        """
        driver = self.transport.driver
        while item.addresses:
            address = item.addresses[0]
            retries = 0
            backoff = self.retry_backoff
            while True:
                try:
                    self._declare(address)
                    driver.send(address, item.data, guarantee=Guarantee.AT_LEAST_ONCE)
                except Undeliverable as exc:
                    total = self._counters.add("undeliverable")
                    self._log.log(
                        ("undeliverable", address),
                        logging.ERROR,
                        "notification %s %s to %s is undeliverable, nobody ever listened "
                        "there (start a listener or pass ensure_pools=...): %s "
                        "(%d undeliverable so far)",
                        item.event_type,
                        item.message_id,
                        address,
                        exc.reason,
                        total,
                    )
                except TransportError as exc:
                    if not is_retryable(exc) or (self.retry is not None and retries >= self.retry):
                        self._counters.add("failed")
                        LOG.error(
                            "giving up on notification %s %s to %s after %d retries: %s",
                            item.event_type,
                            item.message_id,
                            address,
                            retries,
                            exc,
                        )
                        break
                    retries += 1
                    self._log.log(
                        ("retry", address),
                        logging.WARNING,
                        "sending notifications to %s failed (%s); retrying with backoff",
                        address,
                        exc,
                    )
                    with self._cond:
                        if self._cond.wait_for(lambda: self._abort, backoff):
                            return False
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                except Exception as exc:
                    self._counters.add("failed")
                    LOG.error(
                        "notification %s %s to %s failed unexpectedly: %s",
                        item.event_type,
                        item.message_id,
                        address,
                        exc,
                        exc_info=exc,
                    )
                else:
                    self._counters.add("sent")
                    if retries:
                        self._log.forget(("retry", address))
                        LOG.info(
                            "notifications to %s flowing again after %d retries", address, retries
                        )
                break
            item.addresses.pop(0)
        return True

    def _declare(self, address: Address) -> None:
        if not self.ensure_pools or address in self._declared:
            return
        for pool in self.ensure_pools:
            self.transport.driver.declare(address, group=pool)
        self._declared.add(address)


_LEVELS = {
    "audit": logging.INFO,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "sample": logging.DEBUG,
}


def _plain(value: Any) -> Any:
    """JSON fallback for rich payload values (datetimes, UUIDs, objects)."""
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


def render_payload(payload: Any, max_chars: int = 4096) -> str:
    """``payload`` as compact JSON (rich values as text), cut at ``max_chars``."""
    try:
        text = json.dumps(payload, separators=(",", ":"), default=_plain, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(payload)
    if len(text) > max_chars:
        text = f"{text[:max_chars]}...(+{len(text) - max_chars} chars)"
    return text


class LogDriver(NotificationDriver):
    """Writes one line per notification on logger ``rpclib.notification.<event_type>``.

    Levels: debug and sample at DEBUG, audit and info at INFO, warn at
    WARNING, error at ERROR, critical at CRITICAL. The ctx is not logged (it
    may carry credentials); the payload is rendered as compact JSON, cut at
    ``max_payload_chars``.
    """

    def __init__(self, *, max_payload_chars: int = 4096) -> None:
        self.max_payload_chars = max_payload_chars
        self._counters = _Counters()

    def notify(self, notification: Notification, topics: Sequence[str]) -> None:
        n = notification
        logger = logging.getLogger(f"rpclib.notification.{n.event_type}")
        level = _LEVELS[n.priority]
        if not logger.isEnabledFor(level):
            return
        logger.log(
            level,
            "%s %s from %s [%s]: %s",
            n.priority.upper(),
            n.event_type,
            n.publisher_id,
            n.id,
            render_payload(n.payload, self.max_payload_chars),
        )
        self._counters.add("sent")

    @property
    def stats(self) -> NotifierStats:
        return self._counters.snapshot()


class NoopDriver(NotificationDriver):
    """Discards every notification."""

    def notify(self, notification: Notification, topics: Sequence[str]) -> None:
        return None

    @property
    def enabled(self) -> bool:
        return False


RoutingConfig = Mapping[str, Any] | Sequence[Mapping[str, Any]]
"""Routing rules: see :class:`RoutingDriver`."""


@dataclass(frozen=True, slots=True)
class _Rule:
    driver: str
    event_types: tuple[str, ...] | None
    priorities: frozenset[str] | None

    def matches(self, notification: Notification) -> bool:
        if self.priorities is not None and notification.priority not in self.priorities:
            return False
        if self.event_types is None:
            return True
        return any(fnmatch.fnmatchcase(notification.event_type, p) for p in self.event_types)


_RULE_KEYS = frozenset({"event_types", "priorities"})


def parse_routing(config: RoutingConfig) -> list[_Rule]:
    """Validate routing ``config`` into rules; ValueError names what is wrong."""
    entries: list[tuple[Any, Any]] = []
    if isinstance(config, Mapping):
        for name, value in config.items():
            rules = value if isinstance(value, list | tuple) else [value]
            entries.extend((name, rule) for rule in rules)
    elif isinstance(config, list | tuple):
        for rule in config:
            if not isinstance(rule, Mapping) or not isinstance(rule.get("driver"), str):
                raise ValueError(f"a routing rule in list form needs a 'driver' name: {rule!r}")
            entries.append((rule["driver"], {k: v for k, v in rule.items() if k != "driver"}))
    else:
        raise ValueError(f"routing config must be a dict or a list, got {type(config).__name__}")
    parsed: list[_Rule] = []
    for name, rule in entries:
        if not isinstance(name, str) or not name:
            raise ValueError(f"routing: driver names are non-empty strings, got {name!r}")
        if rule is None:
            rule = {}
        if not isinstance(rule, Mapping):
            raise ValueError(f"routing rule for {name!r} must be a dict, got {rule!r}")
        unknown = sorted(set(rule) - _RULE_KEYS)
        if unknown:
            raise ValueError(
                f"routing rule for {name!r} has unknown key(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(_RULE_KEYS))})"
            )
        events = rule.get("event_types")
        priorities = rule.get("priorities")
        for key, value in (("event_types", events), ("priorities", priorities)):
            if value is not None and (
                not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value)
            ):
                raise ValueError(f"routing rule for {name!r}: {key} must be a list of strings")
        parsed.append(
            _Rule(
                name,
                None if events is None else tuple(events),
                None if priorities is None else frozenset(map(normalize_priority, priorities)),
            )
        )
    return parsed


class RoutingDriver(NotificationDriver):
    """Sends each notification to the drivers whose rules match it.

    ``config`` maps a driver name to a rule (or a list of rules, any of which
    may match)::

        {
            "messaging": {"event_types": ["instance.*", "volume.create.*"],
                          "priorities": ["info", "error"]},
            "log": {"priorities": ["error", "critical"]},
            "audit-sink": {},                     # no keys: everything
        }

    or is a list of rules each naming its driver::

        [{"driver": "messaging", "event_types": ["instance.*"]},
         {"driver": "log", "priorities": ["critical"]}]

    ``event_types`` are shell-style globs matched against the whole event type
    (``instance.*``, ``*.error``); ``priorities`` are priority names. A
    missing key matches everything. A notification reaches each matching
    driver once, and no driver if no rule matches. ``drivers`` maps each name
    used in ``config`` to its driver instance.
    """

    def __init__(self, config: RoutingConfig, drivers: Mapping[str, NotificationDriver]) -> None:
        self.rules = parse_routing(config)
        missing = sorted({r.driver for r in self.rules} - set(drivers))
        if missing:
            raise ValueError(f"routing config names driver(s) {', '.join(missing)} not given")
        self.drivers = dict(drivers)

    def notify(self, notification: Notification, topics: Sequence[str]) -> None:
        chosen: list[NotificationDriver] = []
        for rule in self.rules:
            driver = self.drivers[rule.driver]
            if driver not in chosen and rule.matches(notification):
                chosen.append(driver)
        notify_all(chosen, notification, topics)

    def flush(self, timeout: float | None = None) -> bool:
        return flush_all(list(self.drivers.values()), timeout)

    def close(self, timeout: float | None = None) -> None:
        close_all(list(self.drivers.values()), timeout)

    @property
    def stats(self) -> NotifierStats:
        return sum((d.stats for d in self.drivers.values()), NotifierStats())

    @property
    def enabled(self) -> bool:
        return any(d.enabled for d in self.drivers.values())


def flush_all(drivers: Sequence[NotificationDriver], timeout: float | None) -> bool:
    """Flush every driver within one overall ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    done = True
    for driver in drivers:
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        done = driver.flush(remaining) and done
    return done


def close_all(drivers: Sequence[NotificationDriver], timeout: float | None) -> None:
    """Close every driver within one overall ``timeout``; log (not raise) driver errors."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for driver in drivers:
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            driver.close(remaining)
        except Exception as exc:
            LOG.error("closing notification driver %r failed: %s", driver, exc, exc_info=exc)


@dataclass(frozen=True, slots=True)
class DriverSettings:
    """What the Notifier knows that built-in drivers named by string need."""

    transport: Transport | None = None
    exchange: str | None = None
    serializer: Serializer | None = None
    buffer_size: int = 1000
    ensure_pools: tuple[str | None, ...] = ()
    retry: int | None = None
    routing: RoutingConfig | None = None


BUILTIN_DRIVERS = ("messaging", "log", "noop", "routing")


def make_driver(name: str, settings: DriverSettings) -> NotificationDriver:
    """Build the built-in driver called ``name`` from ``settings``."""
    if name == "messaging":
        if settings.transport is None:
            raise ValueError("the 'messaging' notification driver needs a transport")
        return MessagingDriver(
            settings.transport,
            exchange=settings.exchange,
            serializer=settings.serializer,
            buffer_size=settings.buffer_size,
            ensure_pools=settings.ensure_pools,
            retry=settings.retry,
        )
    if name == "log":
        return LogDriver()
    if name == "noop":
        return NoopDriver()
    if name == "routing":
        if settings.routing is None:
            raise ValueError("the 'routing' notification driver needs routing=<config>")
        rules = parse_routing(settings.routing)
        names = list(dict.fromkeys(rule.driver for rule in rules))
        if "routing" in names:
            raise ValueError("a routing config cannot route to 'routing'")
        return RoutingDriver(settings.routing, {n: make_driver(n, settings) for n in names})
    raise ValueError(
        f"unknown notification driver {name!r} (built in: {', '.join(BUILTIN_DRIVERS)}; "
        "pass a NotificationDriver instance for your own)"
    )


__all__ = [
    "BUILTIN_DRIVERS",
    "PRIORITIES",
    "DriverSettings",
    "LogDriver",
    "MessagingDriver",
    "NoopDriver",
    "Notification",
    "NotificationDriver",
    "NotifierStats",
    "RoutingConfig",
    "RoutingDriver",
    "make_driver",
    "normalize_priority",
    "render_payload",
]
