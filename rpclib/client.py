"""RPCClient: call, cast and fanout to a target, within a version cap.

``version_cap`` is ``None`` (uncapped), a fixed ``"X.Y"``, or ``"auto"``: the
lowest version the live servers of the target implement, followed as they are
upgraded (see :mod:`rpclib.directory`). A request above the cap is refused
locally with :class:`~rpclib.exceptions.VersionCapError` before anything is
sent. With ``"auto"`` or a fixed cap, versioned objects are also backported to
the versions the live servers advertise; every call states the object versions
this process knows, and its reply is backported to them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from rpclib import envelope
from rpclib.compat import Method
from rpclib.context import checked_ctx
from rpclib.directory import Cap, TopicView
from rpclib.envelope import Envelope, Kind
from rpclib.exceptions import (
    ConnectionLost,
    MaxTimeExceeded,
    MessagingError,
    ReplyTimeout,
    TransportError,
    Undeliverable,
    VersionCapError,
    is_retryable,
)
from rpclib.failures import DEFAULT_ALLOWED_MODULES, from_failure
from rpclib.serializer import Serializer
from rpclib.target import Target
from rpclib.transport import Transport
from rpclib.transports.base import Address, Guarantee
from rpclib.versioning import Version, parse_version

LOG = logging.getLogger("rpclib.client")

AUTO = "auto"
RETRY_BACKOFF = 0.1
RETRY_BACKOFF_MAX = 5.0


class _Unset:
    """Marks a prepare() argument that was not given (None is a valid retry value)."""


_UNSET = _Unset()


@dataclass(frozen=True, slots=True)
class CastFailure:
    """A server's report that a cast could not be handled (rejected or raised)."""

    message_id: str
    method: str
    error: BaseException


CastErrorHandler = Callable[[CastFailure], None]


@dataclass(frozen=True, slots=True)
class _Options:
    timeout: float
    version_cap: str | None
    at_least_once: bool
    allowed_modules: frozenset[str]
    on_cast_error: CastErrorHandler | None = field(default=None)
    retry: int | None = 0
    pipelined: bool = False
    max_time: float | None = None


class RPCClient:
    """Sends requests to ``target``; thread-safe, cheap to :meth:`prepare` copies of.

    ``timeout`` is the inactivity limit of a call: it restarts whenever the
    server sends a progress heartbeat (a long handler keeps its caller waiting
    as long as it works). ``max_time`` (None: no limit) bounds the whole call,
    heartbeats or not: past it the call raises
    :class:`~rpclib.exceptions.MaxTimeExceeded`, and the deadline sent to the
    server is never later than it, so a server drops work whose caller is gone.

    ``retry`` is how often a send that failed with a TransportError is retried
    (with backoff from 0.1 s to 5 s): 0 never (the default; drivers reconnect by
    themselves), None until the call's deadline (for casts: until it succeeds).

    ``pipelined`` (with ``at_least_once``): a cast returns once the driver has
    the message, before the broker confirms it; the driver keeps it until
    confirmed (resending after a reconnect, for up to the driver's send
    timeout). A cast that cannot be stored is reported to ``on_cast_error`` (or
    logged) and raised by the next :meth:`flush`; ``retry`` covers only the
    hand-off to the driver; closing the transport flushes. Without it, an
    at-least-once cast returns only once the broker has stored the message.
    """

    def __init__(
        self,
        transport: Transport,
        target: Target,
        *,
        version_cap: str | None = None,
        timeout: float = 60.0,
        max_time: float | None = None,
        serializer: Serializer | None = None,
        allowed_remote_exmods: Collection[str] = (),
        at_least_once: bool = False,
        on_cast_error: CastErrorHandler | None = None,
        retry: int | None = 0,
        pipelined: bool = False,
    ) -> None:
        if not target.topic:
            raise ValueError(f"an RPC client needs a target with a topic, got {target!r}")
        _check_timeout(timeout)
        _check_max_time(max_time)
        _check_cap(version_cap)
        _check_retry(retry)
        self.transport = transport
        self.target = target
        self.serializer = serializer or Serializer()
        self._options = _Options(
            timeout=float(timeout),
            version_cap=version_cap,
            at_least_once=at_least_once,
            allowed_modules=frozenset(DEFAULT_ALLOWED_MODULES) | frozenset(allowed_remote_exmods),
            on_cast_error=on_cast_error,
            retry=retry,
            pipelined=pipelined,
            max_time=None if max_time is None else float(max_time),
        )

    # --- configuration ------------------------------------------------------------

    def prepare(
        self,
        *,
        exchange: str | None = None,
        topic: str | None = None,
        server: str | None = None,
        namespace: str | None = None,
        version: str | None = None,
        fanout: bool | None = None,
        timeout: float | None = None,
        version_cap: str | None = None,
        at_least_once: bool | None = None,
        retry: int | _Unset | None = _UNSET,
        pipelined: bool | None = None,
        max_time: float | _Unset | None = _UNSET,
    ) -> RPCClient:
        """A copy of this client with the given overrides (``max_time=None`` removes the limit)."""
        overrides: dict[str, str | bool | None] = {
            k: v
            for k, v in {
                "exchange": exchange,
                "topic": topic,
                "server": server,
                "namespace": namespace,
                "version": version,
                "fanout": fanout,
            }.items()
            if v is not None
        }
        if fanout and server is None and self.target.server is not None:
            overrides["server"] = None
        clone = object.__new__(RPCClient)
        clone.transport = self.transport
        clone.serializer = self.serializer
        clone.target = self.target(**overrides) if overrides else self.target
        options = self._options
        if timeout is not None:
            _check_timeout(timeout)
            options = replace(options, timeout=float(timeout))
        if version_cap is not None:
            _check_cap(version_cap)
            options = replace(options, version_cap=version_cap)
        if at_least_once is not None:
            options = replace(options, at_least_once=at_least_once)
        if pipelined is not None:
            options = replace(options, pipelined=pipelined)
        if not isinstance(retry, _Unset):
            _check_retry(retry)
            options = replace(options, retry=retry)
        if not isinstance(max_time, _Unset):
            _check_max_time(max_time)
            options = replace(options, max_time=None if max_time is None else float(max_time))
        clone._options = options
        return clone

    @property
    def timeout(self) -> float:
        return self._options.timeout

    @property
    def max_time(self) -> float | None:
        return self._options.max_time

    @property
    def version_cap(self) -> str | None:
        """The cap in force now (for "auto": what the live servers allow), or None."""
        cap = self._cap(parse_version(self.target.version or "1.0").major)
        return str(cap.version) if cap.version is not None else None

    def can_send_version(self, version: str) -> bool:
        """True if a request at ``version`` is within the cap. Never raises."""
        try:
            requested = parse_version(version)
            cap = self._cap(requested.major)
        except Exception:
            return False
        return not cap.known or (cap.version is not None and cap.version.can_honour(requested))

    # --- sending --------------------------------------------------------------------

    def call(self, ctx: Mapping[str, Any] | None, method: str | Method, **kwargs: Any) -> Any:
        """Send a request and return the result (or raise what the server raised)."""
        if not LOG.isEnabledFor(logging.DEBUG):
            return self._call(ctx, method, kwargs)
        started = time.monotonic()
        try:
            result = self._call(ctx, method, kwargs)
        except BaseException as exc:
            self._log_sent("call", method, ctx, started, exc)
            raise
        self._log_sent("call", method, ctx, started, None)
        return result

    def _call(self, ctx: Mapping[str, Any] | None, method: str | Method, kwargs: Any) -> Any:
        if self.target.fanout:
            raise ValueError("call() needs a single server; fanout targets only take cast()")
        name, version, kwargs = self._negotiate(method, kwargs)
        ctx = checked_ctx(ctx)
        options = self._options
        replies = self.transport.replies
        message_id = envelope.new_message_id()
        now = time.time()
        max_time = options.max_time
        # Without heartbeats the caller gives up after ``timeout``; never after ``max_time``.
        limit = options.timeout if max_time is None else min(options.timeout, max_time)
        deadline = now + limit
        header = {
            envelope.METHOD: name,
            envelope.VERSION: version,
            envelope.CONTEXT: ctx,
            envelope.DEADLINE: deadline,
            envelope.TIMEOUT: options.timeout,
            envelope.REPLY_TO: replies.address,
        }
        if self.target.namespace is not None:
            header[envelope.NAMESPACE] = self.target.namespace
        known = self.serializer.registry.manifest()
        if known:  # the reply's objects come back no newer than these
            header[envelope.OBJECTS] = known
        data = self._encode(Kind.CALL, message_id, header, kwargs)
        address = self._address()
        pending = replies.expect(message_id)
        try:
            self._send(address, data, Guarantee.AT_MOST_ONCE, deadline, pending.fail)
            # The deadline bounds the whole call: the send may have used some of it.
            if not pending.wait(options.timeout, spent=time.time() - now, max_time=max_time):
                if pending.out_of_time:
                    assert max_time is not None
                    raise MaxTimeExceeded(
                        name,
                        str(address),
                        options.timeout,
                        max_time,
                        progress_seen=pending.progress_seen,
                    )
                if pending.disconnected:
                    raise ConnectionLost(
                        f"no reply to {name!r} from {address}: the connection was down "
                        f"at the deadline ({options.timeout:g}s)"
                    )
                raise ReplyTimeout(
                    name, str(address), options.timeout, progress_seen=pending.progress_seen
                )
        finally:
            replies.forget(message_id)
        if pending.error is not None:
            raise pending.error
        env = pending.envelope
        assert env is not None
        return self._result(env, ctx)

    def cast(self, ctx: Mapping[str, Any] | None, method: str | Method, **kwargs: Any) -> None:
        """Send a one-way request (to every server of the topic when fanout)."""
        # Inline, not wrapped: casts are the hot path, and DEBUG off must cost nothing more.
        started = time.monotonic() if LOG.isEnabledFor(logging.DEBUG) else 0.0
        try:
            name, version, kwargs = self._negotiate(method, kwargs)
            ctx = checked_ctx(ctx)
            options = self._options
            message_id = envelope.new_message_id()
            header: dict[str, Any] = {
                envelope.METHOD: name,
                envelope.VERSION: version,
                envelope.CONTEXT: ctx,
            }
            if self.target.namespace is not None:
                header[envelope.NAMESPACE] = self.target.namespace
            at_least_once = options.at_least_once and not self.target.fanout
            if at_least_once:
                header[envelope.AT_LEAST_ONCE] = True
            if options.on_cast_error is not None:
                header[envelope.REPLY_TO] = self.transport.replies.address
                self.transport.replies.watch_cast(
                    message_id, self._cast_error_adapter(options.on_cast_error), ttl=3600.0
                )
            data = self._encode(Kind.CAST, message_id, header, kwargs)
            if at_least_once and options.pipelined:
                self._send_pipelined(name, message_id, data)
            else:
                guarantee = Guarantee.AT_LEAST_ONCE if at_least_once else Guarantee.AT_MOST_ONCE
                self._send(self._address(), data, guarantee, None)
        except BaseException as exc:
            if started:
                self._log_sent("cast", method, ctx, started, exc)
            raise
        if started:
            self._log_sent("cast", method, ctx, started, None)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every pipelined cast on this client's transport is stored.

        Raises TimeoutError if some are still unconfirmed after ``timeout``
        seconds, TransportError naming those that failed since the last flush.
        """
        self.transport.flush(timeout)

    # --- internals ----------------------------------------------------------------------

    def _log_sent(
        self,
        kind: str,
        method: str | Method,
        ctx: Mapping[str, Any] | None,
        started: float,
        error: BaseException | None,
    ) -> None:
        """The DEBUG line of one call or cast: what, where, how long, how it ended, for whom."""
        name = method.name if isinstance(method, Method) else method
        version = self.target.version or "1.0"
        if isinstance(method, Method):
            try:
                version = self._negotiate(method, {})[1]
            except Exception:
                version = f"<={method.newest}"
        outcome = "ok" if error is None else f"{type(error).__name__}: {error}"
        request_id = ctx.get("request_id") if isinstance(ctx, Mapping) else None
        LOG.debug(
            "%s %s v%s to %s: %s in %.1f ms (request_id=%s)",
            kind,
            name,
            version,
            self._address(),
            outcome,
            (time.monotonic() - started) * 1000.0,
            request_id,
        )

    def _send(
        self,
        address: Address,
        data: bytes,
        guarantee: Guarantee,
        deadline: float | None,
        on_undeliverable: Callable[[Undeliverable], None] | None = None,
    ) -> None:
        """Hand to the driver, retrying transport errors per ``retry`` (never past the deadline)."""
        self._retrying(
            address,
            deadline,
            lambda: self.transport.driver.send(
                address,
                data,
                guarantee=guarantee,
                expires_at=deadline,
                on_undeliverable=on_undeliverable,
            ),
        )

    def _retrying(self, address: Address, deadline: float | None, send: Callable[[], None]) -> None:
        """Run ``send``, retrying a TransportError as ``retry`` says (never past the deadline)."""
        retry = self._options.retry
        attempt = 0
        while True:
            try:
                send()
                return
            except TransportError as exc:
                if not is_retryable(exc):
                    raise  # e.g. the account may not send there: no retry can fix it
                attempt += 1
                pause = min(RETRY_BACKOFF * 2 ** (attempt - 1), RETRY_BACKOFF_MAX)
                out_of_time = deadline is not None and time.time() + pause >= deadline
                if (retry is not None and attempt > retry) or out_of_time or self.transport.closed:
                    raise
                LOG.warning(
                    "send to %s failed (%s); retry %d in %.2fs", address, exc, attempt, pause
                )
                time.sleep(pause)

    def _send_pipelined(self, name: str, message_id: bytes, data: bytes) -> None:
        address = self._address()
        handler = self._options.on_cast_error
        on_failure: Callable[[BaseException], None] | None = None
        if handler is not None:

            def on_failure(error: BaseException) -> None:
                handler(CastFailure(message_id.hex(), name, error))

        what = f"{name!r} to {address} ({message_id.hex()})"
        # ``retry`` covers the hand-off (e.g. no connection within the driver's send
        # timeout); once taken on, the driver itself resends until confirmed.
        self._retrying(
            address,
            None,
            lambda: self.transport.pipeline.send(address, data, what=what, on_failure=on_failure),
        )

    def _address(self) -> Address:
        t = self.target
        assert t.topic is not None
        return Address(
            t.exchange or self.transport.default_exchange, t.topic, server=t.server, fanout=t.fanout
        )

    def _cap(self, major: int) -> Cap:
        cap = self._options.version_cap
        if cap is None:
            return Cap(None, False, "no version cap")
        if cap != AUTO:
            return Cap(parse_version(cap), True, "fixed version cap")
        view, server = self._live_view()
        return view.cap(self.target.namespace, major, server)

    def _live_view(self) -> tuple[TopicView, str | None]:
        """The directory view of the target's topic, and the server to ask it about."""
        t = self.target
        assert t.topic is not None
        view = self.transport.directory.view(t.exchange or self.transport.default_exchange, t.topic)
        return view, None if t.fanout else t.server

    def _negotiate(
        self, method: str | Method, kwargs: dict[str, Any]
    ) -> tuple[str, str, dict[str, Any]]:
        """Choose the version to send and check it against the cap (before sending)."""
        if isinstance(method, Method):
            cap = self._cap(method.newest.major)
            chosen = method.version_for(cap.version if cap.known else None)
            if cap.known and (cap.version is None or chosen < parse_version(method.since)):
                raise VersionCapError(method.name, method.since, _text(cap.version), cap.reason)
            return method.name, str(chosen), method.arguments_for(chosen, kwargs)
        if not isinstance(method, str) or not method:
            raise TypeError(f"method must be a name or an rpclib.Method, got {method!r}")
        version = self.target.version or "1.0"
        requested = parse_version(version)
        cap = self._cap(requested.major)
        if cap.known and (cap.version is None or not cap.version.can_honour(requested)):
            raise VersionCapError(method, version, _text(cap.version), cap.reason)
        return method, version, kwargs

    def _encode(
        self, kind: Kind, message_id: bytes, header: dict[str, Any], kwargs: dict[str, Any]
    ) -> bytes:
        manifest = None
        if self._options.version_cap is not None:
            # "auto", or a pinned interface version: either way objects go at the versions
            # the live servers advertise (a pin holds the interface, not the objects).
            view, server = self._live_view()
            manifest = view.object_manifest(server)
        return envelope.encode(
            self.serializer,
            kind,
            message_id,
            header,
            kwargs,
            manifest=manifest,
            max_size=self.transport.max_message_size,
            scope=self.target.topic or "",
        )

    def _result(self, env: Envelope, ctx: Mapping[str, Any]) -> Any:
        body = env.body(self.serializer, ctx)
        if env.get(envelope.FAILED):
            if not isinstance(body, dict):
                raise MessagingError(f"server sent a failure of unexpected shape: {body!r:.200}")
            raise from_failure(body, self._options.allowed_modules)
        return body

    def _cast_error_adapter(self, handler: CastErrorHandler) -> Callable[[Envelope], None]:
        allowed = self._options.allowed_modules

        def report(env: Envelope) -> None:
            body = env.body(self.serializer)
            error = (
                from_failure(body, allowed)
                if isinstance(body, dict)
                else MessagingError(f"cast failed: {body!r:.200}")
            )
            handler(CastFailure(env.message_id.hex(), str(env.get(envelope.METHOD)), error))

        return report

    def __repr__(self) -> str:
        return f"<RPCClient {self.target!r} cap={self._options.version_cap!r}>"


def _text(version: Version | None) -> str | None:
    return None if version is None else str(version)


def _check_timeout(timeout: float) -> None:
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")


def _check_max_time(max_time: float | None) -> None:
    if max_time is not None:
        try:
            _check_timeout(max_time)
        except ValueError:
            raise ValueError(
                f"max_time must be None (no limit) or a positive number of seconds, "
                f"got {max_time!r}"
            ) from None


def _check_retry(retry: int | None) -> None:
    if retry is not None and (type(retry) is not int or retry < 0):
        raise ValueError(f"retry must be None (until the deadline) or an int >= 0, got {retry!r}")


def _check_cap(cap: str | None) -> None:
    if cap is not None and cap != AUTO:
        parse_version(cap)
