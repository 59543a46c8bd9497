"""Which etcd member to ask: the one in use until it fails, then the next healthy one.

Every request and watch of a driver asks the member in use. A member that
failed to connect (refused, reset, connect timeout: likely dead) sits out
for ``DOWN_FOR`` seconds: the driver moves on to the next member of the URL
that is not sitting out and tries it at once, without a pause, so a dead
member costs one failed connection, not one per thread or per retry. Only
when every member has failed do requests back off, and then the member
whose time out ends first is asked (sitting out never makes a cluster
unreachable). A member that stalls or refuses for a while (an election) is
left for the next one but not sent to sit out.

Threads that see the same member fail move on once between them: only a
failure of the member still in use moves the driver on, so a burst of
failures from several threads does not rotate past the healthy members back
to the dead one.
"""

from __future__ import annotations

import threading
import time

DOWN_FOR = 10.0
"""Seconds a member that could not be connected to is skipped while another is healthy."""


class Endpoints:
    """The member in use among ``count``, and which members sit out until when."""

    def __init__(self, count: int, down_for: float = DOWN_FOR) -> None:
        self.count = count
        self.down_for = down_for
        self._current = 0
        self._down_until = [0.0] * count
        self._lock = threading.Lock()

    @property
    def current(self) -> int:
        return self._current

    def failed(self, index: int, *, down: bool) -> bool:
        """Member ``index`` failed (``down``: could not connect); True if another healthy one
        is in use now (worth trying at once), False if every member failed (back off)."""
        with self._lock:
            now = time.monotonic()
            if down:
                self._down_until[index] = now + self.down_for
            if self._current == index:
                self._current = self._pick(index, now)
            return self._current != index and self._down_until[self._current] <= now

    def succeeded(self, index: int) -> None:
        """Member ``index`` answered: it no longer sits out."""
        if self._down_until[index]:
            with self._lock:
                self._down_until[index] = 0.0

    def is_down(self, index: int) -> bool:
        return self._down_until[index] > time.monotonic()

    def _pick(self, failed: int, now: float) -> int:
        """The next member after ``failed`` not sitting out, else the one back soonest."""
        order = [(failed + step) % self.count for step in range(1, self.count + 1)]
        for index in order:
            if self._down_until[index] <= now:
                return index
        return min(order, key=lambda i: self._down_until[i])
