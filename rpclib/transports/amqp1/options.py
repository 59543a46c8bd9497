"""The ``amqp1://`` / ``amqps://`` / ``qpid://`` URL: hosts, credentials, vhost, options.

Parsed once when the driver is built, so a mistake (unknown option, bad
number, unknown addressing strategy, TLS options without TLS, an unreadable
PEM file) raises InvalidTransportURL naming it before anything connects.
``amqps://`` always means TLS. Nothing here imports proton.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from rpclib.exceptions import InvalidTransportURL
from rpclib.transports.tls import TLS_OPTIONS, TLSConfig, tls_config, tls_wanted
from rpclib.transports.url import TransportURL

SCHEMES: Final = ("amqp1", "amqps", "qpid")
TLS_SCHEME: Final = "amqps"
DEFAULT_PORT: Final = 5672
DEFAULT_TLS_PORT: Final = 5671
DEFAULT_USER: Final = "guest"
ADDRESSING: Final = ("auto", "rabbitmq", "rabbitmq4", "artemis", "qpid")
QUEUE_TYPES: Final = ("auto", "classic", "quorum")
KNOWN_OPTIONS: Final = frozenset(
    {
        "addressing",
        "heartbeat",
        "prefetch",
        "connect_timeout",
        "retry_backoff",
        "retry_backoff_max",
        "send_timeout",
        "advert_sync_wait",
        "route_cache",
        "queue_type",
    }
    | TLS_OPTIONS
)


@dataclass(frozen=True, slots=True)
class PeerHost:
    """One broker or router to try, with the credentials the URL gave for it."""

    hostname: str
    port: int
    user: str
    password: str

    @property
    def address(self) -> str:
        """``host:port`` (IPv6 literals bracketed)."""
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Amqp1Options:
    """Everything the driver reads from its URL."""

    hosts: tuple[PeerHost, ...]
    virtual_host: str
    addressing: str
    heartbeat: float
    prefetch: int | None
    connect_timeout: float
    retry_backoff: float
    retry_backoff_max: float
    send_timeout: float
    advert_sync_wait: float
    route_cache: float
    tls: TLSConfig | None = None
    """None: plaintext. Else every connection (AMQP 1.0 and topology) uses TLS."""
    queue_type: str = "classic"
    """``rabbitmq4``: the type of the durable queues (at-least-once targets, dead letters),
    ``classic`` or ``quorum`` (``auto`` already resolved: :func:`resolve_queue_type`)."""


def parse_options(url: TransportURL) -> Amqp1Options:
    """Read an ``amqp1://``, ``amqps://`` or ``qpid://`` URL; InvalidTransportURL names
    what is wrong. TLS (``amqps://`` or ``ssl=true``) changes the default port to 5671."""
    if url.scheme not in SCHEMES:
        raise InvalidTransportURL(str(url), f"scheme {url.scheme!r} is not amqp1, amqps or qpid")
    url.reject_unknown_options(set(KNOWN_OPTIONS))
    tls = tls_config(url) if tls_wanted(url, TLS_SCHEME) else None
    port = DEFAULT_TLS_PORT if tls is not None else DEFAULT_PORT
    hosts = tuple(
        PeerHost(
            hostname=host.hostname,
            port=host.port if host.port is not None else port,
            user=host.username if host.username is not None else DEFAULT_USER,
            password=host.password if host.password is not None else DEFAULT_USER,
        )
        for host in url.hosts
    ) or (PeerHost("localhost", port, DEFAULT_USER, DEFAULT_USER),)
    addressing = url.option("addressing", "auto") or "auto"
    if addressing not in ADDRESSING:
        raise InvalidTransportURL(
            str(url), f"option addressing={addressing!r} must be one of {', '.join(ADDRESSING)}"
        )
    queue_type = url.option("queue_type", "auto") or "auto"
    if queue_type not in QUEUE_TYPES:
        raise InvalidTransportURL(
            str(url), f"option queue_type={queue_type!r} must be one of {', '.join(QUEUE_TYPES)}"
        )
    backoff = url.seconds_option("retry_backoff", 0.2)
    backoff_max = url.seconds_option("retry_backoff_max", 5.0)
    if backoff_max < backoff:
        raise InvalidTransportURL(
            str(url), f"option retry_backoff_max={backoff_max:g} is below retry_backoff={backoff:g}"
        )
    prefetch = url.int_option("prefetch", 0, minimum=1) if "prefetch" in url.options else None
    return Amqp1Options(
        hosts=hosts,
        virtual_host=url.virtual_host or "/",
        addressing=addressing,
        heartbeat=url.seconds_option("heartbeat", 15.0, positive=False),
        prefetch=prefetch,
        connect_timeout=url.seconds_option("connect_timeout", 5.0),
        retry_backoff=backoff,
        retry_backoff_max=backoff_max,
        send_timeout=url.seconds_option("send_timeout", 15.0),
        advert_sync_wait=url.seconds_option("advert_sync_wait", 0.3, positive=False),
        route_cache=url.seconds_option("route_cache", 1.0, positive=False),
        tls=tls,
        queue_type=resolve_queue_type(queue_type, len(hosts)),
    )


def resolve_queue_type(option: str, host_count: int) -> str:
    """``auto`` (the default) is ``quorum`` when the URL lists several hosts, else ``classic``.

    Several hosts mean a cluster, where at-least-once queues must survive the
    loss of a node (quorum queues replicate); on one node classic queues are
    cheaper and quorum ones add nothing. As ``rabbit://`` does.
    """
    if option != "auto":
        return option
    return "quorum" if host_count > 1 else "classic"
