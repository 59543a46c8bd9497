"""A driver's box: messages pushed to its consumers and replies to its inboxes.

One watch per driver covers ``box/DRIVER/``: ``d/CONSUMER/ID`` goes to that
consumer, ``r/INBOX/ID`` to that inbox's handler (then the reply key is
deleted, batched by the settler). An inbox exists while its marker
``inbox/DRIVER/INBOX`` does (with the owner's lease); senders write a reply
only if the marker exists (one transaction), so a reply to a closed inbox
is Undeliverable at once. The marker lives outside the box so a replier's
role may read markers without reading the box.

Pushes and replies carry their writer's lease: etcd lets a user attach a
key to a lease only if it may write every key on that lease, and least
privilege gives a sender write access to the receiver's box, nothing more.
What a dead receiver left unread goes when its writer's lease does.

Inbox addresses are ``DRIVER/INBOX``. The box is watched without delete
events; keys handed over are remembered until their deletion is applied, so
a resync after compaction never hands anything over twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from rpclib.exceptions import TransportError, Undeliverable
from rpclib.transports.base import InboxEventHandler, InboxHandler
from rpclib.transports.etcd import client as ops
from rpclib.transports.etcd.client import KV, EtcdClient, Json
from rpclib.transports.etcd.naming import Keys
from rpclib.transports.etcd.settler import Settler
from rpclib.transports.etcd.watch import Event

LOG = logging.getLogger("rpclib.transports.etcd")

PushTarget = Callable[[str, bytes], None]


class EtcdInbox:
    """An open inbox (the driver's Inbox)."""

    def __init__(
        self,
        box: Box,
        inbox_id: str,
        handler: InboxHandler,
        on_event: InboxEventHandler | None,
    ) -> None:
        self._box = box
        self.id = inbox_id
        self.handler = handler
        self.on_event = on_event
        self.closed = False

    @property
    def address(self) -> str:
        return f"{self._box.driver_id}/{self.id}"

    def register(self, lease: int) -> None:
        marker = self._box.keys.inbox_marker(self._box.driver_id, self.id)
        self._box.client.txn(ops.txn([], [ops.put(marker, b"", lease)]))

    def event(self, state: str) -> None:
        if self.on_event is not None and not self.closed:
            try:
                self.on_event(state)
            except Exception:
                LOG.exception("inbox event handler failed")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._box.close_inbox(self)


class Box:
    """The watch sink of ``box/DRIVER/`` and the driver's inboxes."""

    def __init__(
        self,
        client: EtcdClient,
        keys: Keys,
        settler: Settler,
        driver_id: str,
        lease: Callable[[], int],
    ) -> None:
        self.client = client
        self.keys = keys
        self.settler = settler
        self.driver_id = driver_id
        self.lease = lease
        self.prefix = keys.box_prefix(driver_id)
        self._lock = threading.Lock()
        self._consumers: dict[str, PushTarget] = {}
        self._inboxes: dict[str, EtcdInbox] = {}
        self._seen: set[str] = set()

    # --- registration --------------------------------------------------------------------

    def add_consumer(self, consumer_id: str, target: PushTarget) -> None:
        with self._lock:
            self._consumers[consumer_id] = target

    def remove_consumer(self, consumer_id: str) -> None:
        with self._lock:
            self._consumers.pop(consumer_id, None)

    def add_inbox(self, inbox: EtcdInbox) -> None:
        with self._lock:
            self._inboxes[inbox.id] = inbox

    def close_inbox(self, inbox: EtcdInbox) -> None:
        with self._lock:
            self._inboxes.pop(inbox.id, None)
        marker = self.keys.inbox_marker(self.driver_id, inbox.id)
        replies = self.keys.reply(self.driver_id, inbox.id, "")
        try:
            self.client.txn(ops.txn([], [ops.delete(marker), ops.delete_prefix(replies)]))
        except TransportError as exc:
            LOG.warning("could not remove inbox %s: %s", inbox.id, exc)

    def inboxes(self) -> list[EtcdInbox]:
        with self._lock:
            return list(self._inboxes.values())

    def discard(self, key: str, also: Sequence[Json] = ()) -> None:
        """Delete a handled key of this box (with ``also`` in the same operation), soon.

        The box watch does not receive deletes (fewer events for etcd to send
        and for us to parse), so the key is forgotten once its deletion is applied.
        """
        op = ops.nested([], [ops.delete(key), *also]) if also else ops.delete(key)
        self.settler.submit(op, lambda: self._forget(key))

    def _forget(self, key: str) -> None:
        with self._lock:
            self._seen.discard(key)

    # --- sending a reply -----------------------------------------------------------------

    def send_to_inbox(self, address: str, body: bytes, message_id: str) -> None:
        """Put a reply into the inbox at ``address`` if it is open; else Undeliverable."""
        driver_id, _, inbox_id = address.partition("/")
        if not driver_id or not inbox_id or "/" in inbox_id:
            raise Undeliverable(f"{address!r} is not an etcd inbox address")
        marker = self.keys.inbox_marker(driver_id, inbox_id)
        key = self.keys.reply(driver_id, inbox_id, message_id)
        riders = self.settler.take()  # pending settlements ride along, in both branches
        settlements = [pending.op for pending in riders]
        # No "not there yet" guard: a retried reply is the same key, which the
        # owner's box hands over once (and rpclib drops replies it no longer awaits).
        request = ops.txn(
            [ops.exists(marker)], [ops.put(key, body, self.lease()), *settlements], settlements
        )
        try:
            response = self.client.txn(request)
        except BaseException:
            self.settler.give_back(riders)
            raise
        self.settler.applied(riders)
        if not response.get("succeeded"):
            raise Undeliverable(f"inbox {address} is closed")

    # --- the watch sink ---------------------------------------------------------------

    def snapshot(self, kvs: list[KV], revision: int) -> None:
        present = {kv.key for kv in kvs}
        with self._lock:
            self._seen &= present
        for kv in kvs:
            self._arrived(kv)

    def events(self, events: list[Event]) -> None:
        for event in events:
            if event.deleted:
                with self._lock:
                    self._seen.discard(event.kv.key)
            else:
                self._arrived(event.kv)

    def connection(self, state: str) -> None:
        for inbox in self.inboxes():
            inbox.event(state)

    def _arrived(self, kv: KV) -> None:
        kind, _, rest = kv.key[len(self.prefix) :].partition("/")
        if kind not in ("d", "r"):
            return
        owner, _, _ = rest.partition("/")
        with self._lock:
            if kv.key in self._seen:
                return
            self._seen.add(kv.key)
            target: PushTarget | None = None
            inbox = None
            if kind == "d":
                target = self._consumers.get(owner)
            else:
                inbox = self._inboxes.get(owner)
        if target is not None:
            target(kv.key, kv.value)
            return
        if inbox is not None:
            self.discard(kv.key)
            try:
                inbox.handler(kv.value)
            except Exception:
                LOG.exception("inbox handler failed")
            return
        LOG.debug("no consumer or inbox for %s any more; deleting it", kv.key)
        self.discard(kv.key)
