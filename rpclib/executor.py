"""WorkerPool: a fixed set of handler threads, and a count of work in flight.

Servers and listeners hand every accepted message to one of these, never
running handlers on a driver's thread. The in-flight count lets ``wait()``
drain before closing subscriptions, so shutting down never abandons work
half done.

Work waits per key (a message's authenticated sender) and workers take it
round robin across keys (:class:`~rpclib.fairness.FairQueue`): a sender with
a backlog delays the others by about one task each, not by its backlog. Tasks
of one key start in the order they were submitted.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable

from rpclib.fairness import FairQueue

LOG = logging.getLogger("rpclib.executor")

Task = Callable[[], None]


class Admission(enum.Enum):
    """What :meth:`WorkerPool.submit_within` did with a task."""

    ACCEPTED = "accepted"
    FULL = "full"
    """``limit`` tasks of that key already wait: nothing was queued."""
    CLOSED = "closed"
    """The pool is shut down: nothing was queued."""


class WorkerPool:
    """``threads`` workers (started on first use) running submitted tasks, fairly per key."""

    def __init__(self, threads: int, name: str) -> None:
        if threads < 1:
            raise ValueError("a worker pool needs at least one thread")
        self._size = threads
        self._name = name
        self._waiting: FairQueue[Task] = FairQueue()
        self._wakeups: queue.SimpleQueue[bool] = queue.SimpleQueue()
        """One True per task in ``_waiting`` (a worker that gets one is sure to find a task),
        one False per worker to stop it."""
        self._workers: list[threading.Thread] = []
        self._inflight = 0
        self._lock = threading.Lock()
        """Guards the waiting tasks, the in-flight count and closing (taken directly on the
        hot paths: a plain lock is cheaper to enter than a Condition)."""
        self._idle = threading.Condition(self._lock)
        self._closed = False

    def submit(self, task: Task, key: Hashable = None) -> bool:
        """Run ``task`` on a worker, counted in flight until it returns.

        ``key`` (a sender) decides its place: see the module docstring. False
        (and nothing counted) when the pool is shut down.
        """
        return self._enqueue(task, key, None) is Admission.ACCEPTED

    def submit_within(self, task: Task, key: Hashable, limit: int) -> Admission:
        """Like :meth:`submit`, unless ``limit`` tasks of ``key`` already wait (FULL)."""
        return self._enqueue(task, key, limit)

    def waiting(self, key: Hashable) -> int:
        """How many tasks of ``key`` wait for a worker."""
        with self._lock:
            return self._waiting.waiting(key)

    def _enqueue(self, task: Task, key: Hashable, limit: int | None) -> Admission:
        with self._lock:
            if self._closed:
                return Admission.CLOSED
            if limit is not None and self._waiting.waiting(key) >= limit:
                return Admission.FULL
            self._waiting.push(key, task)
            self._inflight += 1
            if not self._workers:
                self._start_workers()
            self._wakeups.put(True)  # under the lock: never behind shutdown's stop tokens
        return Admission.ACCEPTED

    def hold(self, n: int = 1) -> None:
        """Count ``n`` units of buffered work in flight (released with :meth:`release`)."""
        with self._idle:
            self._inflight += n

    def release(self, n: int = 1) -> None:
        with self._lock:
            self._inflight -= n
            if self._inflight <= 0:
                self._idle.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until nothing is in flight; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._inflight > 0:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def shutdown(self, wait: bool = True) -> None:
        """Refuse new tasks; let workers finish the queued ones (joined if ``wait``)."""
        with self._idle:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers)
        for _ in workers:
            self._wakeups.put(False)
        if wait:
            for worker in workers:
                if worker is not threading.current_thread():
                    worker.join()

    def _start_workers(self) -> None:
        for i in range(self._size):
            worker = threading.Thread(target=self._run, name=f"{self._name}-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def _run(self) -> None:
        get, lock, waiting = self._wakeups.get, self._lock, self._waiting
        while get():
            with lock:
                task = waiting.pop()
            try:
                task()
            except BaseException:
                LOG.exception("task on %s raised", self._name)
            finally:
                self.release()
