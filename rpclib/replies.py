"""The one reply mechanism: a per-transport inbox, replies matched by message id.

Every call registers its message id, sends with the inbox address as
``reply_to`` and waits on its own event. The driver thread only reads the
envelope header to route a reply; the caller's thread decodes the body.
Progress heartbeats extend a call's deadline while its server is working, up to
the call's ``max_time`` if it has one.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from rpclib import envelope
from rpclib.envelope import Envelope, Kind
from rpclib.exceptions import (
    ConnectionLost,
    MalformedMessage,
    MessagingError,
    UnsupportedEnvelope,
)
from rpclib.transports.base import Driver, Inbox

LOG = logging.getLogger("rpclib.replies")

CastFailureHandler = Callable[[Envelope], None]


class PendingReply:
    """A call waiting for its reply."""

    __slots__ = (
        "_event",
        "disconnected",
        "envelope",
        "error",
        "last_progress",
        "out_of_time",
        "progress_seen",
    )

    def __init__(self) -> None:
        self._event = threading.Event()
        self.envelope: Envelope | None = None
        self.error: BaseException | None = None
        self.last_progress = 0.0
        self.progress_seen = False
        self.disconnected = False
        self.out_of_time = False

    def resolve(self, env: Envelope) -> None:
        self.envelope = env
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._event.set()

    def touch(self) -> None:
        self.last_progress = time.monotonic()
        self.progress_seen = True

    def wait(self, timeout: float, *, spent: float = 0.0, max_time: float | None = None) -> bool:
        """Wait for the reply; ``timeout`` restarts from every progress heartbeat.

        ``max_time`` bounds the whole wait however often the server beats (a
        handler deadlocked in a loop that still beats must not hold its caller
        forever); :attr:`out_of_time` says when that limit ended it.
        ``spent``: seconds already used (sending the request), counted against both.
        """
        now = time.monotonic()
        deadline = now + timeout - spent
        hard = math.inf if max_time is None else now + max_time - spent
        while True:
            end = min(deadline, hard)
            remaining = end - time.monotonic()
            if remaining > 0 and self._event.wait(remaining):
                return True
            if self._event.is_set():
                return True
            if hard < deadline or (hard == end and self.last_progress + timeout > hard):
                self.out_of_time = True
                return False
            extended = self.last_progress + timeout
            if extended <= deadline or extended <= time.monotonic():
                return False
            deadline = extended


@dataclass(frozen=True, slots=True)
class _CastWatch:
    handler: CastFailureHandler
    expires: float


class ReplyRouter:
    """Routes reply, progress and cast-failure envelopes arriving at one inbox."""

    MAX_CAST_WATCHES = 10_000

    def __init__(self, driver: Driver, *, max_size: int) -> None:
        self._driver = driver
        self._max_size = max_size
        self._pending: dict[bytes, PendingReply] = {}
        self._casts: OrderedDict[bytes, _CastWatch] = OrderedDict()
        self._lock = threading.Lock()
        self._inbox: Inbox | None = None

    @property
    def address(self) -> str:
        """The inbox address, opened on first use."""
        inbox = self._inbox
        if inbox is None:
            with self._lock:
                if self._inbox is None:
                    self._inbox = self._driver.open_inbox(self._on_bytes, self._on_event)
                inbox = self._inbox
        return inbox.address

    def expect(self, message_id: bytes) -> PendingReply:
        pending = PendingReply()
        self._pending[message_id] = pending
        return pending

    def forget(self, message_id: bytes) -> None:
        self._pending.pop(message_id, None)

    def watch_cast(self, message_id: bytes, handler: CastFailureHandler, ttl: float) -> None:
        """Call ``handler`` if a server reports that this cast failed."""
        with self._lock:
            self._casts[message_id] = _CastWatch(handler, time.monotonic() + ttl)
            while len(self._casts) > self.MAX_CAST_WATCHES:
                self._casts.popitem(last=False)

    def fail_all(self, error: MessagingError) -> None:
        """Fail every waiting call (the connection carrying their replies is gone)."""
        for pending in list(self._pending.values()):
            pending.fail(error)

    def _on_event(self, event: str) -> None:
        """The inbox's connection changed: mark or fail the waiting calls."""
        if event == "lost":
            LOG.warning("reply inbox lost; failing %d waiting call(s)", len(self._pending))
            self.fail_all(ConnectionLost("the connection carrying the replies was lost"))
            return
        disconnected = event == "disconnected"
        LOG.info("reply inbox %s", event)
        for pending in list(self._pending.values()):
            pending.disconnected = disconnected

    def close(self) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, None
        if inbox is not None:
            inbox.close()

    def _on_bytes(self, data: bytes) -> None:
        try:
            env = envelope.decode(data, max_size=self._max_size)
        except UnsupportedEnvelope as exc:
            # An answer in a newer envelope version: fail its call now rather than at its timeout.
            message_id = envelope.read_prefix(data).message_id
            pending = self._pending.get(message_id) if message_id is not None else None
            if pending is not None:
                pending.fail(exc)
            else:
                LOG.error("discarding a message at the reply inbox: %s", exc)
            return
        except MalformedMessage as exc:
            LOG.error("discarding malformed message at the reply inbox: %s", exc)
            return
        if env.kind is Kind.REPLY:
            pending = self._pending.get(env.message_id)
            if pending is None:
                LOG.info("late reply %s arrived after its caller gave up", env.message_id.hex())
            else:
                pending.resolve(env)
        elif env.kind is Kind.PROGRESS:
            pending = self._pending.get(env.message_id)
            if pending is not None:
                pending.touch()
        elif env.kind is Kind.CAST_FAILURE:
            self._cast_failed(env)
        else:
            LOG.error("unexpected %s envelope at the reply inbox", env.kind.name)

    def _cast_failed(self, env: Envelope) -> None:
        with self._lock:
            watch = self._casts.pop(env.message_id, None)
        if watch is None or watch.expires < time.monotonic():
            LOG.warning(
                "cast %s (%s) failed on the server; no handler is waiting for it",
                env.message_id.hex(),
                env.get(envelope.METHOD),
            )
            return
        try:
            watch.handler(env)
        except Exception:
            LOG.exception("cast failure handler raised")
