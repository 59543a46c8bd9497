"""The key scheme: every key the driver writes, built in one place.

Names (exchange, topic, server, group) are percent-encoded so they never
contain ``/``; ``@`` (which percent-encoding never leaves bare) stands for
the RPC group (``group=None``). Under the URL's prefix ``P`` (see
docs/transports/etcd.md for the full picture)::

    P/decl/EX/TOPIC/g/GROUP              durable queue of a consumer group    (no lease)
    P/decl/EX/TOPIC/s/SERVER             durable queue of a server             (no lease)
    P/live/EX/TOPIC/g/GROUP/CONSUMER     a consumer listening now               (driver lease)
    P/live/EX/TOPIC/s/SERVER/CONSUMER
    P/live/EX/TOPIC/f/CONSUMER           a fanout listener                      (driver lease)
    P/q/EX/TOPIC/{g/GROUP|s/SERVER}/m/ID at-least-once message, until settled  (no lease)
                                 .../c/ID claim of the consumer handling it     (claimant's lease)
    P/n/EX/TOPIC/{g/GROUP|s/SERVER}/ID   delivery counter (its version)         (deleted with m)
    P/box/DRIVER/d/CONSUMER/ID           message pushed to one consumer         (sender's lease)
    P/box/DRIVER/r/INBOX/ID              a reply                                (replier's lease)
    P/inbox/DRIVER/INBOX                 an open inbox                          (owner's lease)
    P/adv/EX/TOPIC/s/SERVER              an advertisement                       (its own lease)
    P/dead/PRINCIPAL.TIME-ID             a dead letter                          (dead-letter lease)
    <watched prefix>/h/WATCH             liveness echo of a watch stream        (driver lease)

Least privilege (see access.py) needs keys a principal owns to share a prefix
it can be granted: with credentials, DRIVER is ``PRINCIPAL.RANDOM`` (so
consumers ``live/.../PRINCIPAL.RANDOM-cN`` too), a stored message's ID is
``PRINCIPAL.RANDOM`` of its sender, and a dead letter starts with the
principal that stored it. Principals never contain ``.``, so ``box/a.``
never covers ``box/ab.``. Inbox markers live outside the box so a replier
may read them (to refuse a reply to a closed inbox) without reading the
box; pushes and replies carry the writer's own lease because etcd lets a
user attach a key to a lease only if it may write every key on that lease.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from rpclib.transports.base import Address

RPC_GROUP = "@"


def name(text: str) -> str:
    """One key segment for a user-given name."""
    return quote(text, safe="")


def unname(segment: str) -> str:
    return unquote(segment)


def prefix_end(prefix: str) -> str:
    """The ``range_end`` covering every key that starts with ``prefix``."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode("latin-1")


@dataclass(frozen=True, slots=True)
class QueueName:
    """A durable queue: a topic's consumer group, or one server of a topic."""

    exchange: str
    topic: str
    kind: str  # "g" (group) or "s" (server)
    member: str | None  # group (None: the RPC group) or server name

    @classmethod
    def of(cls, address: Address, group: str | None) -> QueueName:
        if address.fanout:
            raise ValueError(f"{address} is a fanout address: fanout has no durable queue")
        if address.server is not None:
            if group is not None:
                raise ValueError(f"group={group!r} applies to topics, not to server {address}")
            return cls(address.exchange, address.topic, "s", address.server)
        return cls(address.exchange, address.topic, "g", group)

    def tail(self) -> str:
        member = RPC_GROUP if self.member is None else name(self.member)
        return f"{self.kind}/{member}"

    def __str__(self) -> str:
        who = "rpc" if self.member is None else self.member
        kind = "group" if self.kind == "g" else "server"
        return f"{self.exchange}/{self.topic} ({kind} {who})"


class Keys:
    """Key builders for one prefix (``/name/``)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @staticmethod
    def _topic(exchange: str, topic: str) -> str:
        return f"{name(exchange)}/{name(topic)}/"

    # declarations and live consumers (what senders read to route)
    def decl_prefix(self, exchange: str, topic: str) -> str:
        return f"{self.prefix}decl/{self._topic(exchange, topic)}"

    def decl(self, queue: QueueName) -> str:
        return self.decl_prefix(queue.exchange, queue.topic) + queue.tail()

    def live_prefix(self, exchange: str, topic: str) -> str:
        return f"{self.prefix}live/{self._topic(exchange, topic)}"

    def live(self, queue: QueueName, consumer: str) -> str:
        return f"{self.live_prefix(queue.exchange, queue.topic)}{queue.tail()}/{consumer}"

    def live_fanout(self, exchange: str, topic: str, consumer: str) -> str:
        return f"{self.live_prefix(exchange, topic)}f/{consumer}"

    # stored messages of a queue
    def queue_prefix(self, queue: QueueName) -> str:
        return f"{self.prefix}q/{self._topic(queue.exchange, queue.topic)}{queue.tail()}/"

    def counter(self, queue: QueueName, message: str) -> str:
        """Delivery counter of a stored message (outside the watched queue prefix)."""
        return f"{self.prefix}n/{self._topic(queue.exchange, queue.topic)}{queue.tail()}/{message}"

    # private boxes
    def box_prefix(self, driver: str) -> str:
        return f"{self.prefix}box/{driver}/"

    def delivery(self, driver: str, consumer: str, message: str) -> str:
        return f"{self.box_prefix(driver)}d/{consumer}/{message}"

    def inbox_prefix(self, driver: str) -> str:
        return f"{self.prefix}inbox/{driver}/"

    def inbox_marker(self, driver: str, inbox: str) -> str:
        return f"{self.inbox_prefix(driver)}{inbox}"

    def reply(self, driver: str, inbox: str, message: str) -> str:
        return f"{self.box_prefix(driver)}r/{inbox}/{message}"

    # adverts and dead letters
    def advert_prefix(self, exchange: str, topic: str) -> str:
        """The watched prefix of a topic's adverts (the records are under ``s/``)."""
        return f"{self.prefix}adv/{self._topic(exchange, topic)}"

    def advert(self, address: Address) -> str:
        if address.server is None:
            raise ValueError(f"an advert needs a server address, got {address}")
        return f"{self.advert_prefix(address.exchange, address.topic)}s/{name(address.server)}"

    def dead_prefix(self) -> str:
        return f"{self.prefix}dead/"
