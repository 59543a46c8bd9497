"""Settlements (acks, requeues, deletions of handled keys), batched into few transactions.

They also ride along: a send, a reply or a claim the driver is about to make
anyway takes the pending settlements into its own transaction (both
branches), so a steady call or cast stream costs no extra write for them.

Handlers settle messages from many threads; each settlement is a small
conditional operation (e.g. "delete the message if my claim still holds").
The settler thread applies whatever has accumulated as one etcd transaction
(group commit): an idle driver settles each message at once, a busy one
settles a whole batch per round trip. Operations are idempotent, so a batch
that failed on a connection error is retried until it succeeds or the driver
closes (a settlement must not be lost while etcd restarts: a lost ack would
mean a duplicate delivery).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from rpclib.exceptions import TransportError
from rpclib.transports.etcd.client import Closed, EtcdClient, Json, Unreachable, txn

LOG = logging.getLogger("rpclib.transports.etcd")
MAX_BATCH = 100
"""Operations per transaction (etcd's default --max-txn-ops is 128)."""
PIGGYBACK = 20
"""Operations a send, reply or claim transaction carries along."""
LINGER = 0.05
"""Seconds a settlement waits for a transaction to ride on before it is sent alone."""


class Pending:
    """A settlement waiting to be applied: the operation, a callback, when it came."""

    __slots__ = ("at", "done", "op")

    def __init__(self, op: Json, done: Callable[[], None] | None) -> None:
        self.op = op
        self.done = done
        self.at = time.monotonic()


class Settler:
    def __init__(self, client: EtcdClient) -> None:
        self.client = client
        self._ops: deque[Pending] = deque()
        self._flushing = 0
        self._cond = threading.Condition()
        self._busy = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="etcd-settler", daemon=True)
        self._thread.start()

    def submit(self, op: Json, done: Callable[[], None] | None = None) -> None:
        """Apply ``op`` (a request op, usually a nested txn) soon; call ``done`` after."""
        with self._cond:
            self._ops.append(Pending(op, done))
            if len(self._ops) >= MAX_BATCH:
                self._cond.notify_all()
            # else no wake-up: the settler looks every LINGER seconds, and most
            # settlements leave earlier, on a send, reply or claim

    def take(self, limit: int = PIGGYBACK) -> list[Pending]:
        """Pending operations for a transaction the driver is about to send anyway.

        The caller puts them in both branches of its transaction, then calls
        :meth:`applied` (or :meth:`give_back` if the transaction failed).
        """
        with self._cond:
            if not self._ops:
                return []
            return [self._ops.popleft() for _ in range(min(limit, len(self._ops)))]

    def applied(self, taken: list[Pending]) -> None:
        _run_callbacks(taken)

    def give_back(self, taken: list[Pending]) -> None:
        if taken:
            with self._cond:
                self._ops.extendleft(reversed(taken))
                self._cond.notify_all()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything submitted so far has been applied (or given up on)."""
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                self._cond.wait_for(lambda: not self._ops and not self._busy, timeout)
            finally:
                self._flushing -= 1

    def stop(self) -> None:
        self.flush()
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due():
                    self._cond.wait(self._wait_time())
                if not self._ops:
                    if self._stopped:
                        return
                    continue
                batch = [self._ops.popleft() for _ in range(min(MAX_BATCH, len(self._ops)))]
                self._busy = True
            try:
                self._apply(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _due(self) -> bool:
        """Time to send what is pending (called with the lock held)."""
        if self._stopped or len(self._ops) >= MAX_BATCH:
            return True
        if not self._ops:
            return False
        return bool(self._flushing) or self._ops[0].at + LINGER <= time.monotonic()

    def _wait_time(self) -> float:
        if self._ops:
            return max(0.0, self._ops[0].at + LINGER - time.monotonic())
        return LINGER

    def _apply(self, batch: list[Pending]) -> None:
        while True:
            try:
                self.client.txn(txn([], [pending.op for pending in batch]))
                break
            except Closed:
                LOG.debug("settler: driver closed with %d settlement(s) unapplied", len(batch))
                return
            except Unreachable as exc:
                LOG.warning("settling %d message(s) failed (%s); retrying", len(batch), exc)
            except TransportError as exc:
                if len(batch) == 1:
                    LOG.error("settlement rejected by etcd, dropped: %s", exc)
                    return
                for one in batch:  # find the one etcd rejects; apply the others
                    self._apply([one])
                return
        _run_callbacks(batch)


def _run_callbacks(batch: list[Pending]) -> None:
    for pending in batch:
        if pending.done is not None:
            try:
                pending.done()
            except Exception:
                LOG.exception("settlement callback failed")
