"""py-amqp glue: connecting (host failover, TLS, backoff), safe writes, raw publishes.

What this module relies on in py-amqp 5.x (read from its source):

- ``Transport.read_frame`` keeps a partially read frame in ``_read_buffer``
  when a read times out, so a timeout never desynchronises the stream; but
  ``having_timeout``/``settimeout`` change the *socket's* mode, which other
  threads writing on it would see. The consumer connection therefore never
  gets a Python-level timeout after connecting: its reader waits in
  a selector and reads with ``SO_RCVTIMEO`` (py-amqp's ``read_timeout``) as
  the only bound, which affects reads alone.
- ``Channel.basic_publish`` calls ``drain_events(timeout=0)`` first whenever
  the broker supports ``connection.blocked`` (RabbitMQ does): that *reads*
  the socket and sets a timeout from the publishing thread. Publishes here go
  through ``send_method`` directly (:func:`publish`), which only writes.
- ``Connection.drain_events`` loops until a *method* frame completes, so an
  idle reader would block past a heartbeat frame; the I/O thread calls
  ``blocking_read`` (one frame) instead.
- Every write, heartbeats included, goes through ``connection.frame_writer``
  (one call per method plus its content frames); :class:`LockedWriter`
  replaces it so writes from several threads never interleave.
- A broker ``channel.close`` makes py-amqp reply close-ok, *reopen* the
  channel and raise. :class:`BrokerChannel` records the reason and drops the
  channel instead, so a failed channel is never silently reused.
- ``basic.return`` reaches ``channel.events['basic_return']`` listeners,
  confirms reach ``events['basic_ack'/'basic_nack']``; a broker
  ``basic.cancel`` calls the consumer's ``on_cancel`` (with
  ``consumer_cancel_notify``, which py-amqp negotiates).
"""

from __future__ import annotations

import contextlib
import logging
import random
import selectors
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, Final

import amqp
from amqp import spec
from amqp.transport import SSLTransport, TCPTransport

from rpclib.transports.rabbit.options import BrokerHost, RabbitOptions

LOG = logging.getLogger("rpclib.transports.rabbit")

PUBLISH_ARGS: Final = "Bssbb"
"""basic.publish argument signature: ticket, exchange, routing key, mandatory, immediate."""

CONNECTION_ERRORS: Final = (OSError, amqp.exceptions.AMQPError, EOFError)
"""What a dead or misbehaving connection raises from py-amqp (socket.timeout is an OSError)."""


class ConnectionDown(ConnectionError):
    """A write was refused because the connection already failed."""


class BrokerChannel(amqp.Channel):  # type: ignore[misc]
    """A channel that keeps bodies as bytes; dropped, not reopened, when the broker closes it."""

    def __init__(
        self,
        connection: Any,
        channel_id: int | None = None,
        auto_decode: bool = False,
        on_open: Any = None,
    ) -> None:
        super().__init__(connection, channel_id, auto_decode=False, on_open=on_open)
        self.closed_by_broker: str | None = None

    def _on_close(self, reply_code: int, reply_text: str, class_id: int, method_id: int) -> None:
        self.closed_by_broker = f"{reply_code} {reply_text}"
        super()._on_close(reply_code, reply_text, class_id, method_id)

    def _do_revive(self) -> None:
        # py-amqp would reopen the channel here; forget it instead (callers open a new one).
        self.collect()


class _TLSTransport(SSLTransport):  # type: ignore[misc]
    """py-amqp's TLS transport, wrapping with our own SSLContext (and SNI)."""

    def __init__(
        self, host: str, context: ssl.SSLContext, server_hostname: str, **kwargs: Any
    ) -> None:
        self._context = context
        self._server_hostname = server_hostname
        super().__init__(host, **kwargs)

    def _wrap_socket(self, sock: socket.socket, context: Any = None, **sslopts: Any) -> Any:
        return self._context.wrap_socket(
            sock, server_hostname=self._server_hostname, do_handshake_on_connect=False
        )

    def _setup_transport(self) -> None:
        super()._setup_transport()
        # py-amqp leaves the handshake timeout on the socket; go back to blocking mode
        # (reads stay bounded by SO_RCVTIMEO, see the module docstring).
        self.sock.settimeout(None)


class BrokerConnection(amqp.Connection):  # type: ignore[misc]
    """A py-amqp connection with our channel class and TLS context."""

    Channel = BrokerChannel

    def __init__(
        self, host: BrokerHost, options: RabbitOptions, *, name: str, read_timeout: float | None
    ) -> None:
        super().__init__(
            host=host.address,
            userid=host.userid,
            password=host.password,
            virtual_host=options.virtual_host,
            heartbeat=options.heartbeat,
            connect_timeout=options.connect_timeout,
            ssl=options.tls is not None,
            read_timeout=read_timeout,
            write_timeout=options.send_timeout,
            client_properties={"connection_name": name},
        )
        self.rpclib_tls = options.tls
        self.rpclib_hostname = host.hostname

    def Transport(
        self,
        host: str,
        connect_timeout: float | None,
        ssl: Any = False,
        read_timeout: float | None = None,
        write_timeout: float | None = None,
        socket_settings: Any = None,
        **kwargs: Any,
    ) -> Any:
        common = {
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "write_timeout": write_timeout,
            "socket_settings": socket_settings,
        }
        if self.rpclib_tls is None:
            return TCPTransport(host, **common)
        return _TLSTransport(host, self.rpclib_tls, self.rpclib_hostname, **common)


class LockedWriter:
    """Replaces a connection's frame writer: one writer at a time, and none after a failure.

    A failed write may have left half a frame on the socket, so the first
    failure marks the connection broken for every later writer.
    """

    def __init__(self, inner: Callable[..., Any], lock: threading.RLock) -> None:
        self._inner = inner
        self.lock = lock
        self.broken: BaseException | None = None

    def __call__(self, *args: Any) -> Any:
        with self.lock:
            if self.broken is not None:
                raise ConnectionDown(f"connection already failed: {self.broken}")
            try:
                return self._inner(*args)
            except BaseException as exc:
                self.broken = exc
                raise


class HostRing:
    """The URL's hosts in failover order, starting from the last one that worked."""

    def __init__(self, hosts: tuple[BrokerHost, ...]) -> None:
        self._hosts = hosts
        self._current = 0
        self._lock = threading.Lock()

    def order(self) -> list[BrokerHost]:
        with self._lock:
            start = self._current
        return [self._hosts[(start + i) % len(self._hosts)] for i in range(len(self._hosts))]

    def worked(self, host: BrokerHost) -> None:
        with self._lock:
            self._current = self._hosts.index(host)


class Backoff:
    """Doubling delays with full jitter: uniform(0, min(cap, base * 2**attempt))."""

    def __init__(self, base: float, cap: float) -> None:
        self._base = base
        self._cap = cap
        self._attempt = 0
        self._rng = random.Random()

    def next_delay(self) -> float:
        ceiling = min(self._cap, self._base * 2 ** min(self._attempt, 32))
        self._attempt += 1
        return self._rng.uniform(0, ceiling)

    def reset(self) -> None:
        self._attempt = 0


def connect(
    options: RabbitOptions, ring: HostRing, *, name: str, read_timeout: float | None
) -> BrokerConnection:
    """Connect to the first host of ``ring`` that answers; raise the last error if none does."""
    last: BaseException | None = None
    for host in ring.order():
        conn = BrokerConnection(host, options, name=name, read_timeout=read_timeout)
        try:
            conn.connect()
        except (*CONNECTION_ERRORS, ssl.SSLError) as exc:
            LOG.debug("connecting to %s failed: %s", host.address, exc)
            last = exc
            close_quietly(conn)
            continue
        ring.worked(host)
        return conn
    assert last is not None
    raise last


def close_quietly(conn: Any) -> None:
    """Drop a connection without the close handshake (it may already be dead)."""
    try:
        conn.collect()
    except Exception:
        LOG.debug("error while dropping a connection", exc_info=True)


def shutdown_socket(conn: Any) -> None:
    """Unblock any thread reading or writing ``conn`` by shutting its socket down."""
    transport = getattr(conn, "_transport", None)
    sock = getattr(transport, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def publish(
    channel: Any,
    exchange: str,
    routing_key: str,
    body: bytes,
    properties: dict[str, Any],
    *,
    mandatory: bool,
) -> None:
    """Write one basic.publish (method + header + body frames); never reads the socket."""
    channel.send_method(
        spec.Basic.Publish,
        PUBLISH_ARGS,
        (0, exchange, routing_key, mandatory, False),
        amqp.Message(body, **properties),
    )


def body_of(message: Any) -> bytes:
    """A received message's body as bytes (py-amqp gives ``''`` for an empty body)."""
    body = message.body
    return bytes(body) if body else b""


def headers_of(message: Any) -> dict[str, Any]:
    headers = message.properties.get("application_headers")
    return dict(headers) if headers else {}


def buffered(conn: Any) -> bool:
    """Whether bytes already read from the socket wait in py-amqp or TLS buffers."""
    transport = conn._transport
    if transport is None:
        return False
    if transport._read_buffer:
        return True
    pending = getattr(transport.sock, "pending", None)
    return bool(pending is not None and pending())


def readable_now(sock: socket.socket) -> bool:
    """Whether ``sock`` has bytes to read right now (no FD_SETSIZE limit, unlike select())."""
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(0))


def expiration_ms(seconds: float) -> str:
    """An AMQP per-message TTL (milliseconds, as text)."""
    return str(max(0, int(seconds * 1000)))
