"""RPCServer: listens on a target and dispatches requests to endpoints.

On the driver's thread a request's envelope header is read (not its body) and
the request queued under its authenticated sender; a bounded thread pool
takes them round robin across senders (a flooding sender delays others by
about one message each), checks the header, and answers (calls) or
dead-letters with the reason (casts) a malformed envelope, a passed
deadline, a refused sender, an unknown method or a version the server cannot
honour before any handler runs. What a sender sends beyond its share of the
queue is looked at on arrival and, if it is malformed or a refused
at-most-once request, shed (see :class:`RPCServer`).

Settlement follows the request's guarantee. At-most-once requests are
acknowledged just before their handler starts, so a crash can never run them
twice. At-least-once casts are acknowledged after their handler returns; a
failing handler's message is requeued, and dead-lettered with the error after
``max_attempts``.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rpclib import envelope
from rpclib.consumer import Consumer, Counters
from rpclib.directory import encode_advert
from rpclib.dispatcher import Dispatcher, MethodEntry
from rpclib.envelope import Envelope, Kind
from rpclib.exceptions import (
    Forbidden,
    MalformedMessage,
    MessageTooLarge,
    MessagingError,
    NoSuchMethod,
    TransportError,
    Undeliverable,
    UnsupportedEnvelope,
    UnsupportedVersion,
    is_retryable,
)
from rpclib.executor import Admission
from rpclib.failures import to_failure
from rpclib.logsummary import SummaryLog
from rpclib.policy import Policy
from rpclib.serializer import Serializer
from rpclib.target import Target
from rpclib.transport import Transport
from rpclib.transports.base import Address, Incoming, Subscription
from rpclib.versioning import parse_version

LOG = logging.getLogger("rpclib.server")


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What a handler may want to know about the request it is serving."""

    message_id: str
    method: str
    namespace: str | None
    version: str
    attempts: int
    at_least_once: bool
    deadline: float | None
    sender: str | None = None
    """The principal the transport authenticated as the request's sender (None: it can't)."""


_current: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar(
    "rpclib_request", default=None
)


def current_request() -> RequestInfo | None:
    """The request the calling handler is serving (None outside a handler).

    ``message_id`` is stable across redeliveries: at-least-once receivers use
    it to drop duplicates.
    """
    return _current.get()


@dataclass
class ServerStats(Counters):
    """Counters an operator can read (``server.stats``)."""

    handled: int = 0
    failed: int = 0
    rejected: int = 0
    malformed: int = 0
    expired: int = 0
    requeued: int = 0
    dead_lettered: int = 0
    forbidden: int = 0
    shed: int = 0
    """Of the malformed and forbidden: dropped at once, from a sender over its share (no reply,
    no dead letter)."""


class _Heartbeats:
    """Sends progress envelopes for long-running calls from one thread.

    Finished calls are removed lazily (their heap entries are skipped when due),
    so registering a call rarely has to wake the thread: the hot path of a
    short call is a set insert and a heap push.
    """

    def __init__(self, send: Any) -> None:
        self._send = send
        self._heap: list[tuple[float, int, bytes, str, float]] = []
        self._active: set[bytes] = set()
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def add(self, message_id: bytes, reply_to: str, period: float, first: float) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="rpclib-heartbeats", daemon=True
                )
                self._thread.start()
            self._active.add(message_id)
            due = time.monotonic() + first
            wake = not self._heap or due < self._heap[0][0]
            if len(self._heap) > 64 and len(self._heap) > 4 * len(self._active):
                self._heap = [entry for entry in self._heap if entry[2] in self._active]
                heapq.heapify(self._heap)
            heapq.heappush(self._heap, (due, next(self._seq), message_id, reply_to, period))
            if wake:  # otherwise the thread wakes for an earlier beat anyway
                self._cond.notify()

    def remove(self, message_id: bytes) -> None:
        with self._cond:
            self._active.discard(message_id)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if self._heap:
                        wait = self._heap[0][0] - time.monotonic()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
                if self._stopped:
                    return
                _, _, message_id, reply_to, period = heapq.heappop(self._heap)
                if message_id not in self._active:
                    continue
                heapq.heappush(
                    self._heap,
                    (time.monotonic() + period, next(self._seq), message_id, reply_to, period),
                )
            self._send(message_id, reply_to)


class RPCServer(Consumer):
    """Serves ``endpoints`` on ``target`` (topic and server name required).

    Listens on the topic (competing with other servers), on its own server
    address and on the topic's fanout, and advertises its interfaces so that
    clients with ``version_cap="auto"`` can follow it. With a ``policy``
    (:class:`rpclib.Policy`), a request whose authenticated sender the policy
    does not allow is refused before anything else is looked at: a call gets
    :class:`rpclib.Forbidden`, a cast is dead-lettered with the reason, and
    the handler never runs.

    Requests wait for a worker per authenticated sender and are served round
    robin across senders (:mod:`rpclib.fairness`), so one sender's backlog
    delays another's request by about one message, not by the backlog; one
    sender's requests start in the order they arrived. A sender with
    ``sender_limit`` messages waiting (default: ``executor_threads``) is over
    its share: its further messages are looked at as they arrive, and the
    malformed ones and the at-most-once ones the policy refuses are *shed*
    (dropped without a reply or dead letter, counted in ``stats.shed``).
    ``prefetch`` (per subscription; default ``2 * executor_threads + 2 *
    sender_limit``) bounds what waits in all.
    """

    def __init__(
        self,
        transport: Transport,
        target: Target,
        endpoints: Iterable[object],
        *,
        executor_threads: int = 8,
        max_attempts: int = 5,
        serializer: Serializer | None = None,
        advert_interval: float = 10.0,
        prefetch: int | None = None,
        policy: Policy | None = None,
        sender_limit: int | None = None,
    ) -> None:
        if not target.topic or not target.server:
            raise ValueError(f"an RPC server needs a topic and a server name, got {target!r}")
        if max_attempts < 1 or not 0 < advert_interval < math.inf:
            raise ValueError("max_attempts and advert_interval must be positive")
        if sender_limit is not None and sender_limit < 1:
            raise ValueError(f"sender_limit must be positive, got {sender_limit}")
        super().__init__(executor_threads=executor_threads, thread_name=f"rpclib-{target.topic}")
        self.transport = transport
        self.target = target
        self.dispatcher = Dispatcher(endpoints)
        self.serializer = serializer or Serializer()
        self.max_attempts = max_attempts
        self.advert_interval = advert_interval
        self.policy = policy
        self.stats = ServerStats()
        self._log = SummaryLog(LOG)
        self._exchange = target.exchange or transport.default_exchange
        self.sender_limit = sender_limit or executor_threads
        """How many messages of one sender wait for a worker before it is over its share."""
        # Room for a sender's share plus everyone else's: a flooding sender's excess is
        # shed as it arrives, so the window keeps moving past it.
        self._prefetch = prefetch or executor_threads * 2 + self.sender_limit * 2
        self._heartbeats = _Heartbeats(self._send_progress)
        self._advert_stop = threading.Event()
        self._started_at: float | None = None

    @property
    def address(self) -> Address:
        """This server's own address."""
        assert self.target.topic is not None
        return Address(self._exchange, self.target.topic, server=self.target.server)

    def waiting(self, sender: str | None) -> int:
        """How many of ``sender``'s messages wait for a worker (its backlog here)."""
        return self._pool.waiting(sender)

    # --- lifecycle (see rpclib.consumer) ---------------------------------------

    def _subscribe(self) -> list[Subscription]:
        assert self.target.topic is not None
        topic = Address(self._exchange, self.target.topic)
        fanout = Address(self._exchange, self.target.topic, fanout=True)
        driver = self.transport.driver
        return [
            driver.listen(address, self._on_message, prefetch=self._prefetch)
            for address in (self.address, topic, fanout)
        ]

    def _on_started(self) -> None:
        self._started_at = time.time()
        self._advertise()
        threading.Thread(target=self._advert_loop, name="rpclib-advert", daemon=True).start()
        LOG.info(
            "server %s listening on %s/%s, interfaces %s",
            self.target.server,
            self._exchange,
            self.target.topic,
            self.dispatcher.interfaces(),
        )

    def _on_stop(self) -> None:
        self._advert_stop.set()
        try:
            self.transport.driver.withdraw(self.address)
        except TransportError as exc:
            LOG.warning("could not withdraw advert of %s: %s", self.target.server, exc)

    def _on_closed(self) -> None:
        self._log.flush()
        self._advert_stop.set()
        self._heartbeats.stop()

    # --- adverts ---------------------------------------------------------------

    def _advertise(self) -> None:
        assert self.target.server is not None
        body = encode_advert(
            self.target.server,
            self.dispatcher.interfaces(),
            self.serializer.registry.manifest(),
            ttl=self.advert_interval * 3,
            started_at=self._started_at,
        )
        try:
            self.transport.driver.advertise(self.address, body, self.advert_interval * 3)
        except TransportError as exc:
            LOG.warning("advert of %s not published: %s", self.target.server, exc)

    def _advert_loop(self) -> None:
        while not self._advert_stop.wait(self.advert_interval):
            if self.transport.closed:
                LOG.warning("server %s: transport closed, no more adverts", self.target.server)
                return
            self._advertise()

    # --- receiving -------------------------------------------------------------

    def _on_message(self, incoming: Incoming) -> None:
        """Driver thread: read the header, queue the message under its sender (class doc)."""
        sender = incoming.sender
        decoded: Envelope | MessagingError
        try:
            decoded = envelope.decode(incoming.body, max_size=self.transport.max_message_size)
        except (MalformedMessage, MessageTooLarge) as exc:
            decoded = exc
        admission = self._pool.submit_within(
            lambda: self._admit(incoming, decoded), sender, self.sender_limit
        )
        if admission is Admission.ACCEPTED:
            return
        if admission is Admission.CLOSED:
            incoming.requeue()  # shutting down: another server takes it
            return
        self._over_share(incoming, sender, decoded)

    def _over_share(
        self, incoming: Incoming, sender: str | None, decoded: Envelope | MessagingError
    ) -> None:
        """Driver thread: ``sender`` already has its share waiting; look at this one now.

        What is malformed, or at-most-once and refused by the policy, is shed:
        acknowledged without a dead letter or a reply (they would cost as much
        as handling it), counted and summarised in the log. At-least-once
        refusals are dead-lettered as usual. Anything else is queued all the
        same: it is not dropped, and the transport's prefetch bounds how many
        wait.
        """
        if isinstance(decoded, MessagingError):
            self._shed(incoming, sender, f"malformed message: {decoded}", "malformed")
            return
        env = decoded
        if env.kind is not Kind.CALL and env.kind is not Kind.CAST:
            self._shed(incoming, sender, f"unexpected {env.kind.name} envelope", "malformed")
            return
        at_least_once = env.kind is Kind.CAST and bool(env.get(envelope.AT_LEAST_ONCE))
        if self.policy is not None:
            method, namespace = env.header[envelope.METHOD], env.get(envelope.NAMESPACE)
            if type(method) is str and (namespace is None or type(namespace) is str):
                decision = self.policy.check_call(sender, namespace, method)
                if not decision.allowed:
                    if not at_least_once:
                        why = f"{method!r} is forbidden ({decision.rule})"
                        self._shed(incoming, sender, why, "forbidden")
                        return
                    self.stats.add("forbidden")
                    refusal = Forbidden(sender, method, namespace, decision.rule)
                    self._reject(env, incoming, refusal)
                    return
        if not self._pool.submit(lambda: self._admit(incoming, env), sender):
            incoming.requeue()

    def _shed(self, incoming: Incoming, sender: str | None, what: str, kind: str) -> None:
        """Drop it; counted under ``kind`` (malformed, forbidden) as well as ``shed``."""
        self.stats.add(kind)
        self.stats.add("shed")
        self._log.log(
            logging.WARNING,
            f"shed messages from {sender}",
            "server %s: %s already has %d messages waiting (its share); dropping one without "
            "a reply or dead letter: %s",
            self.target.server,
            sender or "an unauthenticated sender",
            self.sender_limit,
            what,
        )
        incoming.ack()

    def _admit(self, incoming: Incoming, decoded: Envelope | MessagingError) -> None:
        """Worker thread, in the sender's turn: check the header, reject, or handle it."""
        if isinstance(decoded, UnsupportedEnvelope):  # a newer sender's: answered from its prefix
            self._unsupported_envelope(incoming, decoded)
            return
        if isinstance(decoded, MessagingError):
            exc = decoded
            self.stats.add("malformed")
            self._log.log(
                logging.ERROR,
                "malformed messages",
                "dead-lettering a malformed message on %s: %s",
                self.target.topic,
                exc,
            )
            incoming.dead_letter(f"malformed message: {exc}")
            return
        env = decoded
        if env.kind is not Kind.CALL and env.kind is not Kind.CAST:
            self.stats.add("malformed")
            self._log.log(
                logging.ERROR,
                "malformed messages",
                "dead-lettering a %s envelope sent to an RPC server",
                env.kind.name,
            )
            incoming.dead_letter(f"unexpected {env.kind.name} envelope at an RPC server")
            return
        method = env.header[envelope.METHOD]
        deadline = env.get(envelope.DEADLINE)
        if deadline is not None and (type(deadline) not in (int, float) or deadline != deadline):
            self.stats.add("malformed")
            self._reject(env, incoming, MalformedMessage(f"bad deadline {deadline!r:.40}"))
            return
        if deadline is not None and time.time() > deadline:
            self._expired(env, incoming, deadline)
            return
        if self.policy is not None and not self._allowed(env, incoming):
            return
        try:
            entry = self.dispatcher.lookup(
                env.get(envelope.NAMESPACE), env.header[envelope.VERSION], method
            )
        except (UnsupportedVersion, NoSuchMethod) as exc:
            self.stats.add("rejected")
            self._reject(env, incoming, exc)
            return
        except (TypeError, AttributeError) as exc:
            self.stats.add("malformed")
            bad = MalformedMessage(f"bad method/version/namespace fields: {exc}")
            self._reject(env, incoming, bad)
            return
        self._handle(env, entry, incoming)

    def _allowed(self, env: Envelope, incoming: Incoming) -> bool:
        """Apply the policy (before lookup, so a refused sender learns nothing of the API)."""
        assert self.policy is not None
        method, namespace = env.header[envelope.METHOD], env.get(envelope.NAMESPACE)
        if type(method) is not str or (namespace is not None and type(namespace) is not str):
            return True  # malformed: the lookup rejects it with the reason
        decision = self.policy.check_call(incoming.sender, namespace, method)
        if decision.allowed:
            return True
        self.stats.add("forbidden")
        self._reject(env, incoming, Forbidden(incoming.sender, method, namespace, decision.rule))
        return False

    def _unsupported_envelope(self, incoming: Incoming, exc: UnsupportedEnvelope) -> None:
        """A newer envelope version: answer its caller (or cast sender) at once from its prefix."""
        stand_in = envelope.read_prefix(incoming.body).stand_in()
        if stand_in is None or stand_in.kind not in (Kind.CALL, Kind.CAST):
            self.stats.add("malformed")
            self._log.log(
                logging.ERROR,
                "malformed messages",
                "dead-lettering a message on %s: %s",
                self.target.topic,
                exc,
            )
            incoming.dead_letter(f"malformed message: {exc}")
            return
        self.stats.add("rejected")
        self._reject(stand_in, incoming, exc)  # a cast is dead-lettered: replayable after upgrade

    def _expired(self, env: Envelope, incoming: Incoming, deadline: float) -> None:
        self.stats.add("expired")
        late = time.time() - deadline
        method = env.header[envelope.METHOD]
        if env.kind is Kind.CAST and env.get(envelope.AT_LEAST_ONCE):
            reason = f"deadline passed {late:.3f}s before {method!r} could start"
            self._log.log(
                logging.WARNING,
                "expired casts",
                "dead-lettering expired cast %s: %s",
                env.message_id.hex(),
                reason,
            )
            incoming.dead_letter(reason)
            self.stats.add("dead_lettered")
        else:
            self._log.log(
                logging.WARNING,
                "expired requests",
                "dropping %s %s for %r: its deadline passed %.3fs ago (the caller gave up)",
                env.kind.name.lower(),
                env.message_id.hex(),
                method,
                late,
            )
            incoming.ack()

    def _reject(self, env: Envelope, incoming: Incoming, exc: MessagingError) -> None:
        """Answer a call, or dead-letter (and report) a cast, with ``exc``."""
        # Refusals are summarised per sender: one flooding node hides only its own.
        who = f" from {exc.principal}" if isinstance(exc, Forbidden) else ""
        if env.kind is Kind.CALL:
            self._log.log(
                logging.WARNING,
                "rejected calls" + who,
                "rejected call %s: %s",
                env.message_id.hex(),
                exc,
            )
            incoming.ack()
            self._reply(env, to_failure(exc, with_traceback=False), failed=True)
            return
        self._log.log(
            logging.ERROR,
            "rejected casts" + who,
            "rejected cast %s, dead-lettering it: %s",
            env.message_id.hex(),
            exc,
        )
        incoming.dead_letter(f"{type(exc).__name__}: {exc}")
        self.stats.add("dead_lettered")
        self._report_cast_failure(env, exc)

    # --- handling ----------------------------------------------------------------

    def _handle(self, env: Envelope, entry: MethodEntry, incoming: Incoming) -> None:
        ctx = env.header[envelope.CONTEXT]
        at_least_once = env.kind is Kind.CAST and bool(env.get(envelope.AT_LEAST_ONCE))
        try:
            if type(ctx) is not dict:
                raise MalformedMessage(f"ctx must be a map, got {type(ctx).__name__}")
            kwargs = env.body(self.serializer, ctx)
            if kwargs is None:
                kwargs = {}
            if type(kwargs) is not dict or not all(type(k) is str for k in kwargs):
                raise MalformedMessage("request arguments must be a map of names to values")
            entry.check(kwargs)
        except MessagingError as exc:
            self.stats.add("malformed")
            self._reject(env, incoming, exc)
            return
        deadline = env.get(envelope.DEADLINE)
        if deadline is not None and time.time() > deadline:
            self._expired(env, incoming, deadline)  # it waited in the pool past its deadline
            return
        if not at_least_once:
            incoming.ack()
        info = RequestInfo(
            message_id=env.message_id.hex(),
            method=entry.name,
            namespace=entry.namespace,
            version=str(env.header[envelope.VERSION]),
            attempts=incoming.attempts,
            at_least_once=at_least_once,
            deadline=env.get(envelope.DEADLINE),
            sender=incoming.sender,
        )
        token = _current.set(info)
        beating = self._start_heartbeats(env)
        started = time.monotonic() if LOG.isEnabledFor(logging.DEBUG) else 0.0
        try:
            result = entry.func(ctx, **kwargs)
        except Exception as exc:
            if started:
                self._log_handled(env, info, ctx, started, f"{type(exc).__name__}: {exc}")
            self.stats.add("failed")
            self._failed(env, incoming, entry, exc, at_least_once)
            return
        finally:
            _current.reset(token)
            if beating:
                self._heartbeats.remove(env.message_id)
        if started:
            self._log_handled(env, info, ctx, started, "ok")
        self.stats.add("handled")
        if env.kind is Kind.CALL:
            self._reply(env, result, failed=False, manifest=self._reply_objects(env, entry))
        elif at_least_once:
            incoming.ack()

    def _log_handled(
        self, env: Envelope, info: RequestInfo, ctx: dict[str, Any], started: float, outcome: str
    ) -> None:
        """The DEBUG line of one handled request: what, where, how long, how it ended, for whom."""
        ns = f"{info.namespace}." if info.namespace else ""
        LOG.debug(
            "handled %s %s%s v%s on %s/%s.%s: %s in %.1f ms (request_id=%s)",
            env.kind.name.lower(),
            ns,
            info.method,
            info.version,
            self._exchange,
            self.target.topic,
            self.target.server,
            outcome,
            (time.monotonic() - started) * 1000.0,
            ctx.get("request_id"),
        )

    def _failed(
        self,
        env: Envelope,
        incoming: Incoming,
        entry: MethodEntry,
        exc: Exception,
        at_least_once: bool,
    ) -> None:
        if env.kind is Kind.CALL:
            LOG.info(
                "call %s of %r raised %s: %s",
                env.message_id.hex(),
                entry.name,
                type(exc).__name__,
                exc,
            )
            self._reply(env, to_failure(exc), failed=True)
            return
        if at_least_once and incoming.attempts < self.max_attempts and is_retryable(exc):
            LOG.warning(
                "cast %r raised %s (attempt %d of %d), requeueing: %s",
                entry.name,
                type(exc).__name__,
                incoming.attempts,
                self.max_attempts,
                exc,
            )
            self.stats.add("requeued")
            incoming.requeue()
            return
        if at_least_once:
            tried = (
                f"after {incoming.attempts} attempts"
                if is_retryable(exc)
                else "permanent error, not retried"
            )
            reason = f"{type(exc).__name__}: {exc} ({tried})"
            LOG.error("dead-lettering cast %r: %s", entry.name, reason, exc_info=exc)
            self.stats.add("dead_lettered")
            incoming.dead_letter(reason)
        else:
            LOG.error("cast %r raised %s: %s", entry.name, type(exc).__name__, exc, exc_info=exc)
        self._report_cast_failure(env, exc)

    def _start_heartbeats(self, env: Envelope) -> bool:
        timeout = env.get(envelope.TIMEOUT)
        if (
            env.kind is not Kind.CALL
            or type(timeout) not in (int, float)
            or not 0 < timeout < math.inf
        ):
            return False
        period = max(timeout / 3.0, 0.01)
        deadline = env.get(envelope.DEADLINE, 0.0)
        remaining = deadline - time.time() if isinstance(deadline, int | float) else timeout
        first = max(min(period, remaining / 2.0), 0.005)
        self._heartbeats.add(env.message_id, env.header[envelope.REPLY_TO], period, first)
        return True

    # --- sending back ----------------------------------------------------------------

    @staticmethod
    def _reply_objects(env: Envelope, entry: MethodEntry) -> Mapping[str, str] | None:
        """The newest object versions the caller can read: what it said it knows, or
        (a caller too old to say) what its interface version's replies carried."""
        known = env.get(envelope.OBJECTS)
        if isinstance(known, dict):
            return {str(name): str(version) for name, version in known.items()}
        if entry.reply_objects:
            return entry.reply_manifest(parse_version(str(env.header[envelope.VERSION])))
        return None

    def _reply(
        self, env: Envelope, result: Any, *, failed: bool, manifest: Mapping[str, str] | None = None
    ) -> None:
        reply_to = env.get(envelope.REPLY_TO)
        if not isinstance(reply_to, str):
            LOG.error("call %s has no usable reply address", env.message_id.hex())
            return
        header = {envelope.FAILED: True} if failed else {}
        try:
            data = envelope.encode(
                self.serializer,
                Kind.REPLY,
                env.message_id,
                header,
                result,
                manifest=manifest,
                max_size=self.transport.max_message_size,
                scope=str(env.header.get(envelope.METHOD)),
            )
        except MessagingError as exc:
            LOG.error("reply to %s cannot be encoded: %s", env.message_id.hex(), exc)
            data = envelope.encode(
                self.serializer,
                Kind.REPLY,
                env.message_id,
                {envelope.FAILED: True},
                to_failure(exc, with_traceback=False),
            )
        self._send_inbox(reply_to, data, env)

    def _send_progress(self, message_id: bytes, reply_to: str) -> None:
        data = envelope.encode(self.serializer, Kind.PROGRESS, message_id, {})
        try:
            self.transport.driver.send_to_inbox(reply_to, data)
        except (Undeliverable, TransportError) as exc:
            LOG.debug("progress heartbeat for %s not delivered: %s", message_id.hex(), exc)

    def _report_cast_failure(self, env: Envelope, exc: BaseException) -> None:
        reply_to = env.get(envelope.REPLY_TO)
        if not isinstance(reply_to, str):
            return
        data = envelope.encode(
            self.serializer,
            Kind.CAST_FAILURE,
            env.message_id,
            {envelope.METHOD: env.header.get(envelope.METHOD, "?")},
            to_failure(exc, with_traceback=not isinstance(exc, MessagingError)),
        )
        self._send_inbox(reply_to, data, env)

    def _send_inbox(self, reply_to: str, data: bytes, env: Envelope) -> None:
        try:
            self.transport.driver.send_to_inbox(reply_to, data)
        except (Undeliverable, TransportError) as exc:
            LOG.warning(
                "could not send back to %s for %s %r: %s",
                reply_to,
                env.kind.name.lower(),
                env.header.get(envelope.METHOD),
                exc,
            )
