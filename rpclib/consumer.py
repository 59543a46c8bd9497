"""Consumer: the start / stop / wait lifecycle shared by servers and listeners.

``start()`` subscribes; ``stop()`` cancels the subscriptions (no new
deliveries; in-flight messages can still be settled); ``wait()`` lets the
in-flight work finish on the :class:`~rpclib.executor.WorkerPool`, then closes
the subscriptions (anything still unsettled is redelivered elsewhere).
Subclasses say what to subscribe to and what else to do at each step.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from rpclib.executor import WorkerPool
from rpclib.transports.base import Subscription


@dataclass
class Counters:
    """Counters an operator can read; :meth:`add` is safe from driver and worker threads."""

    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


class Consumer:
    """Lifecycle of something that consumes subscriptions on a bounded pool."""

    def __init__(self, *, executor_threads: int, thread_name: str) -> None:
        if executor_threads < 1:
            raise ValueError("executor_threads must be positive")
        self._threads = executor_threads
        self._thread_name = thread_name
        self._pool = WorkerPool(executor_threads, thread_name)
        self._subscriptions: list[Subscription] = []
        self._state = "new"
        self._state_lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._state == "running"

    def start(self) -> None:
        """Subscribe and start handling. Idempotent; a stopped consumer cannot restart."""
        with self._state_lock:
            if self._state == "running":
                return
            if self._state != "new":
                raise RuntimeError(
                    f"a stopped {type(self).__name__} cannot be restarted; create a new one"
                )
            self._state = "running"
        try:
            self._on_start()
            self._subscriptions.extend(self._subscribe())
            self._on_started()
        except BaseException:
            with self._state_lock:
                self._state = "stopping"
            self.wait()
            raise

    def stop(self) -> None:
        """Stop taking new messages; in-flight work goes on. Idempotent."""
        with self._state_lock:
            if self._state != "running":
                return
            self._state = "stopping"
        for sub in self._subscriptions:
            sub.cancel()
        self._on_stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Let in-flight work finish, then release subscriptions and threads.

        Returns False if ``timeout`` passed first; unsettled messages are then
        redelivered to other consumers.
        """
        with self._state_lock:
            if self._state == "stopped":
                return True
            if self._state == "running":
                raise RuntimeError("call stop() before wait()")
            if self._state == "new":
                self._state = "stopped"
                return True
        self._before_drain()
        finished = self._pool.drain(timeout)
        for sub in self._subscriptions:
            sub.close()
        self._subscriptions.clear()
        self._on_closed()
        self._pool.shutdown(wait=finished)
        with self._state_lock:
            self._state = "stopped"
        return finished

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self.wait()

    def _subscribe(self) -> list[Subscription]:
        """Open the subscriptions (called by start()); every subclass provides it."""
        raise NotImplementedError

    def _on_start(self) -> None:
        """Before subscribing."""

    def _on_started(self) -> None:
        """After subscribing."""

    def _on_stop(self) -> None:
        """After the subscriptions were cancelled."""

    def _before_drain(self) -> None:
        """At the start of wait(), before waiting for in-flight work."""

    def _on_closed(self) -> None:
        """After the subscriptions were closed, before the pool shuts down."""
