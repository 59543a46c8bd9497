"""How each queue the driver owns is declared, and what a refused declaration means.

Queue types follow what each queue is for (docs/transports/rabbit.md, "Queue
types"), and use none of RabbitMQ's deprecated features (transient
non-exclusive queues, global QoS, queue master locators, queue modes, CQv1),
so the same declarations work on RabbitMQ 3.10 and on 4.x with every
deprecated feature denied:

- ``private`` (fanout) and ``server-live`` (``X.T@S.live``): exclusive,
  auto-delete; they belong to one connection and vanish with it, so a call to
  a stopped server is unroutable at once.
- ``shared-live`` (``X.T.live``, consumed by every server of the topic):
  durable with an ``x-expires`` backstop; auto-delete on classic. Quorum
  queues cannot be auto-delete: there ``x-expires`` alone removes the queue
  ``LIVE_QUEUE_EXPIRES_MS`` after its last consumer left.
- ``durable`` (at-least-once targets): classic or quorum (``queue_type``).
- reply inboxes (:func:`declare_reply_queue`): durable classic with
  ``x-expires``, so they outlive a reconnect but not a dead process.
- the dead-letter queue (:func:`dead_letter_queue_arguments`): durable,
  ``queue_type``, bounded by ``x-max-length``/``x-max-length-bytes`` with
  ``x-overflow=drop-head`` (the oldest dead letters go first), so a node
  flooding a server with garbage cannot grow the broker's storage without end.

A broker that refuses a declaration raises :class:`DeclarationRefused`: a
TransportError quoting the broker's code and text and saying what to change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from amqp.exceptions import AccessRefused, AMQPError, NotFound, PreconditionFailed

from rpclib.exceptions import AccessRefused as AccessRefusedError
from rpclib.exceptions import TransportError
from rpclib.transports.rabbit import naming
from rpclib.transports.rabbit.connection import LOG

if TYPE_CHECKING:
    from rpclib.transports.rabbit.io_thread import Session

REPLY_QUEUE_EXPIRES_MS: Final = 3_600_000
"""A reply queue outlives reconnects; a dead process's is collected after an hour."""
LIVE_QUEUE_EXPIRES_MS: Final = 10_000
"""A shared ``.live`` queue unused this long is deleted (the only removal on quorum)."""

ACCESS_REFUSED: Final = 403
REFUSAL_CODES: Final = frozenset({403, 404, 405, 406, 530, 540, 541})
"""Broker replies to a declaration that mean "not this", not "the connection broke"."""
RETRYABLE_CODES: Final = frozenset({404, 405})
"""Refusals that go away by themselves: a queue's home node is down (404), another
connection still holds an exclusive queue (405, e.g. a restarted server's old one)."""


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """One queue a subscription consumes, and how it is declared and bound."""

    name: str
    exchange: str
    routing_key: str
    kind: str  # "durable", "shared-live", "server-live" or "private"


class DeclarationRefused(TransportError):
    """The broker refused to declare or bind a queue; ``code`` is its AMQP reply code."""

    def __init__(self, message: str, code: int, reply_text: str) -> None:
        super().__init__(message)
        self.code = code
        self.reply_text = reply_text

    @property
    def retryable(self) -> bool:
        """Whether the same declaration may succeed later without anyone changing anything."""
        return self.code in RETRYABLE_CODES or (self.code == 404 and "home node" in self.reply_text)


def refusal_of(exc: BaseException) -> tuple[int, str] | None:
    """``(code, text)`` if ``exc`` is the broker refusing a method, else None."""
    if not isinstance(exc, AMQPError):
        return None
    code = getattr(exc, "code", None)
    if not isinstance(code, int) or code not in REFUSAL_CODES:
        return None
    return code, str(getattr(exc, "reply_text", "") or exc)


def queue_declaration(kind: str, queue_type: str) -> tuple[bool, bool, bool, dict[str, Any]]:
    """``(durable, exclusive, auto_delete, arguments)`` of a queue of ``kind``."""
    if kind in ("private", "server-live"):
        return False, True, True, {}
    quorum = queue_type == "quorum"
    args: dict[str, Any] = {"x-queue-type": "quorum" if quorum else "classic"}
    if kind == "durable":
        return True, False, False, args
    if kind == "shared-live":
        args["x-expires"] = LIVE_QUEUE_EXPIRES_MS
        return True, False, not quorum, args
    raise ValueError(f"unknown queue kind {kind!r}")


def durable_queue_arguments(queue_type: str) -> dict[str, Any]:
    return queue_declaration("durable", queue_type)[3]


DEAD_LETTER_MAX_LENGTH: Final = 10_000
"""Dead letters kept per vhost (as memory:// keeps per bus); older ones are dropped."""
DEAD_LETTER_MAX_BYTES: Final = 64 * 1024 * 1024
"""Bodies kept at most in the dead-letter queue, whatever their count."""


def dead_letter_queue_arguments(queue_type: str) -> dict[str, Any]:
    """The dead-letter queue's arguments: durable of ``queue_type``, bounded, dropping the oldest.

    Both classic and quorum queues (RabbitMQ 3.10 to 4.x) take these; none is deprecated.
    """
    return {
        **durable_queue_arguments(queue_type),
        "x-max-length": DEAD_LETTER_MAX_LENGTH,
        "x-max-length-bytes": DEAD_LETTER_MAX_BYTES,
        "x-overflow": "drop-head",
    }


def advice(kind: str, code: int, text: str, queue_type_source: str) -> str:
    """What to change so that a refused declaration of a ``kind`` queue succeeds."""
    if code == 406 and "x-queue-type" in text:
        return (
            f"the queue exists with another type; this driver declares it per {queue_type_source}"
            ": delete the queue once it is drained, or set queue_type to the existing type"
        )
    if code == 406:
        return (
            "the queue exists with other arguments (declared by another rpclib version or "
            "another program): delete it once drained (see 'Queue types' in "
            "docs/transports/rabbit.md)"
        )
    if code == 403:
        return "give the URL's user configure, write and read permission on the vhost"
    if code == 405:
        return "another connection holds this exclusive queue (a previous run of this server?)"
    if code == 404:
        return "the queue's node is down; quorum queues (queue_type=quorum) survive that"
    if code == 541 and "deprecated" in text:
        return "the broker denies a deprecated feature: this rpclib should not use any; report it"
    return "see the broker's log"


class DeclarationAccessRefused(DeclarationRefused, AccessRefusedError):
    """The account may not declare or bind it (403): its permissions say no."""


def refused(what: str, exc: BaseException, kind: str, queue_type_source: str) -> DeclarationRefused:
    """A DeclarationRefused for ``exc`` (a refusal, see :func:`refusal_of`) naming ``what``."""
    refusal = refusal_of(exc)
    assert refusal is not None
    code, text = refusal
    cls = DeclarationAccessRefused if code == ACCESS_REFUSED else DeclarationRefused
    return cls(
        f"RabbitMQ refused to declare {what}: ({code}) {text} -- "
        f"{advice(kind, code, text, queue_type_source)}",
        code,
        text,
    )


def declare_or_find(declare: Callable[[], object], find: Callable[[], object]) -> bool:
    """Run ``declare``; if the account may not (403), accept what the admin declared.

    A least-privilege account may not declare (or delete) what is shared: the
    exchanges, and the queues of listener pools it only sends to; the admin
    declared those (rabbit/access.py). ``find`` is a passive declare, which needs
    no permission and says whether it exists; if not, the refusal stands. Returns
    whether ``declare`` did it (False: found as the admin left it).
    """
    try:
        declare()
        return True
    except AccessRefused as refusal:
        try:
            find()
        except NotFound:
            raise refusal from None
        return False


def declare_queue(session: Session, spec: QueueSpec) -> None:
    """Declare ``spec`` and bind it to its exchange (I/O thread, control channel).

    Raises DeclarationRefused if the broker refuses. A shared ``.live`` queue
    that exists with other arguments (left by an older rpclib) is used as it
    is: it holds no messages that matter and goes when its last consumer does.
    """
    options = session.options
    durable, exclusive, auto_delete, args = queue_declaration(spec.kind, options.queue_type)

    def declare() -> None:
        session.control().queue_declare(
            spec.name,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=args or None,
        )

    def find() -> None:
        session.control().queue_declare(spec.name, passive=True)

    try:
        try:
            if spec.kind != "durable":
                declare()
            elif not declare_or_find(declare, find):
                return  # a listener pool's queue, declared and bound by the admin
        except PreconditionFailed as exc:
            if spec.kind != "shared-live":
                raise
            session.control().queue_declare(spec.name, passive=True)
            LOG.warning(
                "using queue %s as it exists (%s); it is declared anew once it is gone",
                spec.name,
                exc,
            )
        session.control().queue_bind(spec.name, spec.exchange, spec.routing_key)
        bind_by_name(session, spec.name)
    except AMQPError as exc:
        if refusal_of(exc) is None:
            raise
        raise refused(f"queue {spec.name}", exc, spec.kind, options.queue_type_source) from exc


def bind_by_name(session: Session, queue: str) -> None:
    """Bind ``queue`` to ``rpclib.queues`` by its own name (:func:`naming.queue_key`; I/O
    thread, control channel).

    Replies, requeued copies and dead letters reach a queue through that exchange
    only (naming.QUEUES_EXCHANGE), never through the default one.
    """
    session.declare_exchange(naming.QUEUES_EXCHANGE, "topic")
    session.control().queue_bind(queue, naming.QUEUES_EXCHANGE, naming.queue_key(queue))


def declare_reply_queue(session: Session, name: str) -> None:
    """Declare the reply queue ``name``: durable classic with ``x-expires``, bound by its
    name to ``rpclib.queues`` if it is a routed inbox (I/O thread)."""
    try:
        session.control().queue_declare(
            name,
            durable=True,
            exclusive=False,
            auto_delete=False,
            arguments={"x-queue-type": "classic", "x-expires": REPLY_QUEUE_EXPIRES_MS},
        )
        if naming.is_routed_inbox(name):
            bind_by_name(session, name)
    except AMQPError as exc:
        if refusal_of(exc) is None:
            raise
        raise refused(
            f"reply queue {name}", exc, "reply", session.options.queue_type_source
        ) from exc
