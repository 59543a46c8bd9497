"""A driver-level handler that acks and counts every body it gets (etcd tests)."""

from __future__ import annotations

import threading
import time

from rpclib.transports.base import Incoming


class Counter:
    """Acks each delivery and counts it by body; :meth:`wait_for` waits for distinct bodies."""

    def __init__(self, wait: float = 30.0) -> None:
        self.wait = wait
        self.seen: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def __call__(self, incoming: Incoming) -> None:
        incoming.ack()
        with self._lock:
            self.seen[incoming.body] = self.seen.get(incoming.body, 0) + 1

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + self.wait
        while len(self.seen) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.seen)} of {count} messages arrived")
            time.sleep(0.02)
