"""Billing: a notification listener in its own pool keeping a usage ledger.

::

    ledger = Ledger("/var/lib/billing/ledger.sqlite")
    listener = make_listener(transport, ledger)   # pool "billing", topic "notifications"
    listener.start()
    print(format_usage(ledger.usage(start, end)))

Delivery is at-least-once and the ledger drops repeats by message id, so each
notification is counted exactly once.
"""

from __future__ import annotations

import rpclib
from services.billing.endpoint import BillingEndpoint, EndpointStats, MalformedPayload
from services.billing.ledger import EventKind, Ledger, ProjectUsage, UsageEvent
from services.billing.report import format_usage


def make_listener(
    transport: rpclib.Transport,
    ledger: Ledger,
    *,
    pool: str = "billing",
    topic: str = "notifications",
    executor_threads: int = 4,
    max_attempts: int = 5,
    policy: rpclib.Policy | None = None,
) -> rpclib.NotificationListener:
    """A listener (not started) feeding ``ledger`` from ``topic`` in consumer pool ``pool``.

    A notification that keeps failing is dead-lettered after ``max_attempts``
    deliveries. With ``policy``, notifications from senders it does not allow
    are dead-lettered uncounted.
    """
    return rpclib.NotificationListener(
        transport,
        [rpclib.Target(topic=topic)],
        [BillingEndpoint(ledger)],
        pool=pool,
        executor_threads=executor_threads,
        max_attempts=max_attempts,
        policy=policy,
    )


__all__ = [
    "BillingEndpoint",
    "EndpointStats",
    "EventKind",
    "Ledger",
    "MalformedPayload",
    "ProjectUsage",
    "UsageEvent",
    "format_usage",
    "make_listener",
]
