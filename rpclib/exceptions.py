"""Every error rpclib raises, in one hierarchy.

Each failure mode has its own class so callers can tell *what happened*
instead of reading one ambiguous timeout: nothing accepted the message,
accepted but no reply in time, version rejected, no such method, the remote
handler raised, the message itself was bad.
"""

from __future__ import annotations

import time
from collections.abc import Sequence


class MessagingError(Exception):
    """Base class of every rpclib error."""


def is_retryable(exc: BaseException) -> bool:
    """False for errors that will fail again however often they are retried.

    A handler of at-least-once messages signals that by raising
    :class:`PermanentError` or any exception whose class (or instance) has
    ``retryable = False``: the message is then dead-lettered at once with the
    error as reason instead of being requeued ``max_attempts`` times.
    """
    return bool(getattr(exc, "retryable", True))


class PermanentError(MessagingError):
    """Raised by a handler: this message can never succeed; dead-letter it now."""

    retryable = False


# --- configuration -------------------------------------------------------


class InvalidTransportURL(MessagingError, ValueError):
    """A transport URL could not be parsed or carries a bad option."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"invalid transport URL {url!r}: {reason}")
        self.url = url
        self.reason = reason


class UnknownTransport(MessagingError, ValueError):
    """No driver is registered for a URL scheme."""

    def __init__(self, scheme: str, known: Sequence[str]) -> None:
        super().__init__(
            f"no transport driver for scheme {scheme!r} "
            f"(known: {', '.join(sorted(known)) or 'none'}; drivers register "
            f"under the 'rpclib.transports' entry-point group)"
        )
        self.scheme = scheme
        self.known = tuple(known)


# --- delivery ------------------------------------------------------------


class TransportError(MessagingError):
    """The transport failed to move a message (connection, broker, I/O)."""


class AccessRefused(TransportError):
    """The broker refused what this account is not permitted to do (its grants or
    permissions). Not retryable: it fails again until an operator changes them.

    Deliberately not an OSError (PermissionError): drivers treat OSErrors as a
    connection failing, and a refusal is an answer, not a lost connection."""

    @property
    def retryable(self) -> bool:
        return False


class ConnectionLost(TransportError):
    """The connection dropped while a call was waiting for its reply."""


class Undeliverable(MessagingError):
    """Nothing accepted the message: no server or queue exists for the target."""

    def __init__(self, address: str, reason: str = "no consumer for this address") -> None:
        super().__init__(f"message to {address} not accepted: {reason}")
        self.address = address
        self.reason = reason


class MessagingTimeout(MessagingError, TimeoutError):
    """Base class of deadline failures."""


class SendTimedOut(TransportError, MessagingTimeout):
    """The transport did not take a message before the message's own deadline.

    A call's deadline bounds its send too: whatever the broker does (down,
    electing a leader, not confirming), a send given a deadline gives up at it
    with this error, rather than block past the time its caller waits.
    """


class sending_before:
    """Around a driver's send: a TransportError once the message's deadline passed is SendTimedOut.

    Drivers bound every phase of a send by the message's ``expires_at``; when
    that bound is what ended it, the caller learns so, whatever broke underneath.
    """

    __slots__ = ("destination", "expires_at")

    def __init__(self, destination: object, expires_at: float | None) -> None:
        self.destination = destination
        self.expires_at = expires_at

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        expires_at = self.expires_at
        if (
            isinstance(exc, TransportError)
            and not isinstance(exc, SendTimedOut)
            and expires_at is not None
            and time.time() >= expires_at - 0.05
        ):
            late = time.time() - expires_at
            raise SendTimedOut(
                f"sending to {self.destination}: not taken before its deadline "
                f"({late:+.3f}s): {exc}"
            ) from exc
        return None


class ReplyTimeout(MessagingTimeout):
    """The request was accepted by the transport but no reply came before the deadline."""

    def __init__(self, method: str, address: str, timeout: float, *, progress_seen: bool) -> None:
        detail = (
            "the server sent progress heartbeats, then went silent"
            if progress_seen
            else "no server reported progress (none picked it up, or it died or is stuck)"
        )
        super().__init__(f"no reply to {method!r} from {address} within {timeout:g}s: {detail}")
        self.method = method
        self.address = address
        self.timeout = timeout
        self.progress_seen = progress_seen


class MaxTimeExceeded(ReplyTimeout):
    """A call ran into its total limit (``max_time``) although its server kept beating.

    Progress heartbeats restart the inactivity ``timeout``; ``max_time`` bounds
    the whole call whatever the server sends, so a handler that is stuck but
    still beats cannot hold its caller forever.
    """

    def __init__(
        self, method: str, address: str, timeout: float, max_time: float, *, progress_seen: bool
    ) -> None:
        beats = (
            "the server was still sending progress heartbeats, so it is working or stuck"
            if progress_seen
            else "no server reported progress"
        )
        MessagingTimeout.__init__(
            self,
            f"no reply to {method!r} from {address} within max_time={max_time:g}s, the call's "
            f"total limit (inactivity timeout={timeout:g}s): {beats}",
        )
        self.method = method
        self.address = address
        self.timeout = timeout
        self.max_time = max_time
        self.progress_seen = progress_seen


# --- versions and dispatch -------------------------------------------------


class UnsupportedVersion(MessagingError):
    """The server does not implement the requested interface version."""

    def __init__(
        self,
        method: str,
        requested: str,
        implemented: Sequence[str],
        namespace: str | None = None,
    ) -> None:
        ns = f" in namespace {namespace!r}" if namespace else ""
        have = ", ".join(implemented) or "none"
        super().__init__(
            f"cannot honour {method!r}{ns} at version {requested}: the server implements {have}"
        )
        self.method = method
        self.requested = requested
        self.implemented = tuple(implemented)
        self.namespace = namespace


class VersionCapError(MessagingError):
    """The client refused locally to send above its version cap."""

    def __init__(self, method: str, requested: str, cap: str | None, why: str = "") -> None:
        cap_text = cap if cap is not None else "none usable"
        suffix = f" ({why})" if why else ""
        super().__init__(
            f"refusing to send {method!r} at version {requested}: "
            f"above the version cap {cap_text}{suffix}"
        )
        self.method = method
        self.requested = requested
        self.cap = cap


class NoSuchMethod(MessagingError, AttributeError):
    """The server has no public method by that name in that namespace."""

    def __init__(self, method: str, namespace: str | None = None) -> None:
        ns = f" in namespace {namespace!r}" if namespace else ""
        super().__init__(f"no such method {method!r}{ns}")
        self.method = method
        self.namespace = namespace


class Forbidden(MessagingError, PermissionError):
    """The server's policy does not allow this sender to call this method.

    Raised for the caller (a refused cast is dead-lettered with this reason);
    the handler never ran. ``rule`` says which rule decided (or that none allowed
    it); ``action`` is "call", or "send" for a notification's event type.
    """

    retryable = False

    def __init__(
        self,
        principal: str | None,
        method: str,
        namespace: str | None = None,
        rule: str = "",
        action: str = "call",
    ) -> None:
        ns = f"{namespace}." if namespace else ""
        who = repr(principal) if principal is not None else "an unauthenticated sender"
        because = f" ({rule})" if rule else ""
        super().__init__(f"{who} may not {action} {ns}{method}{because}")
        self.principal = principal
        self.method = method
        self.namespace = namespace
        self.rule = rule
        self.action = action


class InvalidArguments(MessagingError, TypeError):
    """The arguments do not fit the method's signature or annotated types."""

    def __init__(self, method: str, problem: str) -> None:
        super().__init__(f"bad arguments for {method!r}: {problem}")
        self.method = method
        self.problem = problem


class RemoteError(MessagingError):
    """The remote handler raised an exception the client may not re-create."""

    def __init__(self, exc_type: str, value: str, traceback: str = "") -> None:
        super().__init__(f"remote {exc_type}: {value}")
        self.exc_type = exc_type
        self.value = value
        self.traceback = traceback


# --- the message itself ----------------------------------------------------


class MalformedMessage(MessagingError, ValueError):
    """Bytes that are not a valid rpclib envelope (truncated, random, missing fields)."""


class UnsupportedEnvelope(MalformedMessage):
    """An envelope version this reader does not know.

    A server answers a call of a newer envelope version with this at once (and
    reports a cast to its sender's ``on_cast_error``), reading only the prefix
    every version keeps (see :mod:`rpclib.envelope`): the sender learns that
    the reader is older, not that a server is dead.
    """

    def __init__(self, version: object, supported: object) -> None:
        super().__init__(
            f"envelope version {version!r} is not supported (this reader knows "
            f"versions up to {supported!r})"
        )
        self.version = version
        self.supported = supported


class MessageTooLarge(MessagingError, ValueError):
    """An encoded message exceeds the configured size limit.

    ``at_least``: ``size`` is a lower bound, found before the message was
    encoded (a value that large is refused without building it); ``what``
    names the part that is too large (e.g. an argument).
    """

    def __init__(self, size: int, limit: int, *, at_least: bool = False, what: str = "") -> None:
        bound = "at least " if at_least else ""
        part = f" ({what})" if what else ""
        super().__init__(f"message of {bound}{size} bytes{part} exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit
        self.at_least = at_least
        self.what = what


class SerializationError(MessagingError, TypeError):
    """A value cannot be encoded for the wire.

    When the encoder found where the value sits, ``path`` holds the keys and
    indexes leading to it from the encoded value's top, ``where`` renders
    them, ``type_name`` names the value's type and ``reason`` says why it
    was refused (so a layer that knows the message's layout can name the
    argument instead of an index).
    """

    def __init__(
        self,
        message: str,
        *,
        path: tuple[object, ...] = (),
        where: tuple[str, ...] = (),
        type_name: str = "",
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.path = path
        self.where = where
        self.type_name = type_name
        self.reason = reason


# --- versioned objects -----------------------------------------------------


class ObjectError(MessagingError):
    """Base class of versioned-object errors."""


class FieldTypeError(ObjectError, TypeError):
    """A value of the wrong type was assigned to (or decoded into) a field."""

    def __init__(self, obj_name: str, field: str, expected: str, got: object) -> None:
        super().__init__(
            f"{obj_name}.{field} expects {expected}, got {type(got).__name__} {got!r:.80}"
        )
        self.obj_name = obj_name
        self.field = field
        self.expected = expected


class FieldNotSet(ObjectError, AttributeError):
    """A field without a default was read before it was set."""

    def __init__(self, obj_name: str, field: str) -> None:
        super().__init__(f"{obj_name}.{field} is not set")
        self.obj_name = obj_name
        self.field = field


class UnknownObject(ObjectError, ValueError):
    """The wire names an object class this process has not registered."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown versioned object class {name!r}")
        self.name = name


class IncompatibleObjectVersion(ObjectError, ValueError):
    """An object version this process cannot represent (and no backport was possible)."""

    def __init__(self, name: str, version: str, supported: str, why: str = "") -> None:
        suffix = f": {why}" if why else ""
        super().__init__(
            f"{name} version {version} is not compatible with the local {name} {supported}{suffix}"
        )
        self.name = name
        self.version = version
        self.supported = supported
