"""Log lines about bad messages, bounded: the first of a kind at once, then counted summaries.

A node that floods a server with garbage must not also flood its log (one
line per bad message was 95,000 ERROR lines, 15 MB, for one flood). A
:class:`SummaryLog` writes the first event of each kind as it happens; events
of the same kind within the next ``interval`` seconds are counted, not
written, and the next line of that kind (or :meth:`flush`, called when the
server or listener stops) says how many were held back. Counts are exact;
only the lines are bounded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_INTERVAL = 10.0


@dataclass
class _Kind:
    last_written: float
    held: int = 0
    level: int = logging.WARNING
    last_message: str = ""


class SummaryLog:
    """Rate-limited logging per kind of event, with exact counts of what was held back."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not interval >= 0:
            raise ValueError(f"interval must be >= 0, got {interval!r}")
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._kinds: dict[str, _Kind] = {}
        self._lock = threading.Lock()

    def log(self, level: int, kind: str, msg: str, *args: object) -> None:
        """Write ``msg % args`` now, or count it if a line of ``kind`` was written recently."""
        if not self.logger.isEnabledFor(level):
            return
        now = self._clock()
        with self._lock:
            state = self._kinds.get(kind)
            if state is not None and now - state.last_written < self.interval:
                state.held += 1
                state.level = max(state.level, level)
                state.last_message = msg % args if args else msg
                return
            held = state.held if state is not None else 0
            since = now - state.last_written if state is not None else 0.0
            self._kinds[kind] = _Kind(last_written=now)
        if held:
            self.logger.log(
                level, "%s (and %d more %s in the last %.0fs)", msg % args, held, kind, since
            )
        else:
            self.logger.log(level, msg, *args)

    def flush(self) -> None:
        """Write a summary line for every kind with events held back (on stop or close)."""
        now = self._clock()
        with self._lock:
            pending = [(kind, s) for kind, s in self._kinds.items() if s.held]
            for kind, _ in pending:
                self._kinds[kind] = _Kind(last_written=now)
        for kind, state in pending:
            self.logger.log(
                state.level,
                "%d more %s in the last %.0fs (the last: %s)",
                state.held,
                kind,
                now - state.last_written,
                state.last_message,
            )
