"""The driver contract: what a transport must do, and nothing more.

A driver moves opaque bytes between :class:`Address` es and reports whether
anything accepted them. It never sees methods, versions or objects: all of
that lives above it, once, in rpclib's client and server.

Writing a driver
================

Subclass :class:`Driver`, implement the abstract methods, and register the
class under the ``rpclib.transports`` entry-point group with the URL scheme as
the name::

    [options.entry_points]
    rpclib.transports =
        mybus = mypackage.mybus:MyBusDriver

``rpclib.get_transport("mybus://host/...")`` then constructs
``MyBusDriver(url)`` with the parsed :class:`~rpclib.transports.url.TransportURL`.

Semantics every driver provides
-------------------------------

*Addresses.* ``Address(exchange, topic)`` is a *topic*: each consumer **group**
listening on it gets every message once, and consumers inside one group
compete (one of them gets it). RPC servers listen with ``group=None``;
notification pools are groups. ``Address(exchange, topic, server=s)`` reaches
the one server listening under that name. ``Address(exchange, topic,
fanout=True)`` reaches every listener of the topic's fanout, once each.

*Guarantees* (per message, chosen by the sender):

- ``AT_MOST_ONCE``: delivered to a consumer that is listening now, or
  :class:`~rpclib.exceptions.Undeliverable` is raised from :meth:`Driver.send`
  at once. May be lost if the consumer crashes.
- ``AT_LEAST_ONCE``: stored until a consumer acknowledges it. It survives the
  consumer crashing (it is redelivered with ``attempts`` incremented) and the
  consumer being away (queued until it returns). If no queue was ever
  declared for the address (no listener has ever subscribed and nobody called
  :meth:`Driver.declare`), :meth:`Driver.send` raises ``Undeliverable``.

*Acknowledgement.* Every :class:`Incoming` must be settled exactly once with
``ack()``, ``requeue()`` or ``dead_letter(reason)``. At most ``prefetch``
unsettled messages are outstanding per subscription. ``Subscription.cancel()``
stops new deliveries while delivered messages stay settleable (a server
finishing its in-flight work on shutdown); ``Subscription.close()`` cancels and
requeues whatever is still unsettled, as does a dead connection.

*Dead letters* are bounded: a driver keeps at most a configured number (the
oldest go first), so a node flooding a server with garbage cannot grow the
broker's storage without end, and it never persists the dead letter of a
message that came at-most-once (nothing was promised for it). ``dead_letter()``
must not wait for the broker on the thread that calls it (servers refuse bad
messages on the driver's delivery thread): the copy may become readable
through :meth:`Driver.dead_letters` a little later, and an at-least-once
message whose copy cannot be stored is redelivered rather than lost.

*Pipelined sends.* :meth:`Driver.send_pipelined` is an AT_LEAST_ONCE send
that may return before the message is stored, reporting the outcome later
through a callback; the driver keeps the message until the broker has it
(resending it after a reconnect) and bounds how many are unconfirmed at once.
Drivers that cannot do better inherit a synchronous version.

*Deadlines.* ``send(..., expires_at=t)`` lets the driver discard a message not
yet delivered by wall-clock time ``t`` (a broker TTL); rpclib also checks the
deadline itself, so this is an optimisation, not a requirement.

*Inboxes* are private reply addresses: :meth:`Driver.open_inbox` returns an
address string that any process can pass to :meth:`Driver.send_to_inbox`.
Delivery to an inbox is at-most-once and never acknowledged. A driver whose
connection can drop reports it through the inbox's ``on_event`` callback:
``"disconnected"`` (replies cannot arrive now), ``"reconnected"`` (they can
again, and none sent meanwhile were lost), ``"lost"`` (replies sent to it may
have been lost for good, e.g. the broker restarted and the reply queue is
new). rpclib turns these into :class:`~rpclib.exceptions.ConnectionLost` for
the calls waiting on that inbox.

*Advertisements* are small presence records (rpclib puts each server's
interface versions in them). :meth:`Driver.advertise` publishes or refreshes
one; :meth:`Driver.watch_adverts` reports the current records *before it
returns* (so a client's first call already knows the live servers) and then
every change. Expiry by TTL is enforced above the driver too, so a driver
that cannot expire records itself only needs to deliver refreshes.

*Threads.* Handlers are called from driver threads. A handler must not block
for long: rpclib hands work to its own executor and settles the message later,
from another thread, so ``Incoming`` methods must be thread-safe. A handler
that raises is a consumer crash: the driver logs it and the message comes
back with ``attempts`` + 1.
"""

from __future__ import annotations

import abc
import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rpclib.exceptions import Undeliverable
    from rpclib.transports.url import TransportURL


class Guarantee(enum.Enum):
    """Delivery guarantee of one message."""

    AT_MOST_ONCE = "at-most-once"
    AT_LEAST_ONCE = "at-least-once"


@dataclass(frozen=True, slots=True)
class Address:
    """Where a message goes: a topic, one server of it, or its fanout."""

    exchange: str
    topic: str
    server: str | None = None
    fanout: bool = False

    def __post_init__(self) -> None:
        if self.fanout and self.server is not None:
            raise ValueError("an address is either fanout or server-directed, not both")

    def __str__(self) -> str:
        if self.fanout:
            return f"{self.exchange}/{self.topic} (fanout)"
        if self.server is not None:
            return f"{self.exchange}/{self.topic}.{self.server}"
        return f"{self.exchange}/{self.topic}"


class Incoming(Protocol):
    """A received message; settle it exactly once."""

    @property
    def body(self) -> bytes: ...

    @property
    def attempts(self) -> int:
        """1 on first delivery, incremented on every redelivery."""
        ...

    @property
    def sender(self) -> str | None:
        """The principal that sent it, as the transport authenticated it; None if it can't.

        Established by the transport (a broker-verified user, an account of the
        bus), never read from the message body: authorization relies on it.
        """
        ...

    def ack(self) -> None:
        """Done with it: remove it from the queue."""

    def requeue(self) -> None:
        """Give it back for redelivery (to this or another consumer)."""

    def dead_letter(self, reason: str) -> None:
        """Move it to the (bounded) dead-letter place with ``reason``; it is not redelivered."""


MessageHandler = Callable[[Incoming], None]
InboxHandler = Callable[[bytes], None]
InboxEventHandler = Callable[[str], None]
"""Called with "disconnected", "reconnected" or "lost" (see the module docstring)."""
SendOutcomeHandler = Callable[["BaseException | None"], None]
"""Called once with None (stored) or the error (Undeliverable, TransportError) that ended a send."""


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """What happened to a driver's connection or to something set up on it.

    ``kind``: ``"disconnected"``, ``"reconnected"``, ``"not restored"`` (the
    broker refused to set ``what`` up again; retried with backoff, never
    abandoned) or ``"restored"`` (it was set up after all). ``detail`` quotes
    the broker. Drivers that reconnect report these to the listeners given to
    their ``add_event_listener`` (on their I/O thread: listeners must not block).
    """

    kind: str
    what: str = ""
    detail: str = ""


ConnectionEventHandler = Callable[[ConnectionEvent], None]

AdvertHandler = Callable[[str, "bytes | None"], None]
"""Called with (server, body) for a new or refreshed advert, (server, None) when withdrawn."""


class Subscription(Protocol):
    """A running consumer."""

    def cancel(self) -> None:
        """Stop new deliveries; already delivered messages can still be settled."""

    def close(self) -> None:
        """Cancel, and requeue every message still unsettled."""


class Inbox(Protocol):
    """A private reply address."""

    @property
    def address(self) -> str: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message moved aside, with why."""

    address: str
    body: bytes
    reason: str
    attempts: int

    @property
    def key(self) -> str:
        """A short name for this dead letter, the same on every read (for operators).

        A digest of what the letter holds, so two identical copies share it
        (replaying or purging by key then takes one of them at a time).
        """
        digest = hashlib.sha256()
        for part in (self.address.encode(), self.reason.encode(), str(self.attempts).encode()):
            digest.update(len(part).to_bytes(4, "big") + part)
        digest.update(self.body)
        return digest.hexdigest()[:12]


class CannotTell(NotImplementedError):
    """The transport does not offer an optional operator capability: it cannot ``what``."""

    def __init__(self, transport: str, what: str) -> None:
        super().__init__(f"{transport} cannot {what}")
        self.transport = transport
        self.what = what


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """How many messages wait in one queue of a topic, as the transport reports it."""

    queue: str
    """The transport's own name for it (a broker queue name, or the address it serves)."""
    messages: int
    """Ready, not yet delivered."""
    consumers: int | None = None
    """Consumers attached now (None: the transport does not say)."""
    unsettled: int | None = None
    """Delivered but not yet settled (None: the transport does not say)."""


class Driver(abc.ABC):
    """Base class of transport drivers; see the module docstring for the contract."""

    def __init__(self, url: TransportURL) -> None:
        self.url = url

    @abc.abstractmethod
    def send(
        self,
        address: Address,
        body: bytes,
        *,
        guarantee: Guarantee,
        expires_at: float | None = None,
        on_undeliverable: Callable[[Undeliverable], None] | None = None,
    ) -> None:
        """Hand ``body`` to the transport for ``address``.

        Returns once the transport has accepted it (for AT_LEAST_ONCE: stored).
        Raises Undeliverable when nothing can take it, TransportError when the
        transport failed. For AT_MOST_ONCE messages a caller that waits for an
        answer anyway (a call) may pass ``on_undeliverable``: the driver may
        then return before it knows whether the message was routable, and
        report Undeliverable later through the callback (from any thread),
        saving a broker round trip per message.
        """

    def send_pipelined(
        self,
        address: Address,
        body: bytes,
        *,
        on_outcome: SendOutcomeHandler,
        expires_at: float | None = None,
    ) -> None:
        """An AT_LEAST_ONCE send that need not wait for the transport to store the message.

        The driver may return once the message is on its way, keep it until
        the transport confirms it (sending it again after a reconnect; a
        duplicate is allowed, a loss is not) and then call ``on_outcome(None)``;
        if it cannot be stored within the driver's send timeout, or nothing can
        take it, ``on_outcome(error)``. Exactly once, from any thread; the
        callback must not block. The driver bounds the unconfirmed messages:
        this blocks while its window is full, and raises (calling nothing) if
        the message cannot even be taken on.

        This default is synchronous: :meth:`send`, then the outcome.
        """
        self.send(address, body, guarantee=Guarantee.AT_LEAST_ONCE, expires_at=expires_at)
        on_outcome(None)

    @abc.abstractmethod
    def listen(
        self,
        address: Address,
        handler: MessageHandler,
        *,
        group: str | None = None,
        prefetch: int = 64,
    ) -> Subscription:
        """Consume messages for ``address`` (in consumer ``group`` for topics)."""

    @abc.abstractmethod
    def declare(self, address: Address, group: str | None = None) -> None:
        """Create the durable queue for ``address``/``group`` without consuming.

        Lets a sender make sure AT_LEAST_ONCE messages are kept for a consumer
        group that has not started yet (e.g. a billing pool).
        """

    @abc.abstractmethod
    def open_inbox(self, handler: InboxHandler, on_event: InboxEventHandler | None = None) -> Inbox:
        """Open a private reply address; ``handler`` gets every body sent to it.

        ``on_event`` hears of connection trouble affecting the inbox; drivers
        that cannot lose a connection never call it.
        """

    @abc.abstractmethod
    def send_to_inbox(self, inbox_address: str, body: bytes) -> None:
        """Send to an inbox; Undeliverable if it no longer exists (when detectable)."""

    @abc.abstractmethod
    def advertise(self, address: Address, body: bytes, ttl: float) -> None:
        """Publish or refresh the advert of ``address.server`` on ``address.topic``."""

    @abc.abstractmethod
    def withdraw(self, address: Address) -> None:
        """Remove the advert of ``address.server``; watchers see (server, None)."""

    @abc.abstractmethod
    def watch_adverts(self, exchange: str, topic: str, handler: AdvertHandler) -> Subscription:
        """Report the current adverts of ``topic`` before returning, then every change."""

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Read (without removing) up to ``limit`` dead letters, oldest first.

        Optional: for operators and tests. Drivers whose broker offers its own
        tooling may leave it unimplemented.
        """
        raise NotImplementedError(f"{type(self).__name__} does not expose dead letters")

    # -- optional operator capabilities (rpclib inspect, rpclib dead-letters) -----------------
    # Each default raises CannotTell (a NotImplementedError) naming what is missing.

    def _kind(self) -> str:
        return f"{self.url.scheme}:// ({type(self).__name__})"

    def advertised_topics(self, exchange: str, *, listen: float = 12.0) -> list[str]:
        """The topics of ``exchange`` with a live advert now, sorted.

        Optional: lets an operator see the bus without naming a topic. A
        transport that learns topics only from advert refreshes listens
        ``listen`` seconds (longer than the servers' advert interval).
        """
        raise CannotTell(self._kind(), f"tell which topics of {exchange!r} have servers")

    def queue_depths(self, exchange: str, topic: str, servers: list[str]) -> list[QueueDepth]:
        """The queues of ``topic`` (its shared queues and those of ``servers``) with their depths.

        Optional; queues that do not exist are left out.
        """
        raise CannotTell(self._kind(), "tell queue depths")

    def replay_dead_letter(self, key: str) -> DeadLetter:
        """Send the dead letter whose :attr:`DeadLetter.key` is ``key`` back to its queue.

        It arrives there as one more attempt (``attempts`` + 1) and leaves the
        dead letters. KeyError if no dead letter has that key; Undeliverable if
        its queue is gone. Optional.
        """
        raise CannotTell(self._kind(), "replay dead letters")

    def purge_dead_letters(self, keys: list[str] | None = None) -> int:
        """Delete the dead letters with these keys (all of them with None); how many went.

        Optional.
        """
        raise CannotTell(self._kind(), "purge dead letters")

    def remove_server_queues(self, address: Address) -> list[str]:
        """Delete the durable queue(s) of a retired server ``address``; the names removed.

        Messages still in them are dropped. Refuses (TransportError) while a
        consumer listens on them, and (AccessRefused) when this account may not
        consume from them. Optional: for operators retiring a host; drivers whose
        server queues go away by themselves may leave it unimplemented.
        """
        raise CannotTell(self._kind(), "remove server queues")

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and threads; settle nothing further."""
