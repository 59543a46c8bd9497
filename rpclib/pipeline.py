"""Pipelined at-least-once casts: sent without waiting for each confirm, accounted for.

A client made with ``pipelined=True`` hands at-least-once casts to
:meth:`~rpclib.transports.base.Driver.send_pipelined`, which may return before
the broker has stored the message. This module keeps the books for one
transport: how many such casts are still unconfirmed, and which failed. A
failure is never silent: it goes to the client's ``on_cast_error`` handler
(or the log), and the next :meth:`SendPipeline.flush` raises it.
``Transport.close()`` flushes first, so a process that closes its transport
does not lose the casts it just made.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from rpclib.exceptions import TransportError
from rpclib.transports.base import Address, Driver

LOG = logging.getLogger("rpclib.pipeline")

FailureHandler = Callable[[BaseException], None]
"""Called with the error when a pipelined send fails."""

_KEEP_FAILURES = 20
"""Failures described by the next flush (more are counted, not kept)."""


class SendPipeline:
    """In-flight pipelined sends of one transport; thread-safe."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._cond = threading.Condition()
        self._in_flight = 0
        self._failed = 0
        self._failures: list[str] = []

    @property
    def in_flight(self) -> int:
        """Sends handed to the driver and not yet confirmed or failed."""
        return self._in_flight

    def send(
        self,
        address: Address,
        data: bytes,
        *,
        what: str,
        on_failure: FailureHandler | None = None,
    ) -> None:
        """Send ``data`` at-least-once without waiting for the confirm.

        ``what`` names the message in error reports. Raises what the driver
        raises if it could not even take the message on.
        """
        with self._cond:
            self._in_flight += 1
        done = False

        def on_outcome(error: BaseException | None) -> None:
            nonlocal done
            if done:  # a driver bug must not corrupt the count
                LOG.error("pipelined send of %s reported twice (%r)", what, error)
                return
            done = True
            if error is not None:
                self._failed_send(what, error, on_failure)
            self._landed()

        try:
            self._driver.send_pipelined(address, data, on_outcome=on_outcome)
        except BaseException:
            if not done:
                done = True
                self._landed()
            raise

    def _landed(self) -> None:
        """One send left the books (confirmed, failed, or never taken on)."""
        with self._cond:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._cond.notify_all()

    def _failed_send(self, what: str, error: BaseException, handler: FailureHandler | None) -> None:
        with self._cond:
            self._failed += 1
            if len(self._failures) < _KEEP_FAILURES:
                self._failures.append(f"{what}: {error}")
        if handler is None:
            LOG.error("pipelined cast %s was not stored: %s", what, error)
            return
        try:
            handler(error)
        except Exception:
            LOG.exception("on_cast_error handler failed for %s (the error was: %s)", what, error)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every pipelined send so far is confirmed or failed.

        Raises TimeoutError if some are still unconfirmed after ``timeout``
        seconds, and TransportError naming the failures since the last flush
        (each was also reported to its client's ``on_cast_error`` or the log).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._in_flight:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(
                        f"{self._in_flight} pipelined cast(s) still unconfirmed after {timeout:g}s"
                    )
                self._cond.wait(left)
            failed, failures = self._failed, self._failures
            self._failed, self._failures = 0, []
        if failed:
            more = f" (and {failed - len(failures)} more)" if failed > len(failures) else ""
            raise TransportError(
                f"{failed} pipelined cast(s) were not stored: " + "; ".join(failures) + more
            )
