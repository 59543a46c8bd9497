"""The ``rabbit://`` / ``rabbits://`` URL: hosts, credentials, vhost and options.

Parsed once when the driver is built, so every mistake (an unknown option, a
bad number, a missing PEM file) raises InvalidTransportURL naming it before
anything connects. The ``ssl*`` options are read by :mod:`rpclib.transports.tls`,
shared with ``amqps://``. Nothing here imports py-amqp.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Final

from rpclib.exceptions import InvalidTransportURL
from rpclib.transports.tls import build_tls_context, tls_wanted
from rpclib.transports.url import TransportURL

DEFAULT_PORT: Final = 5672
DEFAULT_TLS_PORT: Final = 5671
DEFAULT_USER: Final = "guest"
QUEUE_TYPES: Final = ("auto", "classic", "quorum")
KNOWN_OPTIONS: Final = frozenset(
    {
        "heartbeat",
        "ssl",
        "ssl_ca",
        "ssl_cert",
        "ssl_key",
        "ssl_verify",
        "queue_type",
        "prefetch",
        "connect_timeout",
        "retry_backoff",
        "retry_backoff_max",
        "send_timeout",
        "advert_sync_wait",
        "confirm_window",
        "old_peers",
    }
)


@dataclass(frozen=True, slots=True)
class BrokerHost:
    """One broker to try, with the credentials the URL gave for it."""

    hostname: str
    port: int
    userid: str
    password: str

    @property
    def address(self) -> str:
        """``host:port`` as py-amqp wants it (IPv6 literals bracketed)."""
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RabbitOptions:
    """Everything the driver reads from its URL."""

    hosts: tuple[BrokerHost, ...]
    virtual_host: str
    heartbeat: int
    tls: ssl.SSLContext | None
    queue_type: str
    """``classic`` or ``quorum`` for at-least-once queues (``auto`` already resolved)."""
    prefetch: int | None
    connect_timeout: float
    retry_backoff: float
    retry_backoff_max: float
    send_timeout: float
    advert_sync_wait: float
    confirm_window: int = 1024
    queue_type_source: str = "queue_type=classic"
    """How ``queue_type`` was chosen, for error messages (e.g. ``queue_type=auto with 3 hosts``)."""
    old_peers: bool = False
    """Drivers of the release before ``rpclib.queues`` share the vhost (a rolling upgrade):
    also reply through the default exchange to their inboxes, and also publish and
    accept adverts keyed by the topic alone. Needs the permissions ``rpclib-access
    apply`` grants with the same option (docs/transports/rabbit.md "Rolling upgrade")."""

    @property
    def principal(self) -> str:
        """The first host's user: the first part of the names of this driver's private
        queues (docs/transports/rabbit.md). The ``user_id`` of what it sends is always
        the user of the connection it goes out on."""
        return self.hosts[0].userid


def parse_options(url: TransportURL) -> RabbitOptions:
    """Read a ``rabbit://`` or ``rabbits://`` URL; InvalidTransportURL names what is wrong."""
    if url.scheme not in ("rabbit", "rabbits"):
        raise InvalidTransportURL(str(url), f"scheme {url.scheme!r} is not rabbit or rabbits")
    url.reject_unknown_options(set(KNOWN_OPTIONS))
    use_tls = tls_wanted(url, "rabbits")
    port = DEFAULT_TLS_PORT if use_tls else DEFAULT_PORT
    hosts = tuple(
        BrokerHost(
            hostname=host.hostname,
            port=host.port if host.port is not None else port,
            userid=host.username if host.username is not None else DEFAULT_USER,
            password=host.password if host.password is not None else DEFAULT_USER,
        )
        for host in url.hosts
    ) or (BrokerHost("localhost", port, DEFAULT_USER, DEFAULT_USER),)
    check_principal_user(str(url), hosts)
    queue_type_option = url.option("queue_type", "auto") or "auto"
    if queue_type_option not in QUEUE_TYPES:
        raise InvalidTransportURL(
            str(url),
            f"option queue_type={queue_type_option!r} must be one of {', '.join(QUEUE_TYPES)}",
        )
    queue_type, queue_type_source = resolve_queue_type(queue_type_option, len(hosts))
    prefetch_text = url.option("prefetch")
    backoff = url.seconds_option("retry_backoff", 0.2)
    backoff_max = url.seconds_option("retry_backoff_max", 5.0)
    if backoff_max < backoff:
        raise InvalidTransportURL(
            str(url), f"option retry_backoff_max={backoff_max:g} is below retry_backoff={backoff:g}"
        )
    return RabbitOptions(
        hosts=hosts,
        virtual_host=url.virtual_host or "/",
        heartbeat=url.int_option("heartbeat", 15, minimum=0),
        tls=build_tls_context(url) if use_tls else None,
        queue_type=queue_type,
        prefetch=url.int_option("prefetch", 0, minimum=1) if prefetch_text is not None else None,
        connect_timeout=url.seconds_option("connect_timeout", 5.0),
        retry_backoff=backoff,
        retry_backoff_max=backoff_max,
        send_timeout=url.seconds_option("send_timeout", 15.0),
        advert_sync_wait=url.seconds_option("advert_sync_wait", 0.3, positive=False),
        confirm_window=url.int_option("confirm_window", 1024, minimum=1),
        queue_type_source=queue_type_source,
        old_peers=url.bool_option("old_peers", False),
    )


MAX_USER_BYTES: Final = 64
"""Room left in a 255-byte queue name for ``rpclib.reply.<user>.<host>.<pid>.<n>``."""
_NAME_RESERVED: Final = ("#", "*", "@", ".")


def check_principal_user(url: str, hosts: tuple[BrokerHost, ...]) -> None:
    """Every user of the URL can start private queue names.

    The broker stamps the connection's user on every message as its verified
    sender, and permissions grant a principal its queues by name prefix; a
    ``.`` in it would let one user's prefix match another's queues. (Private
    queues are named after the first host's user: hosts that log in as
    another user need permissions for that name.)
    """
    for user in sorted({host.userid for host in hosts}):
        bad = [c for c in _NAME_RESERVED if c in user]
        if not user or bad or len(user.encode()) > MAX_USER_BYTES:
            raise InvalidTransportURL(
                url,
                f"user {user!r} cannot name this driver's private queues: use 1-"
                f"{MAX_USER_BYTES} bytes without {' '.join(_NAME_RESERVED)}",
            )


def resolve_queue_type(option: str, host_count: int) -> tuple[str, str]:
    """``(queue type, how it was chosen)``: ``auto`` is quorum for a cluster, else classic.

    Several hosts in the URL mean a cluster, where at-least-once queues must
    survive the loss of a node (quorum queues replicate); one host means a
    single node, where classic queues are cheaper and quorum ones add nothing.
    """
    if option != "auto":
        return option, f"queue_type={option}"
    if host_count > 1:
        return "quorum", f"queue_type=auto with {host_count} hosts"
    return "classic", "queue_type=auto with one host"
