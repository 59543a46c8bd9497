"""The ``rabbitmq4`` addressing strategy: RabbitMQ 4's native AMQP 1.0 with v2 addresses.

RabbitMQ 4 speaks AMQP 1.0 itself (no plugin) and 4.3 refuses the v1 address
format of the ``rabbitmq`` strategy. Here every message carries its v2
address in its own ``to`` (``/exchanges/<X>/<key>``, ``/queues/<Q>``) on one
anonymous sender link per settle mode (4.0 ignores ``subject`` on an
``/exchanges/<X>`` link, and a link per key would be a link per address),
receivers attach to ``/queues/<Q>``, and every exchange, queue and
binding is declared over the same AMQP 1.0 connection through the management
node (:mod:`rpclib.transports.amqp1.management`): no AMQP 0-9-1 connection.

Queue types by purpose (none that 4.3 refuses; see docs/transports/amqp1.md):

- exclusive: what belongs to one connection and is rebuilt with it (fanout
  queues, advert queues);
- durable with ``x-expires``: what must outlive a reconnect (reply inboxes),
  or is shared by every process listening at-most-once (the ``.live`` queues,
  also auto-delete: gone with their last consumer);
- durable, ``queue_type`` (classic, or quorum on a cluster): at-least-once
  targets and the dead letters.

An unroutable message comes back ``released`` (RabbitMQ 4), so "nobody can
take this" is the broker's outcome, not a separate question
(:attr:`Addressing.routes_by_outcome`).
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import quote, unquote

from rpclib.exceptions import TransportError
from rpclib.transports.amqp1 import messages
from rpclib.transports.amqp1.addressing import (
    DEAD_LETTER_QUEUE,
    FANOUT,
    LEGACY_DEAD_LETTER_QUEUE,
    LIVE,
    MARK,
    PRIVATE_EXCHANGE,
    Addressing,
    Route,
    Source,
    dead_letter_arguments,
    is_inbox,
    is_routed,
    owned_name,
    queue_name,
    warn_legacy_dead_letters,
)
from rpclib.transports.amqp1.io_thread import LOG, Future
from rpclib.transports.amqp1.management import Management, Refused, path
from rpclib.transports.amqp1.options import Amqp1Options
from rpclib.transports.base import Address

INBOX_EXPIRES_MS: Final = 3_600_000
"""An inbox outlives reconnects; if its process dies it goes after an hour unused."""
LIVE_EXPIRES_MS: Final = 600_000
"""A ``.live`` queue goes with its last consumer, or 10 minutes after it was left unused."""


def _to(exchange: str, key: str) -> str:
    """``/exchanges/<X>/<key>``, both percent-encoded (a message's own ``to`` address)."""
    return f"{path('exchanges', exchange)}/{quote(key, safe='')}"


def _hint(exc: Refused) -> str:
    """What to change, for the refusals a deployment can cause."""
    if exc.status == 403:
        return "; give the URL's user configure, write and read permissions on the vhost"
    if exc.status == 409:
        return (
            "; a node of that name exists with other properties (declared by another "
            "client, or by rpclib with another queue_type): delete it or change queue_type"
        )
    if "deprecated" in exc.reason:
        return "; this broker denies a deprecated feature rpclib should not use: please report"
    return ""


def _not_permitted(exc: TransportError) -> bool:
    """Whether the broker refused for want of permission (a 403 answer, or the session it
    ended with ``unauthorized-access``, as RabbitMQ 4.0 does)."""
    if isinstance(exc, Refused):
        return exc.status == 403
    return "unauthorized-access" in str(exc)


class RabbitMQ4Addressing(Addressing):
    """RabbitMQ 4.x native AMQP 1.0: v2 addresses, topology over the management node."""

    name = "rabbitmq4"
    routes_by_outcome = True
    verifies_user_id = True

    def __init__(self, options: Amqp1Options, management: Management) -> None:
        super().__init__(options)
        self.management = management
        self.exchanges: set[str] = set()

    def hostname(self) -> str:
        return f"vhost:{self.options.virtual_host}"

    def private_name(self, kind: str) -> str:
        return owned_name(self.options, kind)

    # -- requests -----------------------------------------------------------------------

    def _request(self, what: str, method: str, target: str, body: Any = None, **kw: Any) -> Any:
        try:
            return self.management.request(what, method, target, body, **kw)
        except Refused as exc:
            raise Refused(what, exc.status, exc.reason + _hint(exc)) from None

    def _exchange(self, name: str) -> None:
        if name in self.exchanges:
            return
        body = {
            "type": "topic",
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
        }
        try:
            self._request(f"declare exchange {name}", "PUT", path("exchanges", name), body)
        except TransportError as exc:
            if not _not_permitted(exc):
                raise
            # A least-privilege account may not configure the exchanges every principal
            # shares: the operator declared them (rpclib.transports.amqp1.access).
            LOG.debug("exchange %s not ours to declare (%s): provisioned", name, exc)
        self.exchanges.add(name)

    def _queue(
        self,
        name: str,
        *,
        exclusive: bool = False,
        auto_delete: bool = False,
        expires_ms: int | None = None,
        typed: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        arguments: dict[str, Any] = dict(extra or {})
        if expires_ms is not None:
            arguments["x-expires"] = expires_ms
        if typed:
            arguments["x-queue-type"] = self.options.queue_type
        body = {
            "durable": not exclusive,
            "exclusive": exclusive,
            "auto_delete": auto_delete,
            "arguments": arguments,
        }
        self._request(f"declare queue {name}", "PUT", path("queues", name), body)

    def _bind(self, queue: str, exchange: str, key: str) -> None:
        body = {
            "source": exchange,
            "binding_key": key,
            "destination_queue": queue,
            "arguments": {},
        }
        self._request(f"bind queue {queue} to {exchange} ({key})", "POST", "/bindings", body)

    def _by_name(self, queue: str) -> None:
        """Bind ``queue`` to :data:`PRIVATE_EXCHANGE` by its name: how requeued copies, replies
        and advert answers reach it, instead of the default exchange (any queue by name)."""
        self._exchange(PRIVATE_EXCHANGE)
        self._bind(queue, PRIVATE_EXCHANGE, queue)

    def _info(self, name: str) -> dict[str, Any] | None:
        answer = self._request(f"look up queue {name}", "GET", path("queues", name), ok=(200, 404))
        return dict(answer.body) if answer.status == 200 else None

    # -- sending ------------------------------------------------------------------------

    def send_route(self, address: Address, at_least_once: bool) -> Route:
        if address.fanout:
            key = f"{address.topic}{FANOUT}"
        elif address.server is not None:
            key = f"{address.topic}@{address.server}"
        else:
            key = address.topic
        if not at_least_once and not address.fanout:
            key += LIVE
        return Route("", to=_to(address.exchange, key))

    def prepare_send(self, address: Address) -> None:
        self._exchange(address.exchange)

    # -- listening ----------------------------------------------------------------------

    def _durable(self, address: Address, group: str | None) -> str:
        self._exchange(address.exchange)
        name = queue_name(address, group)
        self._queue(name, typed=True)
        key = address.topic if address.server is None else f"{address.topic}@{address.server}"
        self._bind(name, address.exchange, key)
        self._by_name(name)
        return name

    def prepare_listen(self, address: Address, group: str | None) -> list[Source]:
        x, t = address.exchange, address.topic
        self._exchange(x)
        if address.fanout:
            name = self.private_name(f"{x}.{t}{FANOUT}")
            self._queue(name, exclusive=True)
            self._bind(name, x, f"{t}{FANOUT}")
            self._by_name(name)
            return [Source(path("queues", name), settled=False)]
        durable = self._durable(address, group)
        live = queue_name(address, group, live=True)
        self._queue(live, auto_delete=True, expires_ms=LIVE_EXPIRES_MS)
        self._by_name(live)
        key = t if address.server is None else f"{t}@{address.server}"
        self._bind(live, x, f"{key}{LIVE}")
        return [Source(path("queues", durable), False), Source(path("queues", live), True)]

    def declare(self, address: Address, group: str | None) -> None:
        """Declare the durable queue and its bindings; a principal that may not configure it
        (a notifier making sure a listener pool's queue exists) accepts it declared by the
        admin (rpclib.transports.amqp1.access) or by its consumers."""
        try:
            self._durable(address, group)
        except TransportError as exc:
            if not _not_permitted(exc):
                raise
            if self._info(queue_name(address, group)) is None:
                raise TransportError(
                    f"queue {queue_name(address, group)} does not exist and this user may not "
                    "declare it: provision it (rpclib-access apply) or start its listeners"
                ) from exc

    # -- private nodes ------------------------------------------------------------------

    def recreate_private(self, name: str, binds: list[tuple[str, str]]) -> None:
        if is_inbox(name):
            self._queue(name, expires_ms=INBOX_EXPIRES_MS)  # replies wait over a reconnect
            self._by_name(name)
            self._mark(name)
        else:
            self._queue(name, exclusive=True)  # rebuilt with the connection
            self._by_name(name)
        self.bind_private(name, binds)

    def _mark(self, inbox: str) -> None:
        """Put one non-persistent message in the inbox's marker queue.

        The inbox is durable, so it survives a broker restart, but the replies
        in it (non-persistent) do not; the marker queue, durable and never
        consumed, loses its message the same way, which tells
        :meth:`private_exists` that the broker restarted and replies may be lost.
        """
        marker = inbox + MARK
        self._queue(marker, expires_ms=INBOX_EXPIRES_MS)
        self._by_name(marker)
        loop, future = self.management.loop, Future()
        route = self.private_route(marker)
        loop.submit(lambda: loop.send(route, messages.make(b""), on_outcome=future.set))
        what = future.wait(self.options.send_timeout, f"marking inbox {inbox}")
        if what is not None:
            raise TransportError(f"could not mark inbox {inbox}: the broker answered {what}")

    def bind_private(self, name: str, binds: list[tuple[str, str]]) -> None:
        for exchange, key in binds:
            self._exchange(exchange)
            self._bind(name, exchange, key)

    def private_route(self, name: str) -> Route:
        """Through :data:`PRIVATE_EXCHANGE`; a node of an older client (no
        :data:`~rpclib.transports.amqp1.addressing.ROUTED_MARK`) is bound to nothing, so it is
        reached through the default exchange, which only accounts provisioned for a rolling
        upgrade may write (``legacy_default_exchange``)."""
        if is_routed(name):
            return Route("", to=_to(PRIVATE_EXCHANGE, name))
        return Route("", to=path("queues", name))

    def private_source(self, name: str) -> Source:
        return Source(path("queues", name), settled=True)

    def private_exists(self, name: str) -> bool:
        """Whether private node ``name`` survived with everything in it: an inbox whose
        marker lost its message was kept across a broker restart, its replies were not."""
        if self._info(name) is None:
            return False
        if not is_inbox(name):
            return True
        marker = self._info(name + MARK)
        return marker is not None and int(marker.get("message_count", 0)) > 0

    def delete_private(self, name: str) -> None:
        if not self.management.loop.up.is_set():
            return  # exclusive ones went with the connection, inboxes expire
        names = [name, name + MARK] if is_inbox(name) else [name]
        for queue in names:
            try:
                self._request(f"delete queue {queue}", "DELETE", path("queues", queue))
            except Exception as exc:
                LOG.info("could not delete queue %s: %s", queue, exc)

    # -- adverts, dead letters ----------------------------------------------------------

    def adverts_route(self, exchange: str, key: str) -> Route:
        return Route("", to=_to(f"{exchange}.adverts", key))

    def prepare_adverts(self, exchange: str) -> None:
        self._exchange(f"{exchange}.adverts")

    def requeue_route(self, node: str) -> Route:
        return Route("", to=_to(PRIVATE_EXCHANGE, unquote(node.removeprefix("/queues/"))))

    def dead_letter_route(self) -> Route:
        return Route("", to=_to(PRIVATE_EXCHANGE, DEAD_LETTER_QUEUE))

    def dead_letter_source(self) -> Source:
        return Source(path("queues", DEAD_LETTER_QUEUE), settled=False)

    def prepare_dead_letters(self) -> None:
        """Declare and bind the bounded dead-letter queue, or (a least-privilege account)
        find it provisioned; warn if the unbounded one of older releases holds messages."""
        try:
            self._queue(DEAD_LETTER_QUEUE, extra=dead_letter_arguments(self.options.queue_type))
            self._by_name(DEAD_LETTER_QUEUE)
        except TransportError as exc:
            if not _not_permitted(exc):
                raise
            # shared by every principal: declared by the operator for least-privilege accounts
        try:
            legacy = self._info(LEGACY_DEAD_LETTER_QUEUE)
        except TransportError as exc:
            LOG.debug("could not look for %s: %s", LEGACY_DEAD_LETTER_QUEUE, exc)
            return
        warn_legacy_dead_letters(int(legacy.get("message_count", 0)) if legacy else None)

    def dead_letter_count(self) -> int | None:
        info = self._info(DEAD_LETTER_QUEUE)
        return int(info.get("message_count", 0)) if info is not None else 0

    def reset(self) -> None:
        self.exchanges.clear()


__all__ = ["RabbitMQ4Addressing"]
