"""WorkerPool: a fixed set of handler threads, and a count of work in flight.

Servers and listeners hand every accepted message to one of these, never
running handlers on a driver's thread. The in-flight count lets ``wait()``
drain before closing subscriptions, so shutting down never abandons work
half done.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

LOG = logging.getLogger("rpclib.executor")

Task = Callable[[], None]


class WorkerPool:
    """``threads`` workers (started on first use) running submitted tasks in order."""

    def __init__(self, threads: int, name: str) -> None:
        if threads < 1:
            raise ValueError("a worker pool needs at least one thread")
        self._size = threads
        self._name = name
        self._tasks: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._inflight = 0
        self._idle = threading.Condition()
        self._closed = False

    def submit(self, task: Task) -> bool:
        """Run ``task`` on a worker, counted in flight until it returns.

        False (and nothing counted) when the pool is shut down.
        """
        with self._idle:
            if self._closed:
                return False
            self._inflight += 1
            if not self._workers:
                self._start_workers()
        self._tasks.put(task)
        return True

    def hold(self, n: int = 1) -> None:
        """Count ``n`` units of buffered work in flight (released with :meth:`release`)."""
        with self._idle:
            self._inflight += n

    def release(self, n: int = 1) -> None:
        with self._idle:
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
            self._tasks.put(None)
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
        while True:
            task = self._tasks.get()
            if task is None:
                return
            try:
                task()
            except BaseException:
                LOG.exception("task on %s raised", self._name)
            finally:
                self.release()
