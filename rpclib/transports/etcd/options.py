"""The ``etcd://`` and ``etcds://`` URL: endpoints, credentials, key prefix and options.

``etcd[s]://[user:password@]host:2379[,host2:2379]/prefix?option=value``.
Parsed once when the driver is built, so a mistake (unknown option, bad
number, bad prefix, unreadable PEM file) raises InvalidTransportURL naming
it before anything connects. ``etcds://`` (or ``ssl=true``) is TLS; see
tls.py for the ``ssl*`` options.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Final

from rpclib.exceptions import InvalidTransportURL
from rpclib.transports.tls import TLS_OPTIONS, build_tls_context, tls_wanted
from rpclib.transports.url import TransportURL

SCHEMES: Final = ("etcd", "etcds")
TLS_SCHEME: Final = "etcds"

DEFAULT_PORT: Final = 2379
DEFAULT_PREFIX: Final = "rpclib"
KNOWN_OPTIONS: Final = frozenset(
    {
        "lease_ttl",
        "connect_timeout",
        "request_timeout",
        "stall_timeout",
        "send_timeout",
        "retry_backoff",
        "retry_backoff_max",
        "watch_idle",
        "watch_timeout",
        "dead_letter_ttl",
        "dead_letter_limit",
        *TLS_OPTIONS,
    }
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One etcd member to talk to (several mean failover)."""

    hostname: str
    port: int


@dataclass(frozen=True, slots=True)
class Credentials:
    """An etcd user (v3 auth): one for the whole cluster, whichever member is asked."""

    user: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class EtcdOptions:
    """Everything the driver reads from its URL."""

    endpoints: tuple[Endpoint, ...]
    prefix: str
    """The root of every key, e.g. ``/rpclib/`` (always starts and ends with ``/``)."""
    lease_ttl: int
    """Seconds the driver's lease (its consumers, claims, inboxes) outlives a dead process."""
    connect_timeout: float
    request_timeout: float
    """The most one HTTP request may take (the stall timeout doubles up to this)."""
    stall_timeout: float
    """Seconds a request may go unanswered before it is left for the next member."""
    send_timeout: float
    """How long one operation retries a cluster that does not answer before TransportError."""
    retry_backoff: float
    retry_backoff_max: float
    watch_idle: float
    """Seconds of silence after which a watch stream is checked with an echo key."""
    watch_timeout: float
    """Seconds the echo may take before the stream is declared dead and re-established."""
    dead_letter_ttl: int
    dead_letter_limit: int = 10_000
    """Dead letters kept under the prefix; the oldest beyond it are deleted."""
    tls: ssl.SSLContext | None = None
    """The client TLS context (``etcds://`` or ``ssl=true``); None for plain HTTP."""
    credentials: Credentials | None = None
    """The etcd user to authenticate as (``user:password@`` in the URL)."""

    @property
    def protocol(self) -> str:
        return "https" if self.tls is not None else "http"


def parse_options(url: TransportURL) -> EtcdOptions:
    """Read an ``etcd://`` or ``etcds://`` URL; InvalidTransportURL names what is wrong."""
    if url.scheme not in SCHEMES:
        raise InvalidTransportURL(str(url), f"scheme {url.scheme!r} is not etcd or etcds")
    url.reject_unknown_options(set(KNOWN_OPTIONS))
    use_tls = tls_wanted(url, TLS_SCHEME)
    credentials = _credentials(url)
    endpoints = tuple(
        Endpoint(host.hostname, host.port if host.port is not None else DEFAULT_PORT)
        for host in url.hosts
    ) or (Endpoint("127.0.0.1", DEFAULT_PORT),)
    backoff = url.seconds_option("retry_backoff", 0.1)
    backoff_max = url.seconds_option("retry_backoff_max", 2.0)
    if backoff_max < backoff:
        raise InvalidTransportURL(
            str(url), f"option retry_backoff_max={backoff_max:g} is below retry_backoff={backoff:g}"
        )
    return EtcdOptions(
        endpoints=endpoints,
        prefix=_prefix(url),
        lease_ttl=url.int_option("lease_ttl", 10, minimum=2),
        connect_timeout=url.seconds_option("connect_timeout", 2.0),
        request_timeout=url.seconds_option("request_timeout", 10.0),
        stall_timeout=url.seconds_option("stall_timeout", 2.0),
        send_timeout=url.seconds_option("send_timeout", 15.0),
        retry_backoff=backoff,
        retry_backoff_max=backoff_max,
        watch_idle=url.seconds_option("watch_idle", 10.0),
        watch_timeout=url.seconds_option("watch_timeout", 5.0),
        dead_letter_ttl=url.int_option("dead_letter_ttl", 7 * 24 * 3600, minimum=2),
        dead_letter_limit=url.int_option("dead_letter_limit", 10_000, minimum=1),
        tls=build_tls_context(url) if use_tls else None,
        credentials=credentials,
    )


def _credentials(url: TransportURL) -> Credentials | None:
    """The URL's ``user:password``: one user for the cluster, on one host or the same on all."""
    found: set[tuple[str | None, str | None]] = {
        (host.username, host.password)
        for host in url.hosts
        if host.username is not None or host.password is not None
    }
    if not found:
        return None
    if len(found) > 1:
        raise InvalidTransportURL(
            str(url),
            "hosts give different credentials; etcd has one user database per cluster: "
            "give user:password once (on the first host) or the same on every host",
        )
    ((user, password),) = found
    if user is None:
        raise InvalidTransportURL(str(url), "a password without a user name")
    if password is None:
        raise InvalidTransportURL(str(url), f"user {user!r} has no password in the URL")
    return Credentials(user, password)


def _prefix(url: TransportURL) -> str:
    """``/name/`` from the URL path; segments must be non-empty and printable."""
    path = url.virtual_host.strip("/") or DEFAULT_PREFIX
    segments = path.split("/")
    for segment in segments:
        if not segment or not segment.isprintable() or segment != segment.strip():
            raise InvalidTransportURL(
                str(url), f"key prefix {url.virtual_host!r} has an empty or unprintable segment"
            )
    return "/" + "/".join(segments) + "/"
