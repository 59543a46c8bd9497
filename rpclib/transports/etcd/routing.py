"""Sending: which keys a message goes to, decided and written in one transaction.

A sender caches, per topic, the declared queues (``decl/``) and the live
consumers (``live/``) it last read, with the revision it read them at. Every
send is one transaction that

- compares "nothing was created under ``decl/`` or ``live/`` of this topic
  after that revision" (so a queue or consumer that appeared since is never
  missed: the transaction then fails, returns both ranges, and the send is
  retried with them), and
- writes the message, guarded per target:

  * at-least-once to a topic or server: one stored copy per declared queue
    (``q/.../m/ID``), all in a nested transaction guarded by "the first copy
    does not exist yet", so the sender's own retry after an ambiguous failure
    never stores a message twice;
  * at-most-once to a topic or server: pushed to one live consumer per group
    (round robin) into that consumer's box, guarded by "that consumer is
    still live" (a consumer that left makes the sender re-read and pick
    another);
  * fanout (either guarantee): pushed to every live fanout listener's box.

Pushes carry the sender's own lease (etcd lets a user attach a key to a
lease only if it may write every key on it, and a sender may not write the
receiver's other keys) and are not guarded by "not there yet": that compare
would need read access to the receiver's box. A stored copy's ID starts with
the sender's principal, so its "not there yet" guard reads only its own keys.

Nothing routable raises Undeliverable naming the address. A steady stream
of messages to one topic costs exactly one round trip each.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rpclib.exceptions import TransportError, Undeliverable
from rpclib.transports.base import Address, Guarantee
from rpclib.transports.etcd import client as ops
from rpclib.transports.etcd.client import (
    KV,
    EtcdClient,
    Json,
    SendTimedOut,
    TLSRefused,
    Unreachable,
    kvs_of,
    revision_of,
)
from rpclib.transports.etcd.naming import RPC_GROUP, Keys, QueueName, unname
from rpclib.transports.etcd.settler import Settler

MAX_TXN_BYTES = 1_000_000
"""Split a send into several transactions above this much payload (etcd's request limit
defaults to 1.5 MiB; values travel base64-encoded)."""
MAX_TXN_OPS = 100
ROUTE_RETRIES = 8

RouteKey = tuple[str, "str | None"]  # ("g", group) / ("s", server) / ("f", None)


@dataclass(frozen=True, slots=True)
class LiveConsumer:
    """A consumer listening now: its ``live`` key, where to push, and its owner's lease."""

    key: str
    box: str
    lease: int

    def encode(self) -> bytes:
        return f"{self.lease} {self.box}".encode()

    @classmethod
    def decode(cls, key: str, value: bytes) -> LiveConsumer:
        lease, _, box = value.decode().partition(" ")
        return cls(key, box, int(lease))


@dataclass
class TopicView:
    """What a sender knows about one topic, as of ``revision`` (-1: must re-read)."""

    revision: int = -1
    declared: set[RouteKey] = field(default_factory=set)
    live: dict[RouteKey, list[LiveConsumer]] = field(default_factory=dict)


def _route_of(rest: str) -> tuple[RouteKey, str]:
    """Parse ``g/GROUP[/CONSUMER]``, ``s/SERVER[/CONSUMER]`` or ``f/CONSUMER``."""
    kind, _, tail = rest.partition("/")
    if kind == "f":
        return ("f", None), tail
    member, _, consumer = tail.partition("/")
    if kind == "g" and member == RPC_GROUP:
        return ("g", None), consumer
    return (kind, unname(member)), consumer


class Router:
    def __init__(
        self,
        client: EtcdClient,
        keys: Keys,
        settler: Settler,
        owner: str = "",
        lease: Callable[[], int] = lambda: 0,
    ) -> None:
        self.client = client
        self.keys = keys
        self.settler = settler
        self.owner = owner
        """Stored message IDs start with this (``PRINCIPAL.`` with credentials)."""
        self.lease = lease
        """The sender's own lease, which its pushes carry."""
        self._views: dict[tuple[str, str], TopicView] = {}
        self._lock = threading.Lock()
        self._turns: dict[tuple[str, str, RouteKey], itertools.count[int]] = {}

    # --- the view ----------------------------------------------------------------------

    def _view(self, exchange: str, topic: str) -> TopicView:
        with self._lock:
            return self._views.get((exchange, topic)) or TopicView()

    def _store(self, exchange: str, topic: str, decl: list[KV], live: list[KV], rev: int) -> None:
        view = TopicView(revision=rev)
        decl_prefix = self.keys.decl_prefix(exchange, topic)
        live_prefix = self.keys.live_prefix(exchange, topic)
        for kv in decl:
            view.declared.add(_route_of(kv.key[len(decl_prefix) :])[0])
        for kv in live:
            route, _ = _route_of(kv.key[len(live_prefix) :])
            view.live.setdefault(route, []).append(LiveConsumer.decode(kv.key, kv.value))
        with self._lock:
            current = self._views.get((exchange, topic))
            if current is None or current.revision <= rev:
                self._views[(exchange, topic)] = view

    def forget(self, exchange: str, topic: str) -> None:
        """Make the next send re-read the topic (a consumer it knew has left)."""
        with self._lock:
            view = self._views.get((exchange, topic))
            if view is not None:
                view.revision = -1

    def _pick(
        self, address: Address, route: RouteKey, consumers: list[LiveConsumer]
    ) -> LiveConsumer:
        """Round robin over a group's live consumers."""
        name = (address.exchange, address.topic, route)
        turns = self._turns.get(name)
        if turns is None:
            turns = self._turns.setdefault(name, itertools.count())
        return consumers[next(turns) % len(consumers)]

    # --- sending -------------------------------------------------------------------------

    def send(
        self,
        address: Address,
        value: bytes,
        guarantee: Guarantee,
        *,
        message_id: str | None = None,
        expires_at: float | None = None,
    ) -> None:
        """Write ``value`` (an encoded message) for ``address``; Undeliverable if nobody can.

        Retries until ``send_timeout``, or until ``expires_at`` (``time.time()``)
        when that comes first: then SendTimedOut, never later.
        """
        message_id = message_id or f"{self.owner}{uuid.uuid4().hex}"
        now = time.monotonic()
        deadline = now + self.client.options.send_timeout
        expiring = expires_at is not None and now + (expires_at - time.time()) < deadline
        if expires_at is not None and expiring:
            deadline = now + (expires_at - time.time())
            if deadline <= now:
                raise SendTimedOut(f"the message to {address} expired before it was sent")
        try:
            if guarantee is Guarantee.AT_LEAST_ONCE and not address.fanout:
                self._store_copies(address, value, message_id, deadline)
            else:
                self._push(address, value, message_id, deadline)
        except Unreachable as exc:
            if not expiring or isinstance(exc, TLSRefused):
                raise
            raise SendTimedOut(
                f"etcd did not take the message to {address} before its deadline: {exc}"
            ) from exc

    def _guarded(
        self,
        address: Address,
        view: TopicView,
        success: list[Json],
        deadline: float,
        extra: Sequence[Json] = (),
    ) -> Json | None:
        """Run ``success`` if the view is current (and ``extra`` compares hold).

        Returns None, with the view refreshed, if not. Pending settlements ride
        along on success; the transaction has no failure branch (the gateway
        parses every byte of a request, used or not), so a failure costs a
        second, read-only request.
        """
        decl_prefix = self.keys.decl_prefix(address.exchange, address.topic)
        live_prefix = self.keys.live_prefix(address.exchange, address.topic)
        riders = self.settler.take()
        request = ops.txn(
            [
                ops.nothing_created_after(decl_prefix, view.revision),
                ops.nothing_created_after(live_prefix, view.revision),
                *extra,
            ],
            success + [pending.op for pending in riders],
        )
        try:
            response = self.client.txn(request, deadline=deadline)
        except BaseException:
            self.settler.give_back(riders)
            raise
        if response.get("succeeded"):
            self.settler.applied(riders)
            return response
        self.settler.give_back(riders)
        self.refresh(address, deadline)
        return None

    def refresh(self, address: Address, deadline: float, *also: str) -> list[list[KV]]:
        """Re-read the topic's routes (and the keys ``also``); their key-values."""
        decl_prefix = self.keys.decl_prefix(address.exchange, address.topic)
        live_prefix = self.keys.live_prefix(address.exchange, address.topic)
        reads = [ops.range_prefix(decl_prefix), ops.range_prefix(live_prefix)]
        reads += [ops.range_key(key) for key in also]
        response = self.client.txn(ops.txn([], reads), deadline=deadline)
        ranges = [kvs_of(r["response_range"]) for r in response.get("responses", ())]
        self._store(address.exchange, address.topic, ranges[0], ranges[1], revision_of(response))
        return ranges[2:]

    def _store_copies(
        self, address: Address, value: bytes, message_id: str, deadline: float
    ) -> None:
        """At-least-once: one stored copy per declared queue, written once."""
        for _ in range(ROUTE_RETRIES):
            view = self._view(address.exchange, address.topic)
            routes: list[RouteKey]
            if address.server is not None:
                routes = [("s", address.server)] if ("s", address.server) in view.declared else []
            else:
                routes = sorted((r for r in view.declared if r[0] == "g"), key=str)
            keys = [
                self.keys.queue_prefix(QueueName(address.exchange, address.topic, kind, member))
                + f"m/{message_id}"
                for kind, member in routes
            ]
            chunks = _chunks(keys, len(value)) if keys else []
            first = [ops.nested([ops.absent(c[0])], [ops.put(k, value) for k in c]) for c in chunks]
            if self._guarded(address, view, first[:1], deadline) is None:
                continue
            if not keys:
                raise Undeliverable(
                    f"no queue is declared for {address} (nobody ever listened to it)"
                )
            for chunk in first[1:]:  # beyond one transaction's size: the rest, each idempotent
                self.client.txn(ops.txn([], [chunk]), deadline=deadline)
            return
        raise TransportError(f"the consumers of {address} kept changing; gave up routing")

    def _push(self, address: Address, value: bytes, message_id: str, deadline: float) -> None:
        """At-most-once and fanout: into live consumers' boxes."""
        done: set[RouteKey | str] = set()
        delivered = 0
        for _ in range(ROUTE_RETRIES):
            view = self._view(address.exchange, address.topic)
            targets: list[tuple[RouteKey | str, LiveConsumer]] = []
            if address.fanout:
                for consumer in view.live.get(("f", None), ()):
                    if consumer.key not in done:
                        targets.append((consumer.key, consumer))
            else:
                for route, consumers in view.live.items():
                    if not consumers or route in done:
                        continue
                    if (address.server is None and route[0] == "g") or route == (
                        "s",
                        address.server,
                    ):
                        targets.append((route, self._pick(address, route, consumers)))
            if len(targets) == 1:  # the usual case, one flat transaction
                if self._push_one(address, view, targets[0][1], value, message_id, deadline):
                    delivered += 1
                    break
                continue
            pushes = [self._push_op(c, value, message_id, self.lease()) for _, c in targets]
            batches = _batches(pushes, len(value))
            response = self._guarded(address, view, batches[0] if batches else [], deadline)
            if response is None:
                continue
            results = [r["response_txn"] for r in response.get("responses", ())[: len(targets)]]
            for extra in batches[1:]:
                more = self.client.txn(ops.txn([], extra), deadline=deadline)
                results += [r["response_txn"] for r in more.get("responses", ())]
            gone = False
            for (target, _), result in zip(targets, results, strict=True):
                if result.get("succeeded"):
                    delivered += 1
                    done.add(target)
                else:
                    gone = True
            if not gone:
                break
            self.forget(address.exchange, address.topic)
        if not delivered:
            raise Undeliverable(f"nobody is listening on {address} now")

    def _push_one(
        self,
        address: Address,
        view: TopicView,
        consumer: LiveConsumer,
        value: bytes,
        message_id: str,
        deadline: float,
    ) -> bool:
        """Push to one consumer; False (view refreshed) if it is gone or the view was stale."""
        put = [ops.put(consumer.box + message_id, value, self.lease())]
        return self._guarded(address, view, put, deadline, [ops.exists(consumer.key)]) is not None

    @staticmethod
    def _push_op(consumer: LiveConsumer, value: bytes, message_id: str, lease: int) -> Json:
        return ops.nested(
            [ops.exists(consumer.key)], [ops.put(consumer.box + message_id, value, lease)]
        )


def _chunks(keys: list[str], size: int) -> list[list[str]]:
    per_txn = max(1, min(MAX_TXN_OPS, MAX_TXN_BYTES // max(1, size * 4 // 3)))
    return [keys[i : i + per_txn] for i in range(0, len(keys), per_txn)]


def _batches(pushes: list[Json], size: int) -> list[list[Json]]:
    per_txn = max(1, min(MAX_TXN_OPS, MAX_TXN_BYTES // max(1, size * 4 // 3)))
    return [pushes[i : i + per_txn] for i in range(0, len(pushes), per_txn)]
