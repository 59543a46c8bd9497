"""FairQueue: work waiting per sender, served round robin across senders.

A server's transport queue is FIFO and shared by every caller, so a node that
floods it puts its whole backlog ahead of everyone else's requests. A server
takes deliveries off the transport cheaply and keeps them here, one FIFO per
key (the authenticated sender); workers take the next item round robin across
the keys with work waiting. A caller's request then waits for about one item
per other active sender, not for another sender's backlog. Each key's items
come out in the order they went in, so one sender's order is kept.

Not thread-safe by itself: the owner (:class:`rpclib.executor.WorkerPool`)
holds its lock around every call.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Items per key; :meth:`pop` serves the keys with items round robin."""

    __slots__ = ("_queues", "_ring")

    _KEEP_IDLE = 256
    """Empty per-key queues kept for reuse (a key that keeps up empties its queue after
    every item; reusing it saves an allocation per message); beyond this many keys,
    empty ones are dropped."""

    def __init__(self) -> None:
        self._queues: dict[Hashable, deque[T]] = {}
        self._ring: deque[Hashable] = deque()
        """Keys with items, in the order they are served next."""

    def waiting(self, key: Hashable) -> int:
        """How many items of ``key`` wait."""
        queue = self._queues.get(key)
        return 0 if queue is None else len(queue)

    def push(self, key: Hashable, item: T) -> None:
        """Add ``item`` after the items of ``key`` (a new key is served after the others)."""
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        if not queue:
            self._ring.append(key)
        queue.append(item)

    def pop(self) -> T:
        """The oldest item of the key whose turn it is; that key goes to the back of the ring.

        Raises IndexError if nothing waits.
        """
        key = self._ring.popleft()
        queue = self._queues[key]
        item = queue.popleft()
        if queue:
            self._ring.append(key)
        elif len(self._queues) > self._KEEP_IDLE:
            del self._queues[key]
        return item
