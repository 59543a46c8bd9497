"""Building blocks for notification tests: recording endpoints, gated drivers, waits."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from rpclib.exceptions import TransportError
from rpclib.listener import NotificationListener
from rpclib.notify_drivers import Notification, NotificationDriver
from rpclib.target import Target
from rpclib.transport import Transport
from rpclib.transports.base import Address, Guarantee
from rpclib.transports.memory import MemoryDriver
from rpclib.transports.url import parse_url

WAIT = 10.0
TOPIC = "notifications"


class Seen:
    """One endpoint call."""

    def __init__(
        self,
        method: str,
        ctx: dict[str, Any],
        publisher_id: str,
        event_type: str,
        payload: Any,
        metadata: dict[str, Any],
    ) -> None:
        self.method = method
        self.ctx = ctx
        self.publisher_id = publisher_id
        self.event_type = event_type
        self.payload = payload
        self.metadata = metadata

    def __repr__(self) -> str:
        return f"<Seen {self.method} {self.event_type} {self.payload!r:.60}>"


class Recorder:
    """An endpoint implementing every priority, recording each call."""

    def __init__(self, result: Any = None) -> None:
        self.calls: queue.Queue[Seen] = queue.Queue()
        self.result = result

    def _record(self, method: str, *args: Any) -> Any:
        self.calls.put(Seen(method, *args))
        return self.result

    def audit(self, *args: Any) -> Any:
        return self._record("audit", *args)

    def debug(self, *args: Any) -> Any:
        return self._record("debug", *args)

    def info(self, *args: Any) -> Any:
        return self._record("info", *args)

    def warn(self, *args: Any) -> Any:
        return self._record("warn", *args)

    def error(self, *args: Any) -> Any:
        return self._record("error", *args)

    def critical(self, *args: Any) -> Any:
        return self._record("critical", *args)

    def sample(self, *args: Any) -> Any:
        return self._record("sample", *args)

    def next(self, timeout: float = WAIT) -> Seen:
        return self.calls.get(timeout=timeout)

    def take(self, n: int, timeout: float = WAIT) -> list[Seen]:
        deadline = time.monotonic() + timeout
        return [self.calls.get(timeout=max(deadline - time.monotonic(), 0.001)) for _ in range(n)]

    def drain(self) -> list[Seen]:
        out: list[Seen] = []
        while True:
            try:
                out.append(self.calls.get_nowait())
            except queue.Empty:
                return out


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.01)


def listen(
    transport: Transport, endpoints: list[object], pool: str | None = None, **kwargs: Any
) -> NotificationListener:
    listener = NotificationListener(transport, [Target(topic=TOPIC)], endpoints, pool, **kwargs)
    listener.start()
    return listener


def declare(transport: Transport, priority: str = "info", pool: str | None = None) -> Address:
    """Make the notification queue of ``priority`` exist (so sends are not undeliverable)."""
    address = Address(transport.default_exchange, f"{TOPIC}.{priority}")
    transport.driver.declare(address, group=pool)
    return address


def send_raw(transport: Transport, data: bytes, priority: str = "info") -> None:
    address = Address(transport.default_exchange, f"{TOPIC}.{priority}")
    transport.driver.send(address, data, guarantee=Guarantee.AT_LEAST_ONCE)


class GatedDriver(MemoryDriver):
    """A memory driver whose ``send`` blocks until the test opens the gate."""

    def __init__(self, url: str) -> None:
        super().__init__(parse_url(url))
        self.entered = threading.Event()
        self.gate = threading.Event()

    def send(
        self,
        address: Address,
        body: bytes,
        *,
        guarantee: Guarantee,
        expires_at: float | None = None,
    ) -> None:
        self.entered.set()
        if not self.gate.wait(WAIT):
            raise AssertionError("the test never opened the gate")
        super().send(address, body, guarantee=guarantee, expires_at=expires_at)


class FlakyDriver(MemoryDriver):
    """A memory driver whose first ``failures`` sends raise TransportError."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(parse_url(url))
        self.failures = failures
        self.attempts = 0

    def send(
        self,
        address: Address,
        body: bytes,
        *,
        guarantee: Guarantee,
        expires_at: float | None = None,
    ) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise TransportError(f"broker unreachable (attempt {self.attempts})")
        super().send(address, body, guarantee=guarantee, expires_at=expires_at)


class RecordingDriver(NotificationDriver):
    """A custom notification driver keeping what it was given."""

    def __init__(self) -> None:
        self.got: list[tuple[Notification, tuple[str, ...]]] = []

    def notify(self, notification: Notification, topics: Sequence[str]) -> None:
        self.got.append((notification, tuple(topics)))

    @property
    def event_types(self) -> list[str]:
        return [n.event_type for n, _ in self.got]
