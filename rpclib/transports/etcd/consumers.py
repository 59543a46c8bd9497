"""Consumers: a subscription's stored queue (claimed by transaction) and its box.

A :class:`Consumer` is what ``listen()`` returns. It registers a ``live`` key
(with the driver's lease) so senders can push to its box, and for a topic or
server address it watches its durable queue (``q/.../``):

- it keeps the queue's stored messages (``m/ID``) and claims (``c/ID``) in
  memory from the watch;
- when it has prefetch credit and unclaimed messages, it claims a batch in one
  transaction: per message "no claim exists and the message does" -> put the
  claim (the driver's lease) and bump the message's delivery counter (an
  unwatched ``n/`` key whose version is the attempt number). Exactly one
  consumer wins each message;
- ``ack`` deletes message, claim and counter (if the claim is still ours),
  ``requeue`` deletes the claim, so the watchers see the message free again;
  a dead consumer's claims vanish with its lease and the message is claimed
  again by whoever is left (or by the same server, restarted).

Messages pushed to the consumer's box (at-most-once and fanout) need no claim:
the box is its own; the box's watch thread hands them over itself when the
consumer has credit and nothing queued (one thread hop less per call), else
the consumer's delivery thread does, in turn. Stored messages are delivered
by that thread. At most ``prefetch`` messages are unsettled per consumer;
settlements go through the driver's settler (batched).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from rpclib.exceptions import TransportError, Undeliverable
from rpclib.transports.base import Address, Guarantee, MessageHandler
from rpclib.transports.etcd import client as ops
from rpclib.transports.etcd.box import Box
from rpclib.transports.etcd.client import KV, EtcdClient, Json
from rpclib.transports.etcd.naming import Keys, QueueName
from rpclib.transports.etcd.routing import LiveConsumer, Router
from rpclib.transports.etcd.settler import Settler
from rpclib.transports.etcd.watch import Event, PrefixWatch
from rpclib.transports.etcd.wire import Message

LOG = logging.getLogger("rpclib.transports.etcd")
CLAIM_LINGER = 0.01
"""Seconds a consumer in the middle of a stream waits to claim a batch instead of one."""
STREAM_GAP = 0.05
"""A claim this soon after the previous one means messages are streaming in."""


class Host(Protocol):
    """What a consumer needs from its driver."""

    client: EtcdClient
    keys: Keys
    settler: Settler
    router: Router
    box: Box
    driver_id: str

    @property
    def lease_id(self) -> int: ...

    def make_watch(self, prefix: str, sink: QueueState, name: str) -> PrefixWatch: ...

    def dead_letter(
        self, address: str, body: bytes, reason: str, attempts: int, *, kept: bool
    ) -> None: ...

    def unregister(self, consumer: Consumer) -> None: ...


class Delivery:
    """One message handed to a handler (the driver's Incoming)."""

    __slots__ = (
        "_consumer",
        "_lock",
        "abandoned",
        "attempts",
        "body",
        "key",
        "message_id",
        "pushed",
        "settled",
    )

    @property
    def sender(self) -> str | None:
        """None: this transport does not authenticate senders yet (docs/security.md)."""
        return None

    def __init__(
        self,
        consumer: Consumer,
        body: bytes,
        attempts: int,
        key: str,
        message_id: str,
        *,
        pushed: bool,
    ) -> None:
        self._consumer = consumer
        self.body = body
        self.attempts = attempts
        self.key = key
        self.message_id = message_id
        self.pushed = pushed
        self.settled = False
        self.abandoned = False
        self._lock = threading.Lock()

    def ack(self) -> None:
        self._consumer.settle(self, "ack", "")

    def requeue(self) -> None:
        self._consumer.settle(self, "requeue", "")

    def dead_letter(self, reason: str) -> None:
        self._consumer.settle(self, "dead_letter", reason)


class QueueState:
    """The watch sink of a consumer's queue: stored messages and who claimed them."""

    def __init__(self, consumer: Consumer, prefix: str) -> None:
        self.consumer = consumer
        self.prefix = prefix

    def _split(self, key: str) -> tuple[str, str]:
        kind, _, message_id = key[len(self.prefix) :].partition("/")
        return kind, message_id

    def snapshot(self, kvs: list[KV], revision: int) -> None:
        stored: dict[str, tuple[int, bytes]] = {}
        claimed: set[str] = set()
        for kv in kvs:
            kind, message_id = self._split(kv.key)
            if kind == "m":
                stored[message_id] = (kv.create_revision, kv.value)
            elif kind == "c":
                claimed.add(message_id)
        self.consumer.reset_queue(
            {mid: value for mid, (_, value) in sorted(stored.items(), key=lambda i: i[1][0])},
            claimed,
        )

    def events(self, events: list[Event]) -> None:
        self.consumer.queue_events(
            [(e.deleted, *self._split(e.kv.key), e.kv.value) for e in events]
        )

    def connection(self, state: str) -> None:
        LOG.debug("queue watch of %s: %s", self.consumer.address, state)


class Consumer:
    """A subscription (see the module docstring)."""

    def __init__(
        self,
        host: Host,
        consumer_id: str,
        address: Address,
        group: str | None,
        handler: MessageHandler,
        prefetch: int,
    ) -> None:
        self.host = host
        self.id = consumer_id
        self.address = address
        self.handler = handler
        self.prefetch = prefetch
        keys = host.keys
        self.queue = None if address.fanout else QueueName.of(address, group)
        unique = f"{host.driver_id}-{consumer_id}"
        self.live_key = (
            keys.live_fanout(address.exchange, address.topic, unique)
            if self.queue is None
            else keys.live(self.queue, unique)
        )
        self.box = keys.delivery(host.driver_id, consumer_id, "")
        self.token = f"{host.driver_id}/{consumer_id}".encode()
        self._cond = threading.Condition()
        self._stored: dict[str, bytes] = {}
        self._claimed: set[str] = set()
        self._available: dict[str, None] = {}
        self._claiming: set[str] = set()
        self._pushed: deque[tuple[str, Message]] = deque()
        self._unsettled: set[Delivery] = set()
        self._cancelled = False
        self._closed = False
        self._watch: PrefixWatch | None = None
        self._worker = threading.Thread(
            target=self._run, name=f"etcd-consumer {address}", daemon=True
        )
        self._in_handler: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Register (declare the queue, publish the live key), read the queue, start consuming."""
        self.register(self.host.lease_id)
        if self.queue is not None:
            prefix = self.host.keys.queue_prefix(self.queue)
            self._watch = self.host.make_watch(prefix, QueueState(self, prefix), str(self.queue))
            try:
                self._watch.start()
            except TransportError:
                self._delete_live()
                raise
        self._worker.start()

    def register(self, lease: int) -> None:
        """(Re-)publish the live key with ``lease``; declare the durable queue if needed."""
        success: list[Json] = []
        if self.queue is not None:
            decl = self.host.keys.decl(self.queue)
            success.append(ops.nested([ops.absent(decl)], [ops.put(decl, b"")]))
        live = LiveConsumer(self.live_key, self.box, lease)
        success.append(ops.put(self.live_key, live.encode(), lease))
        self.host.client.txn(ops.txn([], success))

    def cancel(self) -> None:
        with self._cond:
            if self._cancelled:
                return
            self._cancelled = True
            self._cond.notify_all()
        self._delete_live()
        if self._watch is not None:
            self._watch.stop()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(30)
        with self._cond:
            pushed, self._pushed = list(self._pushed), deque()
        for key, message in pushed:
            self._give_back(key, message)

    def close(self) -> None:
        self.cancel()
        with self._cond:
            if self._closed:
                return
            self._closed = True
            unsettled, self._unsettled = list(self._unsettled), set()
            self._cond.notify_all()
        for delivery in unsettled:
            with delivery._lock:
                if delivery.settled:
                    continue
                delivery.abandoned = True
            if delivery.pushed:
                self._give_back(delivery.key, Message(delivery.body, delivery.attempts))
            else:
                self.host.settler.submit(self._release_op(delivery.message_id))
        self.host.unregister(self)
        self.host.settler.flush()

    def _delete_live(self) -> None:
        try:
            self.host.client.txn(ops.txn([], [ops.delete(self.live_key)]))
        except TransportError as exc:
            LOG.warning("could not remove consumer %s of %s: %s", self.id, self.address, exc)

    def _give_back(self, key: str, message: Message) -> None:
        """A pushed message this consumer will not handle: to another consumer, or dropped."""
        if not self.address.fanout:
            try:
                self.host.router.send(self.address, message.encode(), Guarantee.AT_MOST_ONCE)
            except (Undeliverable, TransportError) as exc:
                LOG.debug("at-most-once message for %s dropped on close: %s", self.address, exc)
        self.host.box.discard(key)

    # --- input from the watches --------------------------------------------------------

    def reset_queue(self, stored: dict[str, bytes], claimed: set[str]) -> None:
        with self._cond:
            self._stored = stored
            self._claimed = claimed
            self._available = {
                mid: None for mid in stored if mid not in claimed and mid not in self._claiming
            }
            self._cond.notify_all()

    def queue_events(self, changes: list[tuple[bool, str, str, bytes]]) -> None:
        with self._cond:
            for deleted, kind, message_id, value in changes:
                if kind == "m":
                    if deleted:
                        self._stored.pop(message_id, None)
                        self._available.pop(message_id, None)
                    else:
                        self._stored[message_id] = value
                        if message_id not in self._claimed and message_id not in self._claiming:
                            self._available[message_id] = None
                elif kind == "c":
                    if deleted:
                        self._claimed.discard(message_id)
                        if message_id in self._stored and message_id not in self._claiming:
                            self._available[message_id] = None
                    else:
                        self._claimed.add(message_id)
                        self._available.pop(message_id, None)
            self._cond.notify_all()

    def push(self, key: str, value: bytes) -> None:
        """A message arrived in this consumer's box."""
        try:
            message = Message.decode(value)
        except ValueError as exc:
            LOG.error("dropping malformed message %s: %s", key, exc)
            self.host.box.discard(key)
            return
        with self._cond:
            if self._cancelled:
                inline = None
            elif self._pushed or len(self._unsettled) >= self.prefetch:
                self._pushed.append((key, message))  # the delivery thread takes it in turn
                self._cond.notify_all()
                return
            else:  # nothing waiting and credit left: hand it over here, saving a thread hop
                inline = Delivery(
                    self,
                    message.body,
                    message.delivered + 1,
                    key,
                    key.rpartition("/")[2],
                    pushed=True,
                )
                self._unsettled.add(inline)
        if inline is None:
            self._give_back(key, message)
        elif message.expired(time.time()):
            with self._cond:
                self._unsettled.discard(inline)
                self._cond.notify_all()
            self.host.box.discard(key)
        else:
            self._deliver(inline)

    # --- delivery ------------------------------------------------------------------------

    def _run(self) -> None:
        last_claim = 0.0
        while True:
            with self._cond:
                lingered = False
                while True:
                    if self._cancelled:
                        return
                    credit = self.prefetch - len(self._unsettled)
                    if credit > 0 and self._pushed:
                        pushed: tuple[str, Message] | None = self._pushed.popleft()
                        claims: list[tuple[str, bytes]] = []
                        break
                    if credit > 0 and self._available:
                        streaming = time.monotonic() - last_claim < STREAM_GAP
                        if streaming and not lingered and len(self._available) < credit:
                            # messages are streaming in: wait a moment to claim several at once
                            lingered = True
                            self._cond.wait(CLAIM_LINGER)
                            continue
                        last_claim = time.monotonic()
                        pushed = None
                        claims = []
                        for message_id in list(self._available)[:credit]:
                            del self._available[message_id]
                            self._claiming.add(message_id)
                            claims.append((message_id, self._stored[message_id]))
                        break
                    self._cond.wait()
            if pushed is not None:
                key, message = pushed
                if message.expired(time.time()):
                    self.host.box.discard(key)
                    continue
                delivery = Delivery(
                    self,
                    message.body,
                    message.delivered + 1,
                    key,
                    key.rpartition("/")[2],
                    pushed=True,
                )
                if self._hand_over(delivery):
                    self._deliver(delivery)
                continue
            for delivery in self._claim(claims):
                if self._hand_over(delivery):
                    self._deliver(delivery)
                else:
                    self.host.settler.submit(self._release_op(delivery.message_id))

    def _hand_over(self, delivery: Delivery) -> bool:
        with self._cond:
            if self._cancelled:
                return False
            self._unsettled.add(delivery)
            return True

    def _deliver(self, delivery: Delivery) -> None:
        try:
            self.handler(delivery)
        except Exception:
            LOG.exception("handler for %s raised; the message will be redelivered", self.address)
            with delivery._lock:
                unsettled = not delivery.settled and not delivery.abandoned
            if unsettled:
                self.settle(delivery, "requeue", "")

    def _claim(self, claims: list[tuple[str, bytes]]) -> list[Delivery]:
        """Claim stored messages in one transaction; the won ones, ready to deliver."""
        assert self.queue is not None
        prefix = self.host.keys.queue_prefix(self.queue)
        lease = self.host.lease_id
        requests = [
            ops.nested(
                [ops.absent(f"{prefix}c/{mid}"), ops.exists(f"{prefix}m/{mid}")],
                [
                    ops.put(f"{prefix}c/{mid}", self.token, lease),
                    ops.put(self.host.keys.counter(self.queue, mid), b"", prev_kv=True),
                ],
                [
                    ops.range_key(f"{prefix}c/{mid}"),
                    ops.range_key(self.host.keys.counter(self.queue, mid)),
                ],
            )
            for mid, _ in claims
        ]
        riders = self.host.settler.take()  # pending settlements ride along
        try:
            settlements = [pending.op for pending in riders]
            response = self.host.client.txn(ops.txn([], requests + settlements))
        except TransportError as exc:
            self.host.settler.give_back(riders)
            LOG.warning("claiming from %s failed: %s", self.queue, exc)
            with self._cond:
                for mid, _ in claims:
                    self._claiming.discard(mid)
                    if mid in self._stored and mid not in self._claimed:
                        self._available[mid] = None
            time.sleep(self.host.client.options.retry_backoff)
            return []
        self.host.settler.applied(riders)
        won: list[Delivery] = []
        now = time.time()
        results = [r["response_txn"] for r in response.get("responses", ())[: len(claims)]]
        for (mid, value), result in zip(claims, results, strict=True):
            attempts = _claimed(result, self.token)
            if attempts is None:
                continue
            message = Message.decode(value)
            if message.expired(now):
                self.host.settler.submit(self._ack_op(mid))
                continue
            key = f"{prefix}m/{mid}"
            won.append(Delivery(self, message.body, attempts, key, mid, pushed=False))
        with self._cond:
            for mid, _ in claims:
                self._claiming.discard(mid)
                self._claimed.add(mid)
        return won

    # --- settlement ----------------------------------------------------------------------

    def settle(self, delivery: Delivery, action: str, reason: str) -> None:
        with delivery._lock:
            if delivery.abandoned:
                LOG.debug("%s of a message its closed subscription gave back: ignored", action)
                return
            if delivery.settled:
                raise RuntimeError(f"message already settled; cannot {action} it")
            delivery.settled = True
        with self._cond:
            self._unsettled.discard(delivery)
            self._cond.notify_all()
        settler = self.host.settler
        if action == "dead_letter":
            self.host.dead_letter(
                str(self.address),
                delivery.body,
                reason,
                delivery.attempts,
                kept=not delivery.pushed,
            )
            action = "ack"
        if delivery.pushed:
            if action == "ack":
                self.host.box.discard(delivery.key)
            else:  # back into this box, one delivery more
                again = f"{delivery.key}+"
                value = Message(delivery.body, delivery.attempts).encode()
                lease = self.host.lease_id
                self.host.box.discard(delivery.key, [ops.put(again, value, lease)])
        elif action == "ack":
            settler.submit(self._ack_op(delivery.message_id))
        else:
            settler.submit(self._release_op(delivery.message_id))

    def _ack_op(self, message_id: str) -> Json:
        assert self.queue is not None
        prefix = self.host.keys.queue_prefix(self.queue)
        return ops.nested(
            [ops.value_is(f"{prefix}c/{message_id}", self.token)],
            [
                ops.delete(f"{prefix}m/{message_id}"),
                ops.delete(f"{prefix}c/{message_id}"),
                ops.delete(self.host.keys.counter(self.queue, message_id)),
            ],
        )

    def _release_op(self, message_id: str) -> Json:
        assert self.queue is not None
        prefix = self.host.keys.queue_prefix(self.queue)
        return ops.nested(
            [ops.value_is(f"{prefix}c/{message_id}", self.token)],
            [ops.delete(f"{prefix}c/{message_id}")],
        )


def _claimed(result: dict[str, object], token: bytes) -> int | None:
    """The attempt number if this claim is ours (now or from our retried request), else None."""
    responses = result.get("responses", [])
    assert isinstance(responses, list)
    if result.get("succeeded"):
        prev = responses[1].get("response_put", {}).get("prev_kv")
        return int(prev.get("version", 0)) + 1 if prev else 1
    claim = ops.kvs_of(responses[0].get("response_range", {}))
    if claim and claim[0].value == token:
        counter = ops.kvs_of(responses[1].get("response_range", {}))
        return counter[0].version if counter else 1
    return None


Callback = Callable[[], None]
