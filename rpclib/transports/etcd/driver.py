"""EtcdDriver: rpclib's transport contract on etcd (see docs/transports/etcd.md)."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable

from rpclib.exceptions import TransportError, Undeliverable
from rpclib.transports.base import (
    Address,
    AdvertHandler,
    DeadLetter,
    Driver,
    Guarantee,
    Inbox,
    InboxEventHandler,
    InboxHandler,
    MessageHandler,
    Subscription,
)
from rpclib.transports.etcd import client as ops
from rpclib.transports.etcd.adverts import Advertiser, AdvertSink
from rpclib.transports.etcd.box import Box, EtcdInbox
from rpclib.transports.etcd.client import (
    AuthenticationFailed,
    EtcdClient,
    NotAuthorized,
    TLSRefused,
)
from rpclib.transports.etcd.consumers import Consumer, QueueState
from rpclib.transports.etcd.lease import DriverLease
from rpclib.transports.etcd.naming import Keys, QueueName, name, unname
from rpclib.transports.etcd.options import EtcdOptions, parse_options
from rpclib.transports.etcd.routing import Router
from rpclib.transports.etcd.settler import Settler
from rpclib.transports.etcd.watch import PrefixWatch, WatchSink
from rpclib.transports.etcd.wire import Message
from rpclib.transports.url import TransportURL

LOG = logging.getLogger("rpclib.transports.etcd")
TICK = 0.25
TRIM_TICKS = 2
"""Ticks after the last dead letter written on which ``dead_letter_limit`` is enforced (one
count per tick while they flow; the second tick catches the settler's last batch)."""
TRANSIENT_DEAD_LETTERS = 1000
"""Dead letters of at-most-once messages each driver keeps in memory (never in etcd)."""
"""Seconds between the ticker's rounds (lease keepalive, watch liveness)."""


class _AdvertWatch:
    """The Subscription returned by watch_adverts."""

    def __init__(self, driver: EtcdDriver, watch: PrefixWatch) -> None:
        self._driver = driver
        self.watch = watch

    def cancel(self) -> None:
        self.watch.stop()
        self._driver._forget_watch(self.watch)

    def close(self) -> None:
        self.cancel()


class EtcdDriver(Driver):
    """The ``etcd[s]://[user:password@]host:2379[,host2:2379]/prefix`` transport.

    Building it authenticates (with credentials), reads its own box once (so
    missing credentials or a role without access to the prefix fail here,
    not at the first send) and grants the driver's lease. With credentials
    the driver's id starts with the user (``USER.RANDOM``), so a role can be
    granted a principal's private keys by prefix (see access.py).
    """

    def __init__(self, url: TransportURL) -> None:
        super().__init__(url)
        self.options: EtcdOptions = parse_options(url)
        self.keys = Keys(self.options.prefix)
        credentials = self.options.credentials
        self.principal = credentials.user if credentials is not None else None
        owner = "" if self.principal is None else f"{name(self.principal)}."
        self.driver_id = f"{owner}{uuid.uuid4().hex[:16]}"
        self._owner = owner
        self.client = EtcdClient(self.options, str(url))
        self._lock = threading.Lock()
        self._closed = False
        self._ids = itertools.count(1)
        try:
            self.client.authenticate()
            own = self.keys.box_prefix(self.driver_id)
            self.client.call("kv/range", {**ops.range_prefix(own)["request_range"], "limit": "1"})
            self._lease = DriverLease(self.client, self.options.lease_ttl, self._lease_renewed)
        except (AuthenticationFailed, NotAuthorized, TLSRefused):
            self.client.close()
            raise  # each names the URL and what to fix
        except TransportError as exc:
            self.client.close()
            raise TransportError(f"cannot reach etcd at {url}: {exc}") from exc
        self.settler = Settler(self.client)
        self.router = Router(self.client, self.keys, self.settler, owner, lambda: self.lease_id)
        self.box = Box(self.client, self.keys, self.settler, self.driver_id, lambda: self.lease_id)
        self._box_watch: PrefixWatch | None = None
        self._consumers: dict[str, Consumer] = {}
        self._watches: list[PrefixWatch] = []
        self._advertiser = Advertiser(self.client, self.keys)
        self._dead_lease: tuple[int, float] | None = None
        self._trim_ticks = 0
        """Ticks left on which to trim the dead letters (set by each one written)."""
        self._transient_dead: deque[tuple[int, DeadLetter]] = deque(maxlen=TRANSIENT_DEAD_LETTERS)
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="etcd-ticker", daemon=True)
        self._ticker.start()

    # --- shared with consumers -----------------------------------------------------------

    @property
    def lease_id(self) -> int:
        return self._lease.id

    def make_watch(self, prefix: str, sink: WatchSink | QueueState, name: str) -> PrefixWatch:
        watch = PrefixWatch(self.client, prefix, sink, name=name, echo=self._echo)
        with self._lock:
            self._watches.append(watch)
        return watch

    def _forget_watch(self, watch: PrefixWatch) -> None:
        with self._lock:
            if watch in self._watches:
                self._watches.remove(watch)

    def unregister(self, consumer: Consumer) -> None:
        with self._lock:
            self._consumers.pop(consumer.id, None)
        self.box.remove_consumer(consumer.id)
        if consumer._watch is not None:
            self._forget_watch(consumer._watch)

    def dead_letter(
        self, address: str, body: bytes, reason: str, attempts: int, *, kept: bool
    ) -> None:
        """Set a message aside with ``reason``, bounded, never waiting for etcd.

        ``kept`` (it came from an at-least-once queue): stored under the prefix
        with its own long lease (``dead_letter_ttl``), written by the settler
        in the same batch as the ack that follows; past ``dead_letter_limit``
        the ticker deletes the oldest. Otherwise (at-most-once: nothing was
        promised) it is kept only in this driver's memory, the last
        :data:`TRANSIENT_DEAD_LETTERS` of them, and never written to etcd.
        """
        if not kept:
            with self._lock:
                self._transient_dead.append(
                    (time.time_ns(), DeadLetter(address, body, reason, attempts))
                )
            return
        record = json.dumps(
            {"address": address, "reason": reason, "attempts": attempts, "body": ops.b64(body)}
        ).encode()
        stamp = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        key = f"{self.keys.dead_prefix()}{self._owner}{stamp}"
        try:
            lease = self._dead_letter_lease()
        except TransportError as exc:
            LOG.error("could not store dead letter from %s (%s): %s", address, reason, exc)
            return
        self.settler.submit(ops.put(key, record, lease))
        with self._lock:
            self._trim_ticks = TRIM_TICKS

    def _trim_dead_letters(self) -> None:
        """Delete the oldest stored dead letters beyond ``dead_letter_limit`` (ticker thread).

        A driver logged in as a principal trims its own (``dead/PRINCIPAL.``, all its
        role may touch there), so the bound holds per principal; keys under one
        prefix sort by time."""
        prefix = self.keys.dead_prefix() + self._owner
        counted = self.client.call(
            "kv/range", {**ops.range_prefix(prefix)["request_range"], "count_only": True}
        )
        excess = int(counted.get("count", 0)) - self.options.dead_letter_limit
        if excess <= 0:
            return
        oldest = self.client.call(
            "kv/range",
            {**ops.range_prefix(prefix, keys_only=True)["request_range"], "limit": str(excess)},
        )
        keys = [kv.key for kv in ops.kvs_of(oldest)]
        if keys:
            self.client.call(
                "kv/deleterange",
                {"key": ops.b64(keys[0]), "range_end": ops.b64(keys[-1] + "\0")},
            )
            LOG.info("deleted the %d oldest dead letters (over dead_letter_limit)", len(keys))

    def _dead_letter_lease(self) -> int:
        """One lease for a while of dead letters, replaced when half its TTL is gone."""
        now = time.monotonic()
        ttl = self.options.dead_letter_ttl
        with self._lock:
            if self._dead_lease is not None and now < self._dead_lease[1]:
                return self._dead_lease[0]
        lease = self.client.grant(ttl)
        with self._lock:
            self._dead_lease = (lease, now + ttl / 2)
        return lease

    def _echo(self, key: str) -> None:
        self.client.call(
            "kv/put",
            ops.put(key, b"%d" % time.time_ns(), self.lease_id)["request_put"],
            deadline=time.monotonic() + self.options.watch_timeout,
        )

    def _tick(self) -> None:
        options = self.options
        while not self._stop.wait(TICK):
            now = time.monotonic()
            self._lease.tick(now)
            with self._lock:
                watches = list(self._watches)
            for watch in watches:
                watch.check(now, options.watch_idle, options.watch_timeout)
            with self._lock:
                trim = self._trim_ticks > 0
                self._trim_ticks = max(0, self._trim_ticks - 1)
            if trim:
                try:
                    self._trim_dead_letters()
                except TransportError as exc:
                    LOG.warning("could not trim the dead letters to dead_letter_limit: %s", exc)
                    with self._lock:
                        self._trim_ticks = max(self._trim_ticks, 1)

    def _lease_renewed(self, lease: int) -> None:
        """etcd lost our lease: put back what hung on it; inboxes' replies may be lost."""
        with self._lock:
            consumers = list(self._consumers.values())
        for consumer in consumers:
            try:
                consumer.register(lease)
            except TransportError as exc:
                LOG.warning("re-registering consumer of %s failed: %s", consumer.address, exc)
        for inbox in self.box.inboxes():
            try:
                inbox.register(lease)
            except TransportError as exc:
                LOG.warning("re-opening inbox %s failed: %s", inbox.id, exc)
            inbox.event("lost")

    # --- the contract ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"the etcd driver for {self.url} is closed")

    def send(
        self,
        address: Address,
        body: bytes,
        *,
        guarantee: Guarantee,
        expires_at: float | None = None,
        on_undeliverable: Callable[[Undeliverable], None] | None = None,
    ) -> None:
        self._check_open()
        self.router.send(
            address, Message(body, 0, expires_at).encode(), guarantee, expires_at=expires_at
        )

    def listen(
        self,
        address: Address,
        handler: MessageHandler,
        *,
        group: str | None = None,
        prefetch: int = 64,
    ) -> Subscription:
        self._check_open()
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        if group is not None and (address.fanout or address.server is not None):
            raise ValueError(f"group={group!r} applies to topics, not to {address}")
        self._ensure_box()
        consumer = Consumer(self, f"c{next(self._ids)}", address, group, handler, prefetch)
        with self._lock:
            self._consumers[consumer.id] = consumer
        self.box.add_consumer(consumer.id, consumer.push)
        try:
            consumer.start()
        except BaseException:
            self.unregister(consumer)
            raise
        return consumer

    def declare(self, address: Address, group: str | None = None) -> None:
        self._check_open()
        decl = self.keys.decl(QueueName.of(address, group))
        self.client.txn(ops.txn([], [ops.nested([ops.absent(decl)], [ops.put(decl, b"")])]))

    def open_inbox(self, handler: InboxHandler, on_event: InboxEventHandler | None = None) -> Inbox:
        self._check_open()
        self._ensure_box()
        inbox = EtcdInbox(self.box, f"i{next(self._ids)}", handler, on_event)
        self.box.add_inbox(inbox)
        inbox.register(self.lease_id)
        return inbox

    def send_to_inbox(self, inbox_address: str, body: bytes) -> None:
        self._check_open()
        self.box.send_to_inbox(inbox_address, body, uuid.uuid4().hex)

    def advertise(self, address: Address, body: bytes, ttl: float) -> None:
        self._check_open()
        self._advertiser.advertise(address, body, ttl)

    def withdraw(self, address: Address) -> None:
        self._check_open()
        self._advertiser.withdraw(address)

    def watch_adverts(self, exchange: str, topic: str, handler: AdvertHandler) -> Subscription:
        self._check_open()
        prefix = self.keys.advert_prefix(exchange, topic)
        watch = self.make_watch(prefix, AdvertSink(prefix, handler), f"adverts {exchange}/{topic}")
        try:
            watch.start()
        except BaseException:
            self._forget_watch(watch)
            raise
        return _AdvertWatch(self, watch)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Stored dead letters and this driver's at-most-once ones, oldest first."""
        self._check_open()
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        prefix = self.keys.dead_prefix()
        response = self.client.call(
            "kv/range",
            {**ops.range_prefix(prefix)["request_range"], "limit": str(limit)},
        )
        letters: list[tuple[int, DeadLetter]] = []
        for kv in ops.kvs_of(response):
            record = json.loads(kv.value)
            letter = DeadLetter(
                record["address"],
                ops.unb64(record["body"]),
                record["reason"],
                record["attempts"],
            )
            stamp = kv.key[len(prefix) :].rsplit(".", 1)[-1]  # past PRINCIPAL., if any
            letters.append((int(stamp.split("-", 1)[0]), letter))
        with self._lock:
            letters += self._transient_dead
        letters.sort(key=lambda item: item[0])
        return [letter for _, letter in letters[:limit]]

    def advertised_topics(self, exchange: str, *, listen: float = 12.0) -> list[str]:
        """The topics of ``exchange`` with an advert now (adverts live on leases: no wait)."""
        self._check_open()
        base = f"{self.keys.prefix}adv/{name(exchange)}/"  # as Keys.advert_prefix lays it out
        response = self.client.call(
            "kv/range", ops.range_prefix(base, keys_only=True)["request_range"]
        )
        topics = {unname(kv.key[len(base) :].split("/", 1)[0]) for kv in ops.kvs_of(response)}
        return sorted(topics)

    def purge_dead_letters(self, keys: list[str] | None = None) -> int:
        """Delete the stored dead letters with ``keys`` (every one with None); how many went.

        This driver's own at-most-once dead letters (kept in its memory only) go too.
        """
        self._check_open()
        prefix = self.keys.dead_prefix()
        wanted = None if keys is None else list(keys)
        count = 0
        kvs, _ = self.client.range_prefix(prefix)
        for kv in kvs:
            if wanted is not None:
                record = json.loads(kv.value)
                key = DeadLetter(
                    record["address"],
                    ops.unb64(record["body"]),
                    record["reason"],
                    record["attempts"],
                ).key
                if key not in wanted:
                    continue
                wanted.remove(key)
            self.client.call("kv/deleterange", {"key": ops.b64(kv.key)})
            count += 1
        with self._lock:
            kept = [
                item
                for item in self._transient_dead
                if wanted is not None and item[1].key not in wanted
            ]
            count += len(self._transient_dead) - len(kept)
            self._transient_dead.clear()
            self._transient_dead.extend(kept)
        return count

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            consumers = list(self._consumers.values())
        for consumer in consumers:
            consumer.close()
        for inbox in self.box.inboxes():
            inbox.close()
        self._advertiser.withdraw_all()
        self._stop.set()
        with self._lock:
            watches, self._watches = list(self._watches), []
        if self._box_watch is not None:
            watches.append(self._box_watch)
        for watch in watches:
            watch.stop()
        self.settler.stop()
        self._lease.revoke()
        self.client.close()

    def _ensure_box(self) -> None:
        with self._lock:
            if self._box_watch is not None:
                return
            watch = PrefixWatch(
                self.client,
                self.box.prefix,
                self.box,
                name=f"box {self.driver_id}",
                echo=self._echo,
                filters=("NODELETE",),
            )
            self._box_watch = watch
            self._watches.append(watch)
        watch.start()

    def __repr__(self) -> str:
        return f"<EtcdDriver {self.url} {self.driver_id}>"
