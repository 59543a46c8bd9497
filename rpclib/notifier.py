"""Notifier: emits notifications (event type + payload at a priority) to its drivers.

A notification is fire-and-forget for the service emitting it: delivery
happens in the background (see :class:`~rpclib.notify_drivers.MessagingDriver`)
and delivery problems are counted in :attr:`Notifier.stats` and logged, never
raised. Only a notification that cannot be sent at all (ctx holding rich
values, a payload the serializer cannot encode, an unknown priority) raises,
on the caller's thread, because that is a bug in the caller.

On the wire a notification is one envelope of kind NOTIFICATION per topic,
with the priority, event type, publisher, ctx and send time in its header and
the payload as its body, sent at-least-once to
``Address(exchange, f"{topic}.{priority}")``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from rpclib import envelope
from rpclib.context import checked_ctx
from rpclib.notify_drivers import (
    PRIORITIES,
    DriverSettings,
    LogDriver,
    MessagingDriver,
    NoopDriver,
    Notification,
    NotificationDriver,
    NotifierStats,
    RoutingConfig,
    RoutingDriver,
    close_all,
    flush_all,
    make_driver,
    normalize_priority,
    notify_all,
)
from rpclib.serializer import Serializer
from rpclib.transport import Transport

DriverSpec = str | NotificationDriver | Sequence[str | NotificationDriver]
"""A driver name, a driver instance, or a list of either."""


class _Shared:
    """State every :meth:`Notifier.prepare` copy shares: the drivers and their threads."""

    def __init__(self, drivers: list[NotificationDriver]) -> None:
        self.drivers = drivers
        self.closed = False


class Notifier:
    """Emits notifications as ``publisher_id`` to ``topics`` through ``driver``.

    ``driver`` is ``"messaging"`` (through ``transport``), ``"log"``,
    ``"noop"``, ``"routing"`` (with ``routing=<config>``, see
    :class:`~rpclib.notify_drivers.RoutingDriver`), a
    :class:`~rpclib.notify_drivers.NotificationDriver` instance, or a list of
    these. ``buffer_size``, ``ensure_pools`` and ``retry`` configure the
    messaging driver built by name; ``exchange`` defaults to the transport's.

    Thread-safe. :meth:`prepare` copies share drivers, buffer and counters;
    :meth:`close` (or leaving the ``with`` block) flushes and closes them.
    """

    def __init__(
        self,
        transport: Transport | None,
        publisher_id: str,
        driver: DriverSpec = "messaging",
        topics: Sequence[str] | str = ("notifications",),
        *,
        exchange: str | None = None,
        serializer: Serializer | None = None,
        buffer_size: int = 1000,
        ensure_pools: Iterable[str | None] = (),
        retry: int | None = None,
        routing: RoutingConfig | None = None,
    ) -> None:
        self.transport = transport
        self.publisher_id = _checked_publisher(publisher_id)
        self.topics = _checked_topics(topics)
        settings = DriverSettings(
            transport=transport,
            exchange=exchange,
            serializer=serializer,
            buffer_size=buffer_size,
            ensure_pools=tuple(ensure_pools),
            retry=retry,
            routing=routing,
        )
        specs: Sequence[str | NotificationDriver] = (
            [driver] if isinstance(driver, str | NotificationDriver) else list(driver)
        )
        drivers: list[NotificationDriver] = []
        for spec in specs:
            if isinstance(spec, NotificationDriver):
                drivers.append(spec)
            elif isinstance(spec, str):
                drivers.append(make_driver(spec, settings))
            else:
                raise TypeError(
                    f"a notification driver is a name or a NotificationDriver, got {spec!r}"
                )
        self._shared = _Shared(drivers)

    # --- configuration ---------------------------------------------------------------------

    def prepare(
        self, *, publisher_id: str | None = None, topics: Sequence[str] | str | None = None
    ) -> Notifier:
        """A copy with ``publisher_id`` and/or ``topics`` replaced; it shares the drivers."""
        clone = object.__new__(Notifier)
        clone.transport = self.transport
        clone.publisher_id = (
            self.publisher_id if publisher_id is None else _checked_publisher(publisher_id)
        )
        clone.topics = self.topics if topics is None else _checked_topics(topics)
        clone._shared = self._shared
        return clone

    @property
    def drivers(self) -> tuple[NotificationDriver, ...]:
        return tuple(self._shared.drivers)

    def is_enabled(self) -> bool:
        """False if every driver discards notifications (skip building costly payloads)."""
        return any(d.enabled for d in self._shared.drivers)

    @property
    def stats(self) -> NotifierStats:
        """Counters summed over the drivers: sent, dropped, undeliverable, failed."""
        return sum((d.stats for d in self._shared.drivers), NotifierStats())

    # --- emitting ------------------------------------------------------------------------------

    def notify(
        self, priority: str, ctx: Mapping[str, Any] | None, event_type: str, payload: Any
    ) -> None:
        """Emit a notification at ``priority`` (one of PRIORITIES, or ``warning``)."""
        priority = normalize_priority(priority)
        if not isinstance(event_type, str) or not event_type:
            raise ValueError(f"event_type must be a non-empty string, got {event_type!r}")
        notification = Notification(
            message_id=envelope.new_message_id(),
            priority=priority,
            event_type=event_type,
            publisher_id=self.publisher_id,
            ctx=checked_ctx(ctx),
            payload=payload,
            timestamp=time.time(),
        )
        notify_all(self._shared.drivers, notification, self.topics)

    def audit(self, ctx: Mapping[str, Any] | None, event_type: str, payload: Any) -> None:
        """Emit at priority ``audit``."""
        self.notify("audit", ctx, event_type, payload)

    def debug(self, ctx: Mapping[str, Any] | None, event_type: str, payload: Any) -> None:
        """Emit at priority ``debug``."""
        self.notify("debug", ctx, event_type, payload)

    def info(self, ctx: Mapping[str, Any] | None, event_type: str, payload: Any) -> None:
        """Emit at priority ``info``."""
        self.notify("info", ctx, event_type, payload)

    def warn(self, ctx: Mapping[str, Any] | None, event_type: str, payload: Any) -> None:
        """Emit at priority ``warn``."""
        self.notify("warn", ctx, event_type, payload)

    warning = warn

    def error(self, ctx: Mapping[str, Any] | None, event_type: str, payload: Any) -> None:
        """Emit at priority ``error``."""
        self.notify("error", ctx, event_type, payload)

    def critical(self, ctx: Mapping[str, Any] | None, event_type: str, payload: Any) -> None:
        """Emit at priority ``critical``."""
        self.notify("critical", ctx, event_type, payload)

    def sample(self, ctx: Mapping[str, Any] | None, event_type: str, payload: Any) -> None:
        """Emit at priority ``sample`` (metering samples)."""
        self.notify("sample", ctx, event_type, payload)

    # --- delivery ------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything emitted so far was handed to the transport.

        Returns False if ``timeout`` passed first. Notifications that turned
        out undeliverable or failed count as done (see :attr:`stats`).
        """
        return flush_all(self._shared.drivers, timeout)

    def close(self, timeout: float | None = 5.0) -> None:
        """Send what is buffered (for up to ``timeout``), drop the rest, stop threads.

        Closes every copy made with :meth:`prepare`; the messaging driver
        drops (and counts) whatever is emitted afterwards.
        """
        if self._shared.closed:
            return
        self._shared.closed = True
        close_all(self._shared.drivers, timeout)

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        names = ", ".join(type(d).__name__ for d in self._shared.drivers) or "no drivers"
        return f"<Notifier {self.publisher_id!r} topics={list(self.topics)} [{names}]>"


def _checked_publisher(publisher_id: str) -> str:
    if not isinstance(publisher_id, str) or not publisher_id:
        raise ValueError(f"publisher_id must be a non-empty string, got {publisher_id!r}")
    return publisher_id


def _checked_topics(topics: Sequence[str] | str) -> tuple[str, ...]:
    names = (topics,) if isinstance(topics, str) else tuple(topics)
    if not names or not all(isinstance(t, str) and t for t in names):
        raise ValueError(f"topics must be a non-empty list of non-empty strings, got {topics!r}")
    return names


__all__ = [
    "PRIORITIES",
    "DriverSpec",
    "LogDriver",
    "MessagingDriver",
    "NoopDriver",
    "Notification",
    "NotificationDriver",
    "Notifier",
    "NotifierStats",
    "RoutingDriver",
]
