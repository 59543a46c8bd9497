"""Restoring what lived on a connection after a reconnect, retried until the broker allows it.

After a reconnect every owner (subscription, inbox, advert reader) declares
its nodes again and re-attaches its links (:meth:`Owner.restore`, blocking,
on a thread of its own). The broker may refuse either step for a while (a
declaration with other properties, missing permissions, a queue whose node
is down; RabbitMQ 4 refuses an attach by ending the session, asynchronously),
so a refused restore is retried with jittered doubling backoff between the
URL's ``retry_backoff`` and ``retry_backoff_max`` until it succeeds or the
owner is closed, never abandoned. A retry starts over: the owner ends the
session of the attempt before (no link attached twice) and re-sends its
declarations (all idempotent). A restore of an earlier connection stops when
the connection changes: the new one restores afresh.

The refusal and the recovery are logged at WARNING and reported as
:class:`ConnectionEvent` to the driver's listeners, as ``rabbit://`` does.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Protocol

from rpclib.transports.base import ConnectionEvent, ConnectionEventHandler

if TYPE_CHECKING:
    from rpclib.transports.amqp1.io_thread import Loop

LOG = logging.getLogger("rpclib.transports.amqp1")


class Owner(Protocol):
    """Something with links on the connection, set up again after a reconnect."""

    closed: bool

    def restore(self, generation: int) -> None:
        """Declare and attach again for connection ``generation`` (blocking, never on the
        I/O thread); raise if the broker refused, or the connection changed meanwhile."""

    def connection_lost(self) -> None:
        """The connection dropped (I/O thread): forget its session and links."""


class StaleConnection(Exception):
    """The connection a restore was for is gone (a new one restores again)."""


def delay(options_backoff: float, options_max: float, attempt: int) -> float:
    """Seconds before retry ``attempt`` (1, 2...): doubling from ``retry_backoff`` up to
    ``retry_backoff_max``, jittered over the upper half so retries never come in a tight
    loop nor all at once."""
    ceiling = min(options_max, options_backoff * 2 ** min(attempt - 1, 32))
    return random.uniform(ceiling / 2, ceiling)


def restore(loop: Loop, owner: Owner, generation: int) -> None:
    """Restore ``owner`` on connection ``generation`` (a thread of its own), retrying."""

    def current() -> bool:
        return loop.generation == generation and loop.up.is_set() and not loop.closed

    def wanted() -> bool:
        return not owner.closed and owner in loop.owners and current()

    def run() -> None:
        failures = 0
        while wanted():
            try:
                owner.restore(generation)
            except Exception as exc:
                if not wanted():
                    return  # closed, or the connection went: the next one restores again
                failures += 1
                wait = delay(loop.options.retry_backoff, loop.options.retry_backoff_max, failures)
                LOG.warning("amqp1 %r not restored (%s); retrying in %.1fs", owner, exc, wait)
                if failures == 1:
                    loop.report(ConnectionEvent("not restored", repr(owner), str(exc)))
                time.sleep(wait)
                continue
            if failures:
                LOG.warning("amqp1 %r restored (after %d refusals)", owner, failures)
                loop.report(ConnectionEvent("restored", repr(owner)))
            return

    threading.Thread(target=run, name=f"amqp1-restore-{generation}", daemon=True).start()


def check_current(loop: Loop, generation: int) -> None:
    """On the I/O thread, before attaching: StaleConnection if ``generation`` is gone."""
    if loop.generation != generation or loop.conn is None:
        raise StaleConnection(f"the connection changed while restoring (generation {generation})")


__all__ = [
    "ConnectionEvent",
    "ConnectionEventHandler",
    "Owner",
    "StaleConnection",
    "check_current",
    "delay",
    "restore",
]
