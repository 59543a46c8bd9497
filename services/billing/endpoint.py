"""The billing notification endpoint: validates instance events and records them.

rpclib acknowledges a notification after :meth:`BillingEndpoint.info`
returns, and ``info`` returns after the ledger committed the event: delivery
is at-least-once, the ledger drops repeats by message id, so each event is
counted exactly once. A malformed payload raises :class:`MalformedPayload`
naming the field; rpclib requeues it and, after ``max_attempts``, dead-letters
it with that reason, so nothing is dropped silently.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import rpclib
from services.billing.ledger import EventKind, Ledger, UsageEvent

_TIME_FIELDS = {
    EventKind.CREATE_END: ("launched_at",),
    EventKind.DELETE_END: ("deleted_at",),
    EventKind.EXISTS: ("audit_period_start", "audit_period_end"),
}


class MalformedPayload(ValueError):
    """A billing notification whose payload lacks a field or has one of the wrong type."""

    retryable = False  # redelivering the same bytes cannot fix them: dead-letter at once

    def __init__(self, event_type: str, field: str, problem: str) -> None:
        super().__init__(f"{event_type} payload field {field!r}: {problem}")
        self.event_type = event_type
        self.field = field


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """What the endpoint did with the notifications it was given."""

    recorded: int = 0
    duplicates: int = 0
    ignored: int = 0


def parse_event(event_type: str, payload: Any) -> UsageEvent:
    """The :class:`UsageEvent` in ``payload``; MalformedPayload names the bad field."""
    kind = EventKind(event_type)
    if not isinstance(payload, Mapping):
        raise MalformedPayload(event_type, "payload", f"expected a map, got {_kind_of(payload)}")
    fields: dict[str, Any] = {
        "instance_uuid": _uuid(event_type, payload),
        "project_id": _text(event_type, payload, "project_id"),
    }
    for name in ("vcpus", "memory_mb", "disk_gb"):
        fields[name] = _count(event_type, payload, name)
    for name in _TIME_FIELDS[kind]:
        fields[name] = _time(event_type, payload, name)
    if kind is EventKind.EXISTS and not fields["audit_period_start"] < fields["audit_period_end"]:
        raise MalformedPayload(event_type, "audit_period_end", "must be after audit_period_start")
    return UsageEvent(kind=kind, **fields)


class BillingEndpoint:
    """Records ``instance.create.end``, ``instance.delete.end`` and ``instance.exists``.

    Other ``instance.*`` events are acknowledged and counted as ignored.
    Safe to call from the listener's pool threads.
    """

    filter_rule = rpclib.NotificationFilter(event_type=r"^instance\.")

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._stats = EndpointStats()
        self._lock = threading.Lock()

    @property
    def stats(self) -> EndpointStats:
        """A snapshot of the counters."""
        with self._lock:
            return self._stats

    def info(
        self,
        ctx: Mapping[str, Any],
        publisher_id: str,
        event_type: str,
        payload: Any,
        metadata: Mapping[str, Any],
    ) -> None:
        """Record one notification; returns once the ledger committed it."""
        if event_type not in _KNOWN:
            self._count("ignored")
            return
        message_id = metadata.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise ValueError(f"{event_type} from {publisher_id}: metadata has no message_id")
        event = parse_event(event_type, payload)
        self._count("recorded" if self.ledger.record(message_id, event) else "duplicates")

    def _count(self, name: str) -> None:
        with self._lock:
            self._stats = replace(self._stats, **{name: getattr(self._stats, name) + 1})


_KNOWN = frozenset(kind.value for kind in EventKind)


def _value(event_type: str, payload: Mapping[str, Any], name: str) -> Any:
    if name not in payload:
        raise MalformedPayload(event_type, name, "missing")
    return payload[name]


def _kind_of(value: Any) -> str:
    return f"{value!r:.60} ({type(value).__name__})"


def _uuid(event_type: str, payload: Mapping[str, Any]) -> str:
    value = _value(event_type, payload, "instance_uuid")
    return (
        str(value) if isinstance(value, uuid.UUID) else _text(event_type, payload, "instance_uuid")
    )


def _text(event_type: str, payload: Mapping[str, Any], name: str) -> str:
    value = _value(event_type, payload, name)
    if not isinstance(value, str) or not value:
        problem = f"expected a non-empty string, got {_kind_of(value)}"
        raise MalformedPayload(event_type, name, problem)
    return value


def _count(event_type: str, payload: Mapping[str, Any], name: str) -> int:
    value = _value(event_type, payload, name)
    if type(value) is not int or value < 0:
        raise MalformedPayload(
            event_type, name, f"expected a non-negative integer, got {_kind_of(value)}"
        )
    return value


def _time(event_type: str, payload: Mapping[str, Any], name: str) -> dt.datetime:
    value = _value(event_type, payload, name)
    if not isinstance(value, dt.datetime):
        raise MalformedPayload(event_type, name, f"expected a datetime, got {_kind_of(value)}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise MalformedPayload(event_type, name, f"naive datetime {value.isoformat()}, need UTC")
    return value
