"""The ``etcd://`` URL: endpoints, key prefix and options.

``etcd://host:2379[,host2:2379]/prefix?option=value``. Parsed once when the
driver is built, so a mistake (unknown option, bad number, bad prefix) raises
InvalidTransportURL naming it before anything connects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from rpclib.exceptions import InvalidTransportURL
from rpclib.transports.url import TransportURL

DEFAULT_PORT: Final = 2379
DEFAULT_PREFIX: Final = "rpclib"
KNOWN_OPTIONS: Final = frozenset(
    {
        "lease_ttl",
        "connect_timeout",
        "request_timeout",
        "send_timeout",
        "retry_backoff",
        "retry_backoff_max",
        "watch_idle",
        "watch_timeout",
        "dead_letter_ttl",
    }
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One etcd member to talk to (several mean failover)."""

    hostname: str
    port: int


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
    send_timeout: float
    """How long one operation retries a cluster that does not answer before TransportError."""
    retry_backoff: float
    retry_backoff_max: float
    watch_idle: float
    """Seconds of silence after which a watch stream is checked with an echo key."""
    watch_timeout: float
    """Seconds the echo may take before the stream is declared dead and re-established."""
    dead_letter_ttl: int


def parse_options(url: TransportURL) -> EtcdOptions:
    """Read an ``etcd://`` URL; InvalidTransportURL names what is wrong."""
    if url.scheme != "etcd":
        raise InvalidTransportURL(str(url), f"scheme {url.scheme!r} is not etcd")
    url.reject_unknown_options(set(KNOWN_OPTIONS))
    for host in url.hosts:
        if host.username is not None or host.password is not None:
            raise InvalidTransportURL(
                str(url),
                "etcd:// does not take credentials in the URL (authentication is "
                "not supported by this driver)",
            )
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
        connect_timeout=url.seconds_option("connect_timeout", 5.0),
        request_timeout=url.seconds_option("request_timeout", 10.0),
        send_timeout=url.seconds_option("send_timeout", 15.0),
        retry_backoff=backoff,
        retry_backoff_max=backoff_max,
        watch_idle=url.seconds_option("watch_idle", 10.0),
        watch_timeout=url.seconds_option("watch_timeout", 5.0),
        dead_letter_ttl=url.int_option("dead_letter_ttl", 7 * 24 * 3600, minimum=2),
    )


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

