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
  idle reader would block past a heartbeat frame; the I/O thread reads one
  frame at a time (``read_frame`` + ``on_inbound_frame``, as ``blocking_read``).
  :class:`_TCPTransport` reads in chunks into ``_read_buffer`` and parses
  frames already buffered without a system call.
- Every write, heartbeats included, goes through ``connection.frame_writer``
  (one call per method plus its content frames); :class:`LockedWriter`
  replaces it so writes from several threads never interleave, and also
  writes frames the driver encoded itself (:class:`PublishEncoder`,
  :func:`encode_settle`: the same bytes py-amqp would write) under the same lock.
- ``basic.deliver`` is decoded by the I/O loop (:func:`parse_deliver`,
  :class:`Delivery`) into what py-amqp's ``Channel._on_basic_deliver`` gives
  consumer callbacks (``body``, ``properties``, ``delivery_info``); the loop
  must finish every delivery it began before py-amqp reads again.
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
import errno
import logging
import random
import select
import socket
import ssl
import struct
import threading
import time
from typing import Any, Final

import amqp
from amqp import spec
from amqp.exceptions import UnexpectedFrame
from amqp.serialization import decode_properties_basic, dumps
from amqp.transport import TCPTransport

from rpclib.transports.py_amqp_tls import ContextTLSTransport
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


_RECV_CHUNK: Final = 16384
"""Bytes asked of each recv: a whole delivery (method, header and body frames) usually
arrives in one, instead of py-amqp's three exact-size reads per frame."""
_FRAME_HEADER = struct.Struct(">BHI")
_RETRY_ERRNOS: Final = (errno.EAGAIN, errno.EINTR)


class _TCPTransport(TCPTransport):  # type: ignore[misc]
    """py-amqp's TCP transport, reading in chunks and parsing buffered frames without I/O.

    A recv on a socket with data returns what is there without waiting for more,
    so asking for more than the frame needs only saves system calls; the surplus
    stays in ``_read_buffer`` (which py-amqp and :func:`buffered` already use).
    """

    _read_buffer: bytes

    def _read(self, n: int, initial: bool = False) -> bytes:
        rbuf = self._read_buffer
        if len(rbuf) >= n:
            result: bytes = rbuf[:n]
            self._read_buffer = rbuf[n:]
            return result
        recv = self._quick_recv
        try:
            while len(rbuf) < n:
                try:
                    s = recv(max(n - len(rbuf), _RECV_CHUNK))
                except OSError as exc:  # as py-amqp's TCPTransport._read
                    if exc.errno in _RETRY_ERRNOS:
                        if initial and self.raise_on_initial_eintr:
                            raise TimeoutError() from None
                        continue
                    raise
                if not s:
                    raise OSError("Server unexpectedly closed connection")
                rbuf += s
        except BaseException:
            self._read_buffer = rbuf
            raise
        result, self._read_buffer = rbuf[:n], rbuf[n:]
        return result

    def read_frame(self, unpack: Any = struct.unpack) -> tuple[int, int, bytes]:
        frame = self._buffered_frame()
        if frame is None:
            # One recv (a chunk), as the first read of py-amqp's read_frame would do;
            # a timeout leaves everything in _read_buffer.
            head = self._read(len(self._read_buffer) + 1, True)
            self._read_buffer = head + self._read_buffer
            frame = self._buffered_frame()
            if frame is None:  # a frame larger than what arrived: py-amqp reads the rest
                return super().read_frame(unpack)  # type: ignore[no-any-return]
        return frame

    def _buffered_frame(self) -> tuple[int, int, bytes] | None:
        """The next frame if it is whole in ``_read_buffer`` (taken out of it), else None."""
        rbuf = self._read_buffer
        if len(rbuf) < 8:
            return None
        frame_type, channel, size = _FRAME_HEADER.unpack_from(rbuf)
        end = 7 + size
        if len(rbuf) <= end:
            return None
        if rbuf[end] != 206:
            raise UnexpectedFrame(f"Received frame_end {rbuf[end]:#04x} while expecting 0xce")
        self._read_buffer = rbuf[end + 1 :]
        return frame_type, channel, rbuf[7:end]


class BrokerConnection(amqp.Connection):  # type: ignore[misc]
    """A py-amqp connection with our channel class and TLS context."""

    Channel = BrokerChannel

    def __init__(
        self,
        host: BrokerHost,
        options: RabbitOptions,
        *,
        name: str,
        read_timeout: float | None,
        connect_timeout: float | None = None,
    ) -> None:
        super().__init__(
            host=host.address,
            userid=host.userid,
            password=host.password,
            virtual_host=options.virtual_host,
            heartbeat=options.heartbeat,
            connect_timeout=options.connect_timeout if connect_timeout is None else connect_timeout,
            ssl=options.tls is not None,
            read_timeout=read_timeout,
            write_timeout=options.send_timeout,
            client_properties={"connection_name": name},
        )
        self.rpclib_tls = options.tls
        self.rpclib_hostname = host.hostname
        self.rpclib_user = host.userid
        """The user this connection logs in as: the ``user_id`` of everything it publishes."""

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
            return _TCPTransport(host, **common)
        return ContextTLSTransport(host, self.rpclib_tls, self.rpclib_hostname, **common)


class LockedWriter:
    """Replaces a connection's frame writer: one writer at a time, and none after a failure.

    A failed write may have left half a frame on the socket, so the first
    failure marks the connection broken for every later writer.
    """

    def __init__(self, conn: Any, lock: threading.RLock) -> None:
        self._inner = conn.frame_writer
        self._conn = conn
        self._write = conn.transport.write
        self.lock = lock
        self.broken: BaseException | None = None

    def write_raw(self, data: bytes) -> None:
        """Write already encoded frames (whole frames only) in one piece."""
        with self.lock:
            if self.broken is not None:
                raise ConnectionDown(f"connection already failed: {self.broken}")
            try:
                self._write(data)
            except BaseException as exc:
                self.broken = exc
                raise
            self._conn.bytes_sent += 1

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

    def next_delay(self) -> float:
        ceiling = min(self._cap, self._base * 2 ** min(self._attempt, 32))
        self._attempt += 1
        # The module's generator: seeding a Random of our own per Backoff cost more than
        # the publish it guarded (a Backoff is made per send).
        return random.uniform(0, ceiling)

    def reset(self) -> None:
        self._attempt = 0


def within(options: RabbitOptions) -> str:
    """How a send's deadline reads in errors."""
    return f"within its deadline (send_timeout {options.send_timeout:g}s, or its expiry if sooner)"


def connect(
    options: RabbitOptions,
    ring: HostRing,
    *,
    name: str,
    read_timeout: float | None,
    deadline: float | None = None,
) -> BrokerConnection:
    """Connect to the first host of ``ring`` that answers; raise the last error if none does.

    With ``deadline`` (monotonic) no attempt outlasts it: each gets at most
    what is left of it, and hosts not tried by then are not tried.
    """
    last: BaseException | None = None
    for host in ring.order():
        connect_timeout = options.connect_timeout
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                last = last or TimeoutError("the send's deadline passed before connecting")
                break
            connect_timeout = min(connect_timeout, left)
        conn = BrokerConnection(
            host, options, name=name, read_timeout=read_timeout, connect_timeout=connect_timeout
        )
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
    """Write one basic.publish (method + header + body frames); never reads the socket.

    ``user_id`` is always the connection's user: RabbitMQ refuses any other, so
    receivers can trust it as the sender (a copy of a received message's
    properties must not carry its original ``user_id`` here).
    """
    properties = {**properties, "user_id": channel.connection.rpclib_user}
    channel.send_method(
        spec.Basic.Publish,
        PUBLISH_ARGS,
        (0, exchange, routing_key, mandatory, False),
        amqp.Message(body, **properties),
    )


_BASIC_PROPERTIES: Final = tuple(
    (key, 1 << (15 - bit), kind) for bit, (key, kind) in enumerate(amqp.Message.PROPERTIES)
)
"""basic content properties in wire order: (name, flag bit, py-amqp type code)."""
_PACK_FRAME_HEAD = struct.Struct(">BHI").pack
_PACK_PUBLISH_HEAD = struct.Struct(">BHIHHH").pack
_PACK_CONTENT_HEADER = struct.Struct(">BHIHHQH").pack
_PACK_ACK = struct.Struct(">BHIHHQBB").pack
_FRAME_END: Final = b"\xce"
_BASIC_CLASS: Final = 60
_ACK_METHOD: Final = 80
_REJECT_METHOD: Final = 90


def _shortstr(value: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > 255:
        raise ValueError(f"AMQP short string longer than 255 bytes: {value[:40]!r}...")
    return bytes((len(data),)) + data


_PROPERTY_BITS: Final = {key: (bit, kind) for key, bit, kind in _BASIC_PROPERTIES}
_MESSAGE_ID_FLAG: Final = _PROPERTY_BITS["message_id"][0]
_USER_ID_FLAG: Final = _PROPERTY_BITS["user_id"][0]
_MESSAGE_ID_AND_USER_ID: Final = _MESSAGE_ID_FLAG | _USER_ID_FLAG
_PACK_DOUBLE_ENTRY = struct.Struct(">Bd").pack


def _encode_table(table: Any) -> bytes:
    """An AMQP field table; a lone float entry (a deadline header) without py-amqp's dumps."""
    if type(table) is dict and len(table) == 1:
        ((key, value),) = table.items()
        if type(key) is str and type(value) is float:
            entry = _shortstr(key) + _PACK_DOUBLE_ENTRY(ord("d"), value)
            return struct.pack(">I", len(entry)) + entry
    return dumps("F", [table])  # type: ignore[no-any-return]


def _encode_properties(
    properties: dict[str, Any], message_id: str | None, user_id: str
) -> tuple[int, bytes]:
    """Property flags and property list of a content header (py-amqp's encoding, less work).

    ``user_id`` replaces any in ``properties`` (see :func:`publish`).
    """
    present = []
    for key, value in properties.items():
        if value is not None and key in _PROPERTY_BITS and key != "user_id":
            present.append((_PROPERTY_BITS[key][0], key, value))
    present.append((_USER_ID_FLAG, "user_id", user_id))
    if message_id is not None:
        present = [entry for entry in present if entry[1] != "message_id"]
        present.append((_MESSAGE_ID_FLAG, "message_id", message_id))
    present.sort(reverse=True)  # higher flag bits come first on the wire
    flags = 0
    parts: list[bytes] = []
    for bit, key, value in present:
        flags |= bit
        kind = _PROPERTY_BITS[key][1]
        if kind == "s":
            parts.append(_shortstr(value))
        elif kind == "o":
            parts.append(bytes((int(value),)))
        elif kind == "F":
            parts.append(_encode_table(value))
        else:
            parts.append(dumps(kind, [value]))
    return flags, b"".join(parts)


class PublishEncoder:
    """Encodes basic.publish (method, header and body frames) into one buffer for one write.

    The method frame of an (exchange, routing key) pair is encoded once per
    channel; properties are encoded directly instead of through py-amqp's
    generic ``Message``. Bodies that need several body frames are not
    encoded (``None``): py-amqp's writer splits them. Every publish carries
    ``user_id``, the connection's user (see :func:`publish`).
    """

    _CACHE_LIMIT: Final = 512

    def __init__(self, channel_id: int, frame_max: int, user_id: str) -> None:
        self.channel_id = channel_id
        self._max_body = frame_max - 8
        self._methods: dict[tuple[str, str, bool], bytes] = {}
        self.user_id = user_id
        self._user_id = _shortstr(user_id)

    def encode(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: dict[str, Any],
        *,
        mandatory: bool,
        message_id: str | None = None,
    ) -> bytes | None:
        if len(body) > self._max_body:
            return None
        method = self._methods.get((exchange, routing_key, mandatory))
        if method is None:
            method = self._method(exchange, routing_key, mandatory)
        if properties:
            flags, props = _encode_properties(properties, message_id, self.user_id)
        elif message_id is None:
            flags, props = _USER_ID_FLAG, self._user_id
        else:  # message_id comes before user_id on the wire
            flags, props = _MESSAGE_ID_AND_USER_ID, _shortstr(message_id) + self._user_id
        channel = self.channel_id
        size = len(body)
        header = _PACK_CONTENT_HEADER(2, channel, 14 + len(props), _BASIC_CLASS, 0, size, flags)
        if not size:  # an empty body has no body frame (the header's size says it all)
            return b"".join((method, header, props, _FRAME_END))
        return b"".join(
            (
                method,
                header,
                props,
                _FRAME_END,
                _PACK_FRAME_HEAD(3, channel, size),
                body,
                _FRAME_END,
            )
        )

    def _method(self, exchange: str, routing_key: str, mandatory: bool) -> bytes:
        args = _shortstr(exchange) + _shortstr(routing_key) + (b"\x01" if mandatory else b"\x00")
        frame = (
            _PACK_PUBLISH_HEAD(1, self.channel_id, 6 + len(args), *spec.Basic.Publish, 0)
            + args
            + _FRAME_END
        )
        if len(self._methods) >= self._CACHE_LIMIT:
            self._methods.clear()
        self._methods[(exchange, routing_key, mandatory)] = frame
        return frame


def encode_settle(channel_id: int, tag: int, *, reject: bool) -> bytes:
    """basic.ack (single) or basic.reject (requeue) of ``tag``, as one method frame."""
    if reject:
        return _PACK_ACK(1, channel_id, 13, _BASIC_CLASS, _REJECT_METHOD, tag, 1, 0xCE)
    return _PACK_ACK(1, channel_id, 13, _BASIC_CLASS, _ACK_METHOD, tag, 0, 0xCE)


_BASIC_DELIVER: Final = struct.pack(">HH", *spec.Basic.Deliver)
_UNPACK_TAG_BIT = struct.Struct(">QB").unpack_from
_UNPACK_BODY_SIZE = struct.Struct(">Q").unpack_from
_MESSAGE_ID_ONLY: Final = struct.pack(">H", _MESSAGE_ID_FLAG)
_USER_ID_ONLY: Final = struct.pack(">H", _USER_ID_FLAG)
_MESSAGE_AND_USER_ID: Final = struct.pack(">H", _MESSAGE_ID_AND_USER_ID)
_NO_PROPERTIES: Final = b"\x00\x00"


class Delivery:
    """A ``basic.deliver`` decoded by the driver: what consumers read of py-amqp's ``Message``.

    ``body``, ``properties`` (py-amqp's names, only those present) and
    ``delivery_info`` (as py-amqp fills it), so handlers take either.
    """

    __slots__ = ("_chunks", "body", "body_size", "channel", "delivery_info", "properties")

    def __init__(self, channel: Any, delivery_info: dict[str, Any]) -> None:
        self.channel = channel
        self.delivery_info = delivery_info
        self.properties: dict[str, Any] = {}
        self.body: bytes = b""
        self.body_size = -1
        """-1 until the content header arrived."""
        self._chunks: list[bytes] = []

    def on_header(self, payload: bytes) -> bool:
        """Take the content header; whether the delivery is complete (empty body)."""
        (self.body_size,) = _UNPACK_BODY_SIZE(payload, 4)
        flags = payload[12:14]
        if flags == _MESSAGE_AND_USER_ID:  # a call or cast without a deadline
            end = 15 + payload[14]
            self.properties = {
                "message_id": payload[15:end].decode("utf-8", "surrogatepass"),
                "user_id": payload[end + 1 : end + 1 + payload[end]].decode(
                    "utf-8", "surrogatepass"
                ),
            }
        elif flags == _USER_ID_ONLY:  # a reply
            user_id = payload[15 : 15 + payload[14]]
            self.properties = {"user_id": user_id.decode("utf-8", "surrogatepass")}
        elif flags == _MESSAGE_ID_ONLY:
            message_id = payload[15 : 15 + payload[14]]
            self.properties = {"message_id": message_id.decode("utf-8", "surrogatepass")}
        elif flags != _NO_PROPERTIES:
            self.properties = decode_properties_basic(payload, 12)[0]
        return self.body_size == 0

    def on_body(self, payload: bytes) -> bool:
        """Take a body frame; whether the delivery is complete."""
        chunks = self._chunks
        if not chunks and len(payload) >= self.body_size:
            self.body = payload
            return True
        chunks.append(payload)
        if sum(map(len, chunks)) < self.body_size:
            return False
        self.body = b"".join(chunks)
        chunks.clear()
        return True


_BASIC_ACK: Final = struct.pack(">HH", *spec.Basic.Ack)
_BASIC_NACK: Final = struct.pack(">HH", *spec.Basic.Nack)
_CONFIRM_SIZE: Final = 13
"""basic.ack/nack payload: class, method, delivery tag (long long), bits (one octet)."""
_UNPACK_CONFIRM = struct.Struct(">QB").unpack_from


def parse_confirm(payload: bytes) -> tuple[int, bool, bool] | None:
    """A publisher confirm's (delivery tag, multiple, nack), or None for any other method.

    Decoded here rather than through py-amqp's generic method dispatch: a
    confirm-mode channel receives one per message published.
    """
    if len(payload) != _CONFIRM_SIZE:
        return None
    head = payload[:4]
    if head == _BASIC_ACK:
        nack = False
    elif head == _BASIC_NACK:
        nack = True
    else:
        return None
    tag, bits = _UNPACK_CONFIRM(payload, 4)
    return tag, bool(bits & 1), nack


def parse_deliver(payload: bytes) -> dict[str, Any]:
    """A basic.deliver method frame's arguments, as py-amqp's ``delivery_info``."""
    end = 5 + payload[4]
    consumer_tag = payload[5:end].decode("utf-8", "surrogatepass")
    delivery_tag, bits = _UNPACK_TAG_BIT(payload, end)
    start = end + 10
    end = start + payload[start - 1]
    exchange = payload[start:end].decode("utf-8", "surrogatepass")
    start = end + 1
    routing_key = payload[start : start + payload[end]].decode("utf-8", "surrogatepass")
    return {
        "consumer_tag": consumer_tag,
        "delivery_tag": delivery_tag,
        "redelivered": bool(bits & 1),
        "exchange": exchange,
        "routing_key": routing_key,
    }


def is_deliver(payload: bytes) -> bool:
    return payload[:4] == _BASIC_DELIVER


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


class ReadWaiter:
    """Waits for one socket to become readable: a poll object made once, one syscall a wait."""

    def __init__(self, sock: socket.socket) -> None:
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)

    def wait(self, timeout: float) -> bool:
        """Whether the socket became readable (or failed) within ``timeout`` seconds."""
        return bool(self._poll.poll(max(0, int(timeout * 1000))))


def expiration_ms(seconds: float) -> str:
    """An AMQP per-message TTL (milliseconds, as text)."""
    return str(max(0, int(seconds * 1000)))
