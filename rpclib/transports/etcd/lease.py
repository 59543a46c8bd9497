"""The driver's lease: everything that must vanish with the process hangs on it.

Consumers' ``live`` keys, claims, pushed messages, inboxes and watch echoes
are put with this lease. It is kept alive from the driver's ticker every
third of its TTL; if the process dies, etcd deletes them all ``lease_ttl``
seconds later, which is what releases a dead server's claims to the others.
If etcd reports the lease gone while the driver lives (etcd was unreachable
for longer than the TTL), a new lease is granted and the driver re-registers
what it owns (and tells its inboxes their replies may be lost).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from rpclib.exceptions import TransportError
from rpclib.transports.etcd.client import EtcdClient, LeaseNotFound

LOG = logging.getLogger("rpclib.transports.etcd")


class DriverLease:
    def __init__(self, client: EtcdClient, ttl: int, on_renewed: Callable[[int], None]) -> None:
        self.client = client
        self.ttl = ttl
        self._on_renewed = on_renewed
        self.id = client.grant(ttl)
        self._next_keepalive = time.monotonic() + ttl / 3
        self._lock = threading.Lock()

    def tick(self, now: float) -> None:
        """Keep the lease alive when due; replace it if etcd lost it."""
        if now < self._next_keepalive:
            return
        with self._lock:
            try:
                remaining = self.client.keepalive(self.id)
            except LeaseNotFound:
                remaining = 0
            except TransportError as exc:
                LOG.warning("etcd lease keepalive failed: %s", exc)
                self._next_keepalive = now + min(1.0, self.ttl / 6)
                return
            if remaining > 0:
                self._next_keepalive = now + self.ttl / 3
                return
            LOG.warning("etcd lease %x expired; granting a new one and re-registering", self.id)
            try:
                self.id = self.client.grant(self.ttl)
            except TransportError as exc:
                LOG.warning("etcd lease grant failed: %s", exc)
                self._next_keepalive = now + min(1.0, self.ttl / 6)
                return
            self._next_keepalive = now + self.ttl / 3
        self._on_renewed(self.id)

    def revoke(self) -> None:
        try:
            self.client.revoke(self.id)
        except TransportError as exc:
            LOG.debug("etcd lease revoke failed: %s", exc)
