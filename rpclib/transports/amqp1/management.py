"""RabbitMQ 4's management node (``/management``): HTTP over AMQP 1.0 on the driver's connection.

RabbitMQ 4 declares, binds and deletes exchanges and queues for AMQP 1.0
clients through a node named ``/management``: a pair of links (a sender and
a receiver with the same name and the link property ``paired``) carrying
requests whose ``to`` is an HTTP path (``/queues/<name>``), ``subject`` an
HTTP method and body an AMQP map; the answer's ``subject`` is the status
code and its ``correlation_id`` the request's ``message_id``.

It runs on the driver's own connection and I/O thread (a session of its own),
not through RabbitMQ's blocking ``rabbitmq-amqp-python-client``: queues
declared exclusive belong to the connection that declared them, so only the
connection that consumes them may declare them. Requests are made from other
threads and wait on a future; after a reconnect the link pair is attached
again. A request lost with the connection is sent again after the reconnect
(every request the driver makes is idempotent) until its deadline.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from proton import Message, PropertyDict, symbol

from rpclib.exceptions import TransportError
from rpclib.transports.amqp1.io_thread import LOG, Future

if TYPE_CHECKING:
    from rpclib.transports.amqp1.io_thread import Loop

NODE: Final = "/management"
LINK_NAME: Final = "management-link-pair"
CREDIT: Final = 256
REOPEN_DELAY: Final = 0.5
"""Seconds between a refusal (which ends the session) and the next session's begin.

RabbitMQ 4.0 ends the management session to refuse a request; a session begun at once
after it reuses the freed channel number, and under load the broker then sometimes
answered nothing on it (requests hung until their deadline: 17 of 165 driver starts of
least-privilege users, six at a time, before this pause)."""
NULL_BODY: Final = b"\x00\x53\x77\x40"
"""An amqp-value section holding null: RabbitMQ 4.0 wants it on GET and DELETE requests,
and proton writes no body section at all for a None body."""


def path(kind: str, name: str) -> str:
    """``/queues/<name>`` or ``/exchanges/<name>``, the name percent-encoded (RFC 3986)."""
    return f"/{kind}/{quote(name, safe='')}"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: Any


class Refused(TransportError):
    """The broker answered a management request with an error status (its reason quoted)."""

    def __init__(self, what: str, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"RabbitMQ refused to {what}: {status} {reason}")


class Management:
    """The management link pair of one driver's connection (an owner of the Loop)."""

    def __init__(self, loop: Loop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.session: Any = None
        self.sender: Any = None
        self.receiver: Any = None
        self._ids = itertools.count(1)
        self._tags = itertools.count(1)
        self._waiting: dict[str, Future] = {}
        """message id -> the future of its response (I/O thread only)."""
        self._lock = threading.Lock()
        self.closed = False
        self._reopen_at = 0.0
        """Monotonic time before which no new session begins (after a refusal)."""

    def __repr__(self) -> str:
        return "<amqp1 RabbitMQ management node>"

    # -- I/O thread ---------------------------------------------------------------------

    def _ensure(self) -> None:
        if self.sender is not None:
            return
        conn = self.loop.conn
        if conn is None:
            raise TransportError("amqp1 connection is down")
        if self not in self.loop.owners:
            self.loop.owners.append(self)
        self.session = conn.session()
        self.session.open()
        props = PropertyDict({symbol("paired"): True})
        sender = self.session.sender(LINK_NAME)
        sender.target.address = NODE
        sender.snd_settle_mode = sender.SND_SETTLED
        sender.rcv_settle_mode = sender.RCV_FIRST
        sender.properties = props
        receiver = self.session.receiver(LINK_NAME)
        receiver.source.address = NODE
        receiver.snd_settle_mode = receiver.SND_SETTLED
        receiver.rcv_settle_mode = receiver.RCV_FIRST
        receiver.properties = props
        sender.open()
        receiver.open()
        receiver.flow(CREDIT)
        self.loop.receivers[receiver.name] = self
        self.loop.refusable[self.session] = self._refused
        self.sender, self.receiver = sender, receiver

    def _send(self, message_id: str, method: str, target: str, body: Any, future: Future) -> None:
        self._ensure()
        message = Message(
            id=message_id, address=target, subject=method, reply_to="$me", inferred=False
        )
        if body is not None:
            message.body = body
        data = message.encode()
        if body is None:
            data += NULL_BODY
        self._waiting[message_id] = future
        delivery = self.sender.delivery(str(next(self._tags)).encode())
        self.sender.stream(data)
        self.sender.advance()
        delivery.settle()

    def on_message(self, message: Message, delivery: Any) -> None:
        delivery.settle()
        link = delivery.link
        if link.credit < CREDIT // 2:
            link.flow(CREDIT - link.credit)
        future = self._waiting.pop(str(message.correlation_id), None)
        if future is None:
            LOG.info("amqp1: management answer to an unknown request %s", message.correlation_id)
            return
        try:
            status = int(str(message.subject))
        except ValueError:
            status = 0
        future.set(Response(status, message.body))

    def _refused(self, why: str) -> None:
        """The broker ended the management session to refuse a request (RabbitMQ 4 does so
        for missing permissions): fail what waits, quoting it; attach again next time."""
        if self.receiver is not None:
            self.loop.receivers.pop(self.receiver.name, None)
        self.session = self.sender = self.receiver = None
        self._reopen_at = time.monotonic() + REOPEN_DELAY
        waiting, self._waiting = self._waiting, {}
        hint = ""
        if "unauthorized-access" in why:
            hint = " (give the URL's user configure, write and read permissions on the vhost)"
        for future in waiting.values():
            future.fail(TransportError(f"the broker refused: {why}{hint}"))

    def connection_lost(self) -> None:
        self.session = self.sender = self.receiver = None
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            future.set(None)  # lost: the caller sends it again after the reconnect

    def restore(self, generation: int) -> None:
        return None  # attached again on the next request

    def end(self) -> None:
        self.closed = True
        session, self.session, self.sender, self.receiver = self.session, None, None, None
        if session is not None:
            session.close()

    # -- any other thread --------------------------------------------------------------

    def request(
        self,
        what: str,
        method: str,
        target: str,
        body: Any = None,
        *,
        ok: tuple[int, ...] = (200, 201, 204),
        deadline: float | None = None,
    ) -> Response:
        """Send a request and wait for its answer; :class:`Refused` for a status outside ``ok``
        (404 is returned, not raised, when listed in ``ok``). TransportError if no answer
        came by ``deadline`` (monotonic; default: the driver's send timeout)."""
        if self.loop.in_io_thread():
            raise RuntimeError("management requests block: never on the I/O thread")
        end = deadline if deadline is not None else time.monotonic() + self.timeout
        while True:
            left = end - time.monotonic()
            if self.loop.closed:
                raise TransportError(f"could not {what}: the amqp1 driver is closed")
            if left <= 0 or not self.loop.up.wait(left):
                raise TransportError(f"could not {what}: the amqp1 connection is down")
            pause = self._reopen_at - time.monotonic()
            if pause > 0 and self.sender is None:
                time.sleep(min(pause, max(0.0, end - time.monotonic())))
            message_id = f"m{next(self._ids)}"
            future = Future()
            try:
                self.loop.call(
                    functools.partial(self._send, message_id, method, target, body, future),
                    max(0.1, end - time.monotonic()),
                    what,
                )
            except TransportError:
                if time.monotonic() >= end:
                    raise
                continue  # the connection dropped meanwhile: again once it is back
            try:
                answer = future.wait(max(0.1, end - time.monotonic()), "the management node")
            except TransportError as exc:
                raise TransportError(f"could not {what}: {exc}") from None
            if answer is None:
                continue  # lost with the connection: idempotent, send it again
            if answer.status not in ok:
                raise Refused(what, answer.status, str(answer.body))
            return answer  # type: ignore[no-any-return]


__all__ = ["NODE", "Management", "Refused", "Response", "path"]
