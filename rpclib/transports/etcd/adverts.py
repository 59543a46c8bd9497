"""Advertisements: one key per server with a lease of its own, watched per topic.

``advertise`` keeps the advert's lease alive (or grants one, for a new TTL)
and puts the record, so every call is seen by watchers as a change, a plain
refresh included. If the server stops refreshing, etcd expires the lease and
watchers see the delete: ``(server, None)``. ``withdraw`` deletes the record
and revokes its lease. etcd rounds lease TTLs up to whole seconds and to its
minimum (about 2 s with default election settings).
"""

from __future__ import annotations

import logging
import math
import threading

from rpclib.exceptions import TransportError
from rpclib.transports.base import Address, AdvertHandler
from rpclib.transports.etcd import client as ops
from rpclib.transports.etcd.client import KV, EtcdClient
from rpclib.transports.etcd.naming import Keys, unname
from rpclib.transports.etcd.watch import Event

LOG = logging.getLogger("rpclib.transports.etcd")


class Advertiser:
    """The adverts one driver publishes."""

    def __init__(self, client: EtcdClient, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._leases: dict[str, tuple[int, int]] = {}  # key -> (lease, ttl)
        self._lock = threading.Lock()

    def advertise(self, address: Address, body: bytes, ttl: float) -> None:
        if not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0):
            raise ValueError(f"advert ttl must be a positive finite number, got {ttl!r}")
        key = self.keys.advert(address)
        seconds = max(1, math.ceil(ttl))
        with self._lock:
            lease, known_ttl = self._leases.get(key, (0, 0))
            stale = 0
            if lease and known_ttl == seconds:
                try:
                    alive = self.client.keepalive(lease) > 0
                except TransportError:
                    alive = False
                if not alive:
                    stale, lease = lease, 0
            elif lease:
                stale, lease = lease, 0
            if not lease:
                lease = self.client.grant(seconds)
            self.client.txn(ops.txn([], [ops.put(key, body, lease)]))
            self._leases[key] = (lease, seconds)
        if stale:
            self.client.revoke(stale)

    def withdraw(self, address: Address) -> None:
        key = self.keys.advert(address)
        with self._lock:
            lease, _ = self._leases.pop(key, (0, 0))
        self.client.txn(ops.txn([], [ops.delete(key)]))
        if lease:
            self.client.revoke(lease)

    def withdraw_all(self) -> None:
        with self._lock:
            owned = list(self._leases.items())
            self._leases.clear()
        for key, (lease, _) in owned:
            try:
                self.client.txn(ops.txn([], [ops.delete(key)]))
                self.client.revoke(lease)
            except TransportError as exc:
                LOG.warning("could not withdraw advert %s: %s", key, exc)


class AdvertSink:
    """The watch sink of one topic's adverts: reports changes to the handler."""

    def __init__(self, prefix: str, handler: AdvertHandler) -> None:
        self.prefix = prefix + "s/"
        self.handler = handler
        self._known: dict[str, bytes] = {}

    def _server(self, key: str) -> str | None:
        return unname(key[len(self.prefix) :]) if key.startswith(self.prefix) else None

    def _report(self, server: str, body: bytes | None) -> None:
        try:
            self.handler(server, body)
        except Exception:
            LOG.exception("advert handler failed")

    def snapshot(self, kvs: list[KV], revision: int) -> None:
        current = {}
        for kv in kvs:
            server = self._server(kv.key)
            if server is not None:
                current[server] = kv.value
        for server in set(self._known) - set(current):
            self._report(server, None)
        for server, body in current.items():
            if self._known.get(server) != body:
                self._report(server, body)
        self._known = current

    def events(self, events: list[Event]) -> None:
        for event in events:
            server = self._server(event.kv.key)
            if server is None:
                continue
            if event.deleted:
                self._known.pop(server, None)
                self._report(server, None)
            else:
                self._known[server] = event.kv.value
                self._report(server, event.kv.value)

    def connection(self, state: str) -> None:
        LOG.debug("advert watch %s: %s", self.prefix, state)
