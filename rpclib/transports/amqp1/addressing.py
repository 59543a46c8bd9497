"""Addressing strategies: how rpclib addresses become AMQP 1.0 node names (URL ``addressing=``).

AMQP 1.0 leaves node names to the peer, so the mapping is a small strategy
object chosen by URL option:

- ``rabbitmq`` (default): RabbitMQ's ``rabbitmq_amqp1_0`` plugin. Messages are
  sent to ``/exchange/<X>`` with the routing key in the message ``subject`` and
  consumed from ``/amq/queue/<Q>``; the exchanges, queues and bindings behind
  those names are declared (and deleted) over AMQP 0-9-1
  (:mod:`rpclib.transports.amqp1.rabbit_control`), because the plugin cannot.
- ``artemis``: ActiveMQ Artemis conventions: multicast address ``X.T`` with one
  fully qualified queue ``X.T::X.T#G`` per consumer group, anycast ``X.T@S`` for
  servers; the broker auto-creates them. No routability checks (Undeliverable
  only from the broker's outcomes).
- ``qpid``: qpidd and Qpid Dispatch / skupper routers, with the routable names
  of :class:`QpidAddressing` under four prefixes the operator configures
  (distribution on routers, link routes to a broker for stored nodes, on-demand
  node patterns on qpidd). No consumer groups, no routability checks.

Strategies check names the same way: a few characters and suffixes carry
meaning, and names that would make two addresses share a node are refused
with ValueError.
"""

from __future__ import annotations

import abc
import itertools
import logging
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any, Final

from rpclib.exceptions import TransportError
from rpclib.transports.amqp1.options import Amqp1Options
from rpclib.transports.amqp1.rabbit_control import RabbitControl
from rpclib.transports.base import Address

REPLY_PREFIX: Final = "rpclib.reply."
DEAD_LETTER_QUEUE: Final = "rpclib.dead-letters.bounded"
"""The vhost's dead letters: bounded (:func:`dead_letter_arguments`), so it could not keep the
name of the unbounded queue of older releases (RabbitMQ refuses changed arguments)."""
LEGACY_DEAD_LETTER_QUEUE: Final = "rpclib.dead-letters"
"""RabbitMQ: the unbounded dead-letter queue of releases before the bound, no longer written
or read."""
PEER_DEAD_LETTER_QUEUE: Final = LEGACY_DEAD_LETTER_QUEUE
"""``artemis`` and ``qpid``: the dead-letter node, whose bound is the operator's queue
settings (rpclib declares nothing there; docs/transports/amqp1.md)."""
DEAD_LETTER_MAX_LENGTH: Final = 10_000
"""Dead letters kept per vhost (as rabbit:// and memory:// keep); the oldest are dropped."""
DEAD_LETTER_MAX_BYTES: Final = 64 * 1024 * 1024
"""Bodies kept at most in the dead-letter queue, whatever their count."""
PRIVATE_EXCHANGE: Final = "rpclib:private"
"""RabbitMQ (both strategies): the topic exchange through which a node is reached by its own
name: private nodes (inboxes, advert and fanout queues), the queues a subscription consumes
(for requeued copies) and the dead letters. Each node is bound to it by its name, and a
least-privilege account may write only the keys its role needs (topic permissions), where
the default exchange would let it write into any queue (rpclib.transports.amqp1.access).
A ``:`` no exchange or topic of an address may hold, so it collides with none."""
ROUTED_MARK: Final = "+"
"""Starts the suffix of a private node bound to :data:`PRIVATE_EXCHANGE` on ``rabbitmq4``
(``<user>:<kind>.+<suffix>``), so that a sender knows to route to it through that exchange;
a node named without it belongs to an older client, reached through the default exchange
(rolling upgrades, docs/transports/amqp1.md). Not ``~``: RabbitMQ 3.x's plugin formats a
refusal naming the node with it as an Erlang format string and drops the connection."""
OWNER_MARK: Final = ":"
"""Separates the principal from the rest of a private node's name (``<principal>:...``):
no address's node name holds one, so a principal's prefix matches its own nodes only."""
LIVE: Final = ".live"
MARK: Final = ".mark"
"""``rabbitmq4``: suffix of an inbox's marker queue (see ``RabbitMQ4Addressing._mark``)."""
SYNC: Final = ".sync"
FANOUT: Final = ".fanout"
MAX_NAME_BYTES: Final = 255
_RESERVED_ENDINGS: Final = (LIVE, SYNC, FANOUT)
_counter = itertools.count(1)
LOG = logging.getLogger("rpclib.transports.amqp1")


def private_suffix() -> str:
    """``<host>.<pid>.<n>``: unique among every process sharing the broker."""
    host = socket.gethostname().split(".")[0] or "host"
    return f"{host}.{os.getpid()}.{next(_counter)}"


@dataclass(frozen=True, slots=True)
class Route:
    """Where a sender link points (``node``; "" = the anonymous link) and the routing key in
    ``subject`` or the message's own address (``to``), or None."""

    node: str
    subject: str | None = None
    to: str | None = None


@dataclass(frozen=True, slots=True)
class Source:
    """A node a subscription consumes; ``settled``: the peer sends it pre-settled."""

    node: str
    settled: bool


def _check(kind: str, name: str, reserved: tuple[str, ...]) -> None:
    if not name:
        raise ValueError(f"{kind} name must not be empty")
    for char in reserved:
        if char in name:
            raise ValueError(f"{kind} name {name!r} contains {char!r}, reserved by amqp1://")
    if name.endswith(_RESERVED_ENDINGS):
        raise ValueError(
            f"{kind} name {name!r} ends with a suffix amqp1:// reserves "
            f"({', '.join(_RESERVED_ENDINGS)})"
        )


def is_inbox(name: str) -> bool:
    """Whether ``name`` is an inbox's node (``[<principal>:]rpclib.reply.<suffix>``)."""
    return name.rsplit(OWNER_MARK, 1)[-1].startswith(REPLY_PREFIX)


def check_address(address: Address, group: str | None = None) -> None:
    """Refuse names that would make two addresses collide (same rules for every strategy)."""
    if group is not None and (address.fanout or address.server is not None):
        raise ValueError(f"consumer groups apply to topics only, not to {address}")
    _check("exchange", address.exchange, ("#", "*", "/", ":"))
    if address.exchange.startswith("amq."):
        raise ValueError(f"exchange name {address.exchange!r}: the 'amq.' prefix is reserved")
    _check("topic", address.topic, ("@", "#", "*", "/", ":"))
    if address.server is not None:
        _check("server", address.server, ("#", "*", "/", ":"))
    if group is not None:
        _check("group", group, ("#", "*", "/", ":"))
    if address.exchange == "rpclib" and (
        address.topic == "dead-letters" or address.topic.startswith(("dead-letters.", "reply."))
    ):
        raise ValueError(f"topic {address.topic!r} on exchange 'rpclib' is the driver's own")
    longest = f"{'p' * 65}{address.exchange}.{address.topic}.fanout.{'x' * 80}"
    if address.server is not None:
        longest = f"{address.exchange}.{address.topic}@{address.server}{LIVE}"
    elif group is not None:
        longest = f"{address.exchange}.{address.topic}#{group}{LIVE}"
    if len(longest.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"the node names of {address} would exceed 255 bytes")


def dead_letter_arguments(queue_type: str | None) -> dict[str, Any]:
    """The dead-letter queue's arguments: bounded by count and bytes, dropping the oldest
    first, so a node flooding a server with garbage cannot grow the broker's storage without
    end; typed ``queue_type`` when given (``rabbitmq4``; the 3.x plugin's is a plain classic
    queue). Classic and quorum queues of RabbitMQ 3.10 to 4.x take these; none is deprecated."""
    arguments: dict[str, Any] = {} if queue_type is None else {"x-queue-type": queue_type}
    return {
        **arguments,
        "x-max-length": DEAD_LETTER_MAX_LENGTH,
        "x-max-length-bytes": DEAD_LETTER_MAX_BYTES,
        "x-overflow": "drop-head",
    }


def queue_name(address: Address, group: str | None = None, *, live: bool = False) -> str:
    """``X.T``, ``X.T#G`` or ``X.T@S`` (plus ``.live`` for at-most-once)."""
    base = f"{address.exchange}.{address.topic}"
    if address.server is not None:
        base = f"{base}@{address.server}"
    elif group is not None:
        base = f"{base}#{group}"
    return base + LIVE if live else base


class Addressing(abc.ABC):
    """Maps addresses to nodes and prepares the nodes (blocking calls; never on the I/O thread)."""

    name: str = ""
    routes_by_outcome: bool = False
    """Whether the peer answers ``released`` for a message nobody's node takes, so that
    routability is learnt from sending unsettled rather than asked (:meth:`routable`)."""
    watches_adverts: bool = True
    """Whether a private node can be bound to hear a topic's adverts (``watch_adverts``)."""
    verifies_user_id: bool = False
    """Whether the peer refuses a message whose ``user-id`` is not the connection's user, so
    that the driver sets it on every message and reports it as ``Incoming.sender``."""

    def __init__(self, options: Amqp1Options) -> None:
        self.options = options

    def private_name(self, kind: str) -> str:
        """A new private node's name: ``<kind>.<suffix>``; strategies whose broker grants
        permissions by name put the principal first (``<user>:<kind>.<suffix>``)."""
        return f"{kind}.{private_suffix()}"

    @abc.abstractmethod
    def hostname(self) -> str:
        """The AMQP open frame's hostname (how the peer picks the virtual host)."""

    @abc.abstractmethod
    def send_route(self, address: Address, at_least_once: bool) -> Route:
        """Where ``send`` puts messages for ``address`` (pure: no I/O)."""

    def prepare_send(self, address: Address) -> None:
        """Make the sender's node exist (once per exchange)."""
        return None

    def routable(self, address: Address, at_least_once: bool) -> bool | None:
        """Whether a message would reach someone now; None when this peer cannot tell."""
        return None

    @abc.abstractmethod
    def prepare_listen(self, address: Address, group: str | None) -> list[Source]:
        """Declare what ``listen`` consumes; the sources to attach receivers to."""

    @abc.abstractmethod
    def declare(self, address: Address, group: str | None) -> None:
        """Create the durable node of a topic group or server without consuming."""
        return None

    def new_private(self, kind: str, binds: list[tuple[str, str]]) -> str:
        """A private node (inbox, advert watch) named ``<kind>.<suffix>``, reachable by
        :meth:`private_route` and through ``binds`` (exchange, key) pairs; its name."""
        name = self.private_name(kind)
        self.recreate_private(name, binds)
        return name

    def recreate_private(self, name: str, binds: list[tuple[str, str]]) -> None:
        """Declare private node ``name`` again (it was lost with the broker)."""
        return None

    def bind_private(self, name: str, binds: list[tuple[str, str]]) -> None:
        """Route more (exchange, key) pairs to private node ``name``."""
        return None

    @abc.abstractmethod
    def private_route(self, name: str) -> Route:
        """Where to send to private node ``name`` (an inbox, a watch)."""

    @abc.abstractmethod
    def private_source(self, name: str) -> Source: ...

    def private_exists(self, name: str) -> bool | None:
        """Whether private node ``name`` survived (after a reconnect); None: cannot tell."""
        return None

    def delete_private(self, name: str) -> None:
        """Delete private node ``name``."""
        return None

    @abc.abstractmethod
    def adverts_route(self, exchange: str, key: str) -> Route: ...

    def adverts_binding(self, exchange: str, key: str) -> tuple[str, str]:
        """The (exchange, key) pair a private node binds to hear ``key`` adverts."""
        return (f"{exchange}.adverts", key)

    def prepare_adverts(self, exchange: str) -> None:
        """Make the adverts node of ``exchange`` exist."""
        return None

    def requeue_route(self, node: str) -> Route:
        """Where a requeued copy of a message consumed from source ``node`` goes: that node."""
        return Route(node)

    @abc.abstractmethod
    def dead_letter_route(self) -> Route: ...

    @abc.abstractmethod
    def dead_letter_source(self) -> Source: ...

    def prepare_dead_letters(self) -> None:
        """Make the dead-letter node exist."""
        return None

    def dead_letter_count(self) -> int | None:
        """How many dead letters are stored; None when this peer cannot tell."""
        return None

    def reset(self) -> None:
        """Forget cached declarations (the broker may have restarted)."""
        return None

    def close(self) -> None:
        """Release the strategy's own connections."""
        return None


class RabbitMQAddressing(Addressing):
    """RabbitMQ 3.10+ with ``rabbitmq_amqp1_0``; names as in docs/transports/amqp1.md."""

    name = "rabbitmq"
    verifies_user_id = True

    def __init__(self, options: Amqp1Options, label: str) -> None:
        super().__init__(options)
        self.control = RabbitControl(options, label)

    def private_name(self, kind: str) -> str:
        return owned_name(self.options, kind)

    def hostname(self) -> str:
        return f"vhost:{self.options.virtual_host}"

    # sending

    def send_route(self, address: Address, at_least_once: bool) -> Route:
        if address.fanout:
            key = f"{address.topic}{FANOUT}"
        elif address.server is not None:
            key = f"{address.topic}@{address.server}"
        else:
            key = address.topic
        if not at_least_once and not address.fanout:
            key += LIVE
        return Route(f"/exchange/{address.exchange}", key)

    def prepare_send(self, address: Address) -> None:
        self.control.shared_exchange(address.exchange)

    def routable(self, address: Address, at_least_once: bool) -> bool:
        x, t = address.exchange, address.topic
        if address.fanout:
            return self.control.exchange_exists(f"{x}.{t}{FANOUT}")
        if address.server is not None:
            queue = queue_name(address, live=not at_least_once)
            consumers = self.control.consumers(queue)
            return consumers is not None and (at_least_once or consumers > 0)
        return self.control.exchange_exists(f"{x}.{t}{LIVE}" if not at_least_once else f"{x}.{t}")

    # listening

    def _durable_queue(self, address: Address, group: str | None) -> str:
        c, x, t = self.control, address.exchange, address.topic
        c.shared_exchange(x)
        name = queue_name(address, group)
        c.queue(name, durable=True)
        if address.server is not None:
            c.bind_queue(name, x, f"{t}@{address.server}")
        else:
            c.exchange(f"{x}.{t}", "fanout")
            c.bind_exchange(f"{x}.{t}", x, t)
            c.bind_queue(name, f"{x}.{t}", "")
        self._by_name(name)
        return name

    def _by_name(self, queue: str) -> None:
        """Bind ``queue`` to :data:`PRIVATE_EXCHANGE` by its name (requeued copies)."""
        self.control.shared_exchange(PRIVATE_EXCHANGE)
        self.control.bind_queue(queue, PRIVATE_EXCHANGE, queue)

    def prepare_listen(self, address: Address, group: str | None) -> list[Source]:
        c, x, t = self.control, address.exchange, address.topic
        c.shared_exchange(x)
        if address.fanout:
            fan = f"{x}.{t}{FANOUT}"
            name = self.private_name(fan)
            c.exchange(fan, "fanout", auto_delete=True)
            c.queue(name, durable=False, auto_delete=True)
            c.bind_queue(name, fan, "")
            c.bind_exchange(fan, x, f"{t}{FANOUT}")
            self._by_name(name)
            return [Source(f"/amq/queue/{name}", settled=False)]
        durable = self._durable_queue(address, group)
        live = queue_name(address, group, live=True)
        c.queue(live, durable=False, auto_delete=True)
        self._by_name(live)
        if address.server is not None:
            c.bind_queue(live, x, f"{t}@{address.server}{LIVE}")
        else:
            fan = f"{x}.{t}{LIVE}"
            c.exchange(fan, "fanout", auto_delete=True)
            c.bind_queue(live, fan, "")
            c.bind_exchange(fan, x, f"{t}{LIVE}")
        return [Source(f"/amq/queue/{durable}", False), Source(f"/amq/queue/{live}", True)]

    def declare(self, address: Address, group: str | None) -> None:
        """Declare the durable queue and its bindings; a principal that may not configure it
        (a notifier making sure a listener pool's queue exists) accepts it declared by the
        admin (rpclib.transports.amqp1.access) or by its consumers."""
        try:
            self._durable_queue(address, group)
        except TransportError as exc:
            if "ACCESS_REFUSED" not in str(exc):
                raise
            if self.control.consumers(queue_name(address, group)) is None:
                raise TransportError(
                    f"queue {queue_name(address, group)} does not exist and this user may not "
                    "declare it: provision it (rpclib-access apply) or start its listeners"
                ) from exc

    # private nodes

    def recreate_private(self, name: str, binds: list[tuple[str, str]]) -> None:
        self.control.queue(name, durable=False, arguments={"x-expires": 3_600_000})
        self._by_name(name)
        self.bind_private(name, binds)

    def bind_private(self, name: str, binds: list[tuple[str, str]]) -> None:
        for exchange, key in binds:
            self.control.shared_exchange(exchange)
            self.control.bind_queue(name, exchange, key)

    def private_route(self, name: str) -> Route:
        return Route(f"/exchange/{PRIVATE_EXCHANGE}", name)

    def private_source(self, name: str) -> Source:
        return Source(f"/amq/queue/{name}", settled=True)

    def private_exists(self, name: str) -> bool:
        return self.control.consumers(name) is not None

    def delete_private(self, name: str) -> None:
        self.control.delete_queue(name)

    # adverts, dead letters

    def adverts_route(self, exchange: str, key: str) -> Route:
        return Route(f"/exchange/{exchange}.adverts", key)

    def adverts_binding(self, exchange: str, key: str) -> tuple[str, str]:
        return (f"{exchange}.adverts", key)

    def prepare_adverts(self, exchange: str) -> None:
        self.control.shared_exchange(f"{exchange}.adverts")

    def requeue_route(self, node: str) -> Route:
        return Route(f"/exchange/{PRIVATE_EXCHANGE}", node.removeprefix("/amq/queue/"))

    def dead_letter_route(self) -> Route:
        return Route(f"/exchange/{PRIVATE_EXCHANGE}", DEAD_LETTER_QUEUE)

    def dead_letter_source(self) -> Source:
        return Source(f"/amq/queue/{DEAD_LETTER_QUEUE}", settled=False)

    def prepare_dead_letters(self) -> None:
        """Declare and bind the bounded dead-letter queue, or (a least-privilege account)
        find it provisioned; warn if the unbounded one of older releases holds messages."""
        c = self.control
        c.shared_queue(DEAD_LETTER_QUEUE, dead_letter_arguments(None))
        c.shared_exchange(PRIVATE_EXCHANGE)
        try:
            c.bind_queue(DEAD_LETTER_QUEUE, PRIVATE_EXCHANGE, DEAD_LETTER_QUEUE)
        except TransportError as exc:
            if "ACCESS_REFUSED" not in str(exc):
                raise
            # the operator bound it when provisioning (rpclib.transports.amqp1.access)
        warn_legacy_dead_letters(c.messages(LEGACY_DEAD_LETTER_QUEUE))

    def dead_letter_count(self) -> int | None:
        return self.control.messages(DEAD_LETTER_QUEUE)

    def reset(self) -> None:
        self.control.exchanges.clear()

    def close(self) -> None:
        self.control.close()


class ArtemisAddressing(Addressing):
    """ActiveMQ Artemis: auto-created multicast addresses with fully qualified group queues."""

    name = "artemis"
    watches_adverts = False

    def hostname(self) -> str:
        return self.options.hosts[0].hostname

    def send_route(self, address: Address, at_least_once: bool) -> Route:
        if address.fanout:
            return Route(f"{address.exchange}.{address.topic}{FANOUT}")
        if address.server is not None:
            return Route(queue_name(address))
        return Route(f"{address.exchange}.{address.topic}")

    def prepare_listen(self, address: Address, group: str | None) -> list[Source]:
        node = self.send_route(address, True).node
        if address.fanout:
            return [Source(f"{node}::{node}.{private_suffix()}", False)]
        if address.server is not None:
            return [Source(node, False)]
        return [Source(f"{node}::{queue_name(address, group)}", False)]

    def declare(self, address: Address, group: str | None) -> None:
        pass  # Artemis creates the queue when the first receiver attaches

    def private_route(self, name: str) -> Route:
        return Route(name)

    def private_source(self, name: str) -> Source:
        return Source(name, settled=True)

    def adverts_route(self, exchange: str, key: str) -> Route:
        return Route(f"{exchange}.adverts.{key}")

    def dead_letter_route(self) -> Route:
        return Route(PEER_DEAD_LETTER_QUEUE)

    def dead_letter_source(self) -> Source:
        return Source(PEER_DEAD_LETTER_QUEUE, settled=False)


QPID_STORED: Final = "rpclib/queue/"
QPID_ANYCAST: Final = "rpclib/anycast/"
QPID_UNICAST: Final = "rpclib/unicast/"
QPID_MULTICAST: Final = "rpclib/multicast/"


class QpidAddressing(Addressing):
    """qpidd and Qpid Dispatch / skupper routers: routable names under four prefixes.

    The prefix says how a node behaves, so a router's ``address``/``linkRoute``
    entries (or qpidd's on-demand patterns) can be written once for every
    address: ``rpclib/queue/`` is stored (a broker queue; routers link-route it
    to one), ``rpclib/anycast/`` reaches one live consumer (balanced),
    ``rpclib/unicast/`` the closest one (servers, inboxes), ``rpclib/multicast/``
    every one. Nothing is declared from here: the peer creates nodes on attach.
    """

    name = "qpid"
    watches_adverts = False

    def hostname(self) -> str:
        """The vhost if the URL names one (a router's vhost policy picks by it), else the host."""
        vhost = self.options.virtual_host
        return self.options.hosts[0].hostname if vhost == "/" else vhost

    @staticmethod
    def _node(prefix: str, name: str) -> str:
        node = prefix + name
        if len(node.encode()) > MAX_NAME_BYTES:
            raise ValueError(f"node name {node!r} would exceed {MAX_NAME_BYTES} bytes")
        return node

    def send_route(self, address: Address, at_least_once: bool) -> Route:
        if address.fanout:
            return Route(self._node(QPID_MULTICAST, f"{queue_name(address)}{FANOUT}"))
        live = QPID_UNICAST if address.server is not None else QPID_ANYCAST
        return Route(self._node(QPID_STORED if at_least_once else live, queue_name(address)))

    def _refuse_group(self, address: Address, group: str | None) -> None:
        if group is not None:
            raise TransportError(
                f"addressing=qpid cannot give consumer group {group!r} its own copy of "
                f"{address}: a router stores and copies nothing per group and qpidd binds "
                "no named queue to a topic by itself; listen with group=None (one competing "
                "pool per topic), give each pool its own topic, or use addressing=rabbitmq "
                "or artemis"
            )

    def prepare_listen(self, address: Address, group: str | None) -> list[Source]:
        self._refuse_group(address, group)
        if address.fanout:
            return [Source(self.send_route(address, False).node, settled=True)]
        stored = self.send_route(address, True).node
        live = self.send_route(address, False).node
        return [Source(stored, settled=False), Source(live, settled=True)]

    def declare(self, address: Address, group: str | None) -> None:
        """Only checks: the stored node appears when a sender or receiver attaches to it."""
        self._refuse_group(address, group)
        self._node(QPID_STORED, queue_name(address))

    def private_route(self, name: str) -> Route:
        return Route(self._node(QPID_UNICAST, name))

    def private_source(self, name: str) -> Source:
        return Source(self._node(QPID_UNICAST, name), settled=True)

    def adverts_route(self, exchange: str, key: str) -> Route:
        return Route(self._node(QPID_MULTICAST, f"{exchange}.adverts.{key}"))

    def dead_letter_route(self) -> Route:
        return Route(QPID_STORED + PEER_DEAD_LETTER_QUEUE)

    def dead_letter_source(self) -> Source:
        return Source(QPID_STORED + PEER_DEAD_LETTER_QUEUE, settled=False)


def owned_name(options: Amqp1Options, kind: str) -> str:
    """``<user>:<kind>.+<suffix>``: a private node named for the URL's (first) user, so that
    a least-privilege account is granted its own nodes by that prefix (docs/security.md),
    and marked as reachable through :data:`PRIVATE_EXCHANGE` (:data:`ROUTED_MARK`)."""
    return f"{options.hosts[0].user}{OWNER_MARK}{kind}.{ROUTED_MARK}{private_suffix()}"


def is_routed(name: str) -> bool:
    """Whether private node ``name`` is bound to :data:`PRIVATE_EXCHANGE` by its name (named
    by this release); one of an older client is reached through the default exchange."""
    return ROUTED_MARK in name.rsplit(OWNER_MARK, 1)[-1]


_legacy_warned = threading.Event()


def warn_legacy_dead_letters(count: int | None) -> None:
    """Warn once per process that the unbounded dead-letter queue of an older release still
    holds ``count`` messages (None or 0: it is gone or empty, nothing to say)."""
    if not count or _legacy_warned.is_set():
        return
    _legacy_warned.set()
    LOG.warning(
        "the unbounded dead-letter queue %s of an older rpclib still holds %d messages; "
        "this release reads and writes the bounded %s. Read what the old one holds, then "
        "delete it once no older client runs (docs/transports/amqp1.md, 'Upgrading')",
        LEGACY_DEAD_LETTER_QUEUE,
        count,
        DEAD_LETTER_QUEUE,
    )


def make_addressing(options: Amqp1Options, label: str, name: str | None = None) -> Addressing:
    """The strategy ``name`` (default: the URL's ``addressing``), except ``rabbitmq4`` and
    ``auto``, which need the connection (the driver makes those)."""
    name = name or options.addressing
    if name == "artemis":
        return ArtemisAddressing(options)
    if name == "qpid":
        return QpidAddressing(options)
    if name == "rabbitmq":
        return RabbitMQAddressing(options, label)
    raise ValueError(f"no addressing strategy named {name!r} here")


def pick_strategy(properties: dict[str, str]) -> str:
    """``addressing=auto``: the strategy for the peer whose ``open`` frame carried
    ``properties`` (RabbitMQ sends ``product`` and ``version``). RabbitMQ 4 and later:
    ``rabbitmq4``; 3.x (the AMQP 1.0 plugin): ``rabbitmq``; anything else is an error
    naming the peer, since its conventions cannot be guessed."""
    product = properties.get("product", "")
    version = properties.get("version", "")
    if product.lower() == "rabbitmq":
        major = version.split(".", 1)[0]
        if not major.isdigit():
            raise TransportError(
                f"addressing=auto: RabbitMQ sent no readable version ({version!r}); "
                "set addressing=rabbitmq (3.x) or rabbitmq4 (4.x)"
            )
        return "rabbitmq4" if int(major) >= 4 else "rabbitmq"
    peer = f"{product} {version}".strip() or "a peer that does not name its product"
    raise TransportError(
        f"addressing=auto picks a strategy for RabbitMQ only, and the peer is {peer}: "
        "set addressing=artemis, addressing=qpid (qpidd, Qpid Dispatch, skupper) or "
        "addressing=rabbitmq4 in the URL"
    )
