"""Subscriptions, their incoming messages, and inboxes (all I/O on the Loop's thread).

A subscription has a session of its own with one receiver per source node.
Credit is the prefetch window: each link starts with ``prefetch`` credit and
gets one back per settled message (for pre-settled links in batches, see
:meth:`Amqp1Subscription.owe_credit`), so at most ``prefetch`` messages per
link are unsettled. ``cancel`` stops replenishing credit and puts back whatever
still arrives (see :meth:`Amqp1Subscription._bounce`), so delivered messages
stay settleable. ``close`` ends the session: the peer requeues what was
unsettled. (RabbitMQ's plugin never completes a single link's detach, so
links are never closed one by one.)
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import TYPE_CHECKING, Any, Final

from proton import Delivery, Endpoint, Message

from rpclib.exceptions import TransportError
from rpclib.transports.amqp1 import messages
from rpclib.transports.amqp1.addressing import Source
from rpclib.transports.amqp1.restore import check_current
from rpclib.transports.base import Address, InboxEventHandler, InboxHandler, MessageHandler

if TYPE_CHECKING:
    from rpclib.transports.amqp1.io_thread import Future, Loop

LOG = logging.getLogger("rpclib.transports.amqp1")
INBOX_CREDIT: Final = 1024


def end_session(loop: Loop, session: Any, links: list[Any]) -> None:
    """End an earlier attempt's session and forget its receivers (I/O thread): a retried
    restore starts over, so no node is ever consumed twice by one owner."""
    for link in links:
        loop.receivers.pop(link.name, None)
    if session is not None and session.state & Endpoint.LOCAL_ACTIVE:
        session.close()


def wait_attached(futures: list[Future], timeout: float, what: str) -> None:
    """Wait (off the I/O thread) until the peer attached every link; its refusal raises."""
    for future in futures:
        future.wait(timeout, what)


class Amqp1Incoming:
    """One delivery; settled from any thread (the work is handed to the I/O thread).

    It holds no proton object: those may only be touched (and freed: a
    wrapper's ``__del__`` changes proton's reference counts) on the I/O
    thread, while an Incoming ends its life on whatever thread rpclib
    settled it from. The subscription keeps the delivery under ``key``.
    """

    __slots__ = (
        "_settled",
        "_sub",
        "attempts",
        "body",
        "key",
        "link",
        "node",
        "presettled",
        "props",
        "sender",
    )

    def __init__(
        self,
        sub: Amqp1Subscription,
        key: int,
        link: str,
        node: str,
        body: bytes,
        props: dict[str, Any],
        attempts: int,
        presettled: bool,
        sender: str | None = None,
    ) -> None:
        """``sender``: the broker-verified ``user-id`` (:func:`messages.sender_of`); None
        when the peer does not verify it or the message has none."""
        self._sub = sub
        self.key = key
        self.link = link
        self.node = node
        self.body = body
        self.props = props
        self.attempts = attempts
        self.presettled = presettled
        self.sender = sender
        self._settled = False

    def _settle(self, kind: str, reason: str = "") -> None:
        if self._settled:
            raise RuntimeError("message already settled")
        self._settled = True
        if kind == "ack" and self.presettled:
            self._sub.owe_credit(self.link)  # nothing to tell the peer: credit, in batches
            return
        self._sub.loop.submit(lambda: self._sub.settle(self, kind, reason))

    def ack(self) -> None:
        self._settle("ack")

    def requeue(self) -> None:
        self._settle("requeue")

    def dead_letter(self, reason: str) -> None:
        self._settle("dead", reason)


class Amqp1Subscription:
    """A running consumer of one address (its durable and at-most-once nodes)."""

    def __init__(
        self,
        loop: Loop,
        address: Address,
        group: str | None,
        handler: MessageHandler,
        prefetch: int,
        sources: list[Source],
        timeout: float,
    ) -> None:
        self.loop = loop
        self.address = address
        self.group = group
        self.handler = handler
        self.prefetch = prefetch
        self.sources = sources
        self.timeout = timeout
        self.session: Any = None
        self.links: list[tuple[Any, Source]] = []
        self.cancelled = False
        self.closed = False
        self._owed: dict[str, int] = {}
        """link name -> credit owed for acked pre-settled deliveries (under ``_owed_lock``)."""
        self._unsettled: dict[int, tuple[Any, Any]] = {}
        """Incoming key -> (delivery, link) not yet settled (I/O thread only)."""
        self._keys = itertools.count()
        self._owed_lock = threading.Lock()
        self._owed_batch = max(1, prefetch // 4)

    def __repr__(self) -> str:
        return f"<amqp1 Subscription {self.address} group={self.group}>"

    # -- I/O thread ----------------------------------------------------------------------

    def attach(self) -> None:
        """Open the session and a receiver per source (I/O thread)."""
        if self.closed or self.cancelled or self.loop.conn is None:
            return
        self.links = []
        session = self.loop.conn.session()
        session.open()
        self.session = session
        for source in self.sources:
            link = self.loop.receiver(
                session, source.node, self, settled=source.settled, credit=self.prefetch
            )
            self.links.append((link, source))

    def restore(self, generation: int) -> None:
        """After a reconnect: declare the nodes again, attach, wait for the peer's attach
        (blocking: a restore thread); raises what the broker refused."""
        sources = self.loop.addressing.prepare_listen(self.address, self.group)
        futures = self.loop.call(
            lambda: self._reattach(sources, generation), self.timeout, f"re-attaching {self}"
        )
        wait_attached(futures, self.timeout, f"re-attaching {self}")

    def _reattach(self, sources: list[Source], generation: int) -> list[Future]:
        check_current(self.loop, generation)
        if self.closed:
            return []
        end_session(self.loop, self.session, [link for link, _ in self.links])
        self.session = None
        self._unsettled.clear()
        self.sources = sources
        self.attach()
        return [self.loop.opened(link) for link, _ in self.links]

    def connection_lost(self) -> None:
        self.session = None
        self.links = []
        self._unsettled.clear()

    def on_message(self, message: Message, delivery: Any) -> None:
        link = delivery.link
        name = link.name
        node = next((s.node for lk, s in self.links if lk.name == name), "")
        presettled = delivery.settled
        key = next(self._keys)
        if presettled:
            delivery.settle()
        else:
            self._unsettled[key] = (delivery, link)
        if self.closed:
            return
        props = messages.props_of(message)
        attempts = int(props.get(messages.ATTEMPTS, 1))
        body = messages.body_of(message)
        sender = None
        if self.loop.addressing.verifies_user_id:
            sender = messages.sender_of(message, props, self.loop.own_user)
        if self.cancelled:
            self._bounce(
                Amqp1Incoming(self, key, name, node, body, props, attempts, presettled, sender)
            )
            return
        if message.first_acquirer is False or message.delivery_count:
            attempts += 1
        incoming = Amqp1Incoming(self, key, name, node, body, props, attempts, presettled, sender)
        self._give_credit()
        if messages.expired(props):
            incoming._settled = True
            self.settle(incoming, "ack", "")
            return
        try:
            self.handler(incoming)
        except Exception:
            LOG.exception("handler for %s raised; requeueing the message", self.address)
            if not incoming._settled:
                incoming._settled = True
                self.settle(incoming, "requeue", "")

    def settle(self, incoming: Amqp1Incoming, kind: str, reason: str) -> None:
        """Ack, requeue (republish with attempts + 1) or dead-letter one delivery; a copy
        keeps the verified original sender (:data:`messages.RELAYED_SENDER`)."""
        if self.session is None or (
            not incoming.presettled and incoming.key not in self._unsettled
        ):
            LOG.debug("settling a delivery of a closed link of %s: ignored", self)
            return
        if kind == "ack":
            self._finish(incoming, Delivery.ACCEPTED)
            return
        props = dict(incoming.props)
        # The copy goes out with this connection's user-id; the original sender rides along
        # (messages.sender_of believes it only from this same user).
        props[messages.RELAYED_SENDER] = incoming.sender or ""
        if kind == "requeue":
            props[messages.ATTEMPTS] = incoming.attempts + 1
            route = self.loop.addressing.requeue_route(incoming.node)
        else:
            props.update(
                {
                    messages.REASON: reason,
                    messages.SOURCE: f"{self.address} ({incoming.node})",
                    messages.ATTEMPTS: incoming.attempts,
                }
            )
            props.pop(messages.EXPIRES_AT, None)
            route = self.loop.addressing.dead_letter_route()
        # A pre-settled delivery came at-most-once: its dead letter is not made durable
        # (nothing was promised; a flood of garbage must not fill the broker's disk).
        durable = kind == "requeue" or not incoming.presettled
        copy = messages.make(incoming.body, durable=durable, properties=props)

        def outcome(what: str | None) -> None:
            if what is None:
                self._finish(incoming, Delivery.ACCEPTED)
            else:
                LOG.warning("could not %s a message of %s (%s)", kind, self.address, what)
                self._finish(incoming, Delivery.MODIFIED)

        try:
            self.loop.send(route, copy, on_outcome=outcome)
        except TransportError as exc:
            LOG.warning("could not %s a message of %s: %s", kind, self.address, exc)

    def _finish(self, incoming: Amqp1Incoming, state: Any) -> None:
        """Settle the delivery (unless pre-settled) and give its credit back (I/O thread)."""
        if incoming.presettled:
            self.owe_credit(incoming.link)
            return
        entry = self._unsettled.pop(incoming.key, None)
        if entry is None or self.session is None:
            return
        delivery, link = entry
        if state == Delivery.MODIFIED:
            delivery.local.failed = True
        delivery.update(state)
        delivery.settle()
        if not self.cancelled:
            link.flow(1)

    def owe_credit(self, link: str) -> None:
        """A pre-settled delivery was acked (any thread): give its credit back, batched.

        The debt is paid on the next delivery or once a quarter of the window
        is owed, so an at-most-once ack costs no wake-up of the I/O thread.
        """
        with self._owed_lock:
            owed = self._owed[link] = self._owed.get(link, 0) + 1
        if owed >= self._owed_batch:
            self.loop.submit(self._give_credit)

    def _give_credit(self) -> None:
        if not self._owed:
            return
        with self._owed_lock:
            owed, self._owed = self._owed, {}
        if self.cancelled or self.session is None:
            return
        for link, _ in self.links:
            credit = owed.get(link.name)
            if credit:
                link.flow(credit)

    def _bounce(self, incoming: Amqp1Incoming) -> None:
        """A delivery after cancel(): put it back unchanged (same attempts) and take no more.

        RabbitMQ's plugin crashes the session on a drain and never finishes a
        link's detach, so a cancelled link keeps the credit it had; it is never
        replenished, and what still arrives on it goes back to the tail of its
        queue for the other consumers, not counted as an attempt.
        """
        incoming.attempts -= 1  # requeue counts one more: this one was never handled
        self.settle(incoming, "requeue", "")

    def _end(self) -> None:
        self.cancelled = True
        self.closed = True
        session, self.session = self.session, None
        for link, _ in self.links:
            self.loop.receivers.pop(link.name, None)
        self.links = []
        self._unsettled.clear()
        if session is not None:
            session.close()
        if self in self.loop.owners:
            self.loop.owners.remove(self)

    # -- Subscription protocol (any thread) ------------------------------------------------

    def cancel(self) -> None:
        """Stop new deliveries: no more credit, late arrivals go back to their queue."""
        if self.cancelled or self.loop.closed:
            self.cancelled = True
            return

        def cancel() -> None:
            self.cancelled = True

        try:
            self.loop.call(cancel, self.timeout, "cancel")
        except TransportError as exc:
            LOG.info("cancelling %s: %s", self, exc)

    def close(self) -> None:
        """End the session: the peer requeues every unsettled message."""
        if self.closed:
            return
        self.closed = True
        if self.loop.closed:
            return
        try:
            self.loop.call(self._end, self.timeout, "closing a subscription")
        except TransportError as exc:
            LOG.info("closing %s: %s", self, exc)


class Amqp1Inbox:
    """A private reply node read pre-settled; ``handler`` runs on the I/O thread."""

    def __init__(
        self,
        loop: Loop,
        name: str,
        handler: InboxHandler,
        on_event: InboxEventHandler | None,
        timeout: float,
    ) -> None:
        self.loop = loop
        self.name = name
        self.handler = handler
        self.on_event = on_event
        self.timeout = timeout
        self.session: Any = None
        self.link: Any = None
        self.closed = False
        self._lost = False
        self._replies_lost = False
        """A restore found the node gone or emptied (told as "lost" once it is back)."""

    @property
    def address(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<amqp1 Inbox {self.name}>"

    def attach(self) -> None:
        if not self.closed:
            self._open()

    def restore(self, generation: int) -> None:
        """After a reconnect: check (or declare again) the node, attach, then tell the
        handler whether replies survived (blocking: a restore thread)."""
        if self.loop.addressing.private_exists(self.name) is False:
            self._replies_lost = True
            self.loop.addressing.recreate_private(self.name, [])
        futures = self.loop.call(
            lambda: self._reopen(generation), self.timeout, f"re-attaching {self}"
        )
        wait_attached(futures, self.timeout, f"re-attaching {self}")
        self.loop.submit(lambda: self._restored(generation))

    def _reopen(self, generation: int) -> list[Future]:
        check_current(self.loop, generation)
        if self.closed:
            return []
        end_session(self.loop, self.session, [self.link] if self.link is not None else [])
        self._open()
        return [self.loop.opened(self.link)]

    def _restored(self, generation: int) -> None:
        if self.closed or self.loop.generation != generation or not self._lost:
            return
        self._lost = False
        lost, self._replies_lost = self._replies_lost, False
        self._event("lost" if lost else "reconnected")

    def _open(self) -> None:
        self.session = self.loop.conn.session()
        self.session.open()
        source = self.loop.addressing.private_source(self.name)
        self.link = self.loop.receiver(
            self.session, source.node, self, settled=source.settled, credit=INBOX_CREDIT
        )

    def connection_lost(self) -> None:
        self.session = self.link = None
        if not self.closed and not self._lost:
            self._lost = True
            self._event("disconnected")

    def _event(self, what: str) -> None:
        if self.on_event is not None:
            try:
                self.on_event(what)
            except Exception:
                LOG.exception("inbox event handler raised")

    def on_message(self, message: Message, delivery: Any) -> None:
        if not delivery.settled:
            delivery.update(Delivery.ACCEPTED)
        delivery.settle()
        link = delivery.link
        if link.credit < INBOX_CREDIT // 2:
            link.flow(INBOX_CREDIT - link.credit)
        if self.closed:
            return
        try:
            self.handler(messages.body_of(message))
        except Exception:
            LOG.exception("inbox handler raised")

    def _end(self) -> None:
        session, self.session, self.link = self.session, None, None
        if session is not None:
            session.close()
        if self in self.loop.owners:
            self.loop.owners.remove(self)

    def close(self) -> None:
        """Stop reading and delete the node (later replies are dropped by the broker)."""
        if self.closed:
            return
        self.closed = True
        if self.loop.closed:
            return
        try:
            self.loop.call(self._end, self.timeout, "closing an inbox")
        except TransportError as exc:
            LOG.info("closing %s: %s", self, exc)
        self.loop.addressing.delete_private(self.name)
