"""The RabbitMQ topology channel: AMQP 0-9-1 for the few things AMQP 1.0 cannot do there.

RabbitMQ 3.10's ``rabbitmq_amqp1_0`` plugin (measured on this machine, see
docs/transports/amqp1.md) cannot declare exchanges or bindings of named
queues, declares every queue it creates as non-auto-delete (``/exchange``
and ``/topic`` sources leave ``amq.gen-*`` queues behind for good), cannot
delete anything, accepts unroutable messages silently and kills the session
when the broker nacks. So the ``rabbitmq`` addressing strategy declares its
exchanges, queues and bindings here, asks here whether an address has a
consumer, and deletes what it created; every message still flows over AMQP
1.0. py-amqp (the RabbitMQ extra) is imported lazily with a clear error.
With TLS this connection uses the URL's TLS settings too
(:mod:`rpclib.transports.amqp1.topology_tls`), on the same listener.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from rpclib.exceptions import TransportError
from rpclib.transports.amqp1.options import Amqp1Options

LOG = logging.getLogger("rpclib.transports.amqp1")
T = TypeVar("T")
NOT_FOUND = 404


def _refusals() -> tuple[type[BaseException], ...]:
    try:
        from amqp import exceptions as e
    except ImportError:  # pragma: no cover - depends on the install
        return ()
    return (e.InternalError, e.AccessRefused, e.NotAllowed, e.PreconditionFailed)


_REFUSALS = _refusals()


def _hint(exc: BaseException) -> str:
    if "deprecated" in str(exc):
        return (
            " (addressing=rabbitmq is for RabbitMQ 3.x's AMQP 1.0 plugin and this broker denies "
            "a deprecated feature it needs: on RabbitMQ 4 use addressing=rabbitmq4 or auto, "
            "the default)"
        )
    if "ACCESS_REFUSED" in str(exc):
        return " (give the URL's user configure, write and read permissions on the vhost)"
    return ""


class RabbitControl:
    """One lazily opened 0-9-1 connection and channel, shared under a lock (blocking calls)."""

    def __init__(self, options: Amqp1Options, label: str) -> None:
        try:
            import amqp
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise TransportError(
                "the amqp1:// rabbitmq addressing declares its queues over AMQP 0-9-1 and needs "
                f"py-amqp ({exc}); install rpclib[rabbit] or choose another addressing="
            ) from exc
        self._amqp = amqp
        self._connection_class: Any = amqp.Connection
        if options.tls is not None:
            from rpclib.transports.amqp1.topology_tls import TLSConnection

            self._connection_class = TLSConnection
        self.options = options
        self.label = label
        self._lock = threading.Lock()
        self._conn: Any = None
        self._channel: Any = None
        self._host = 0
        self._closed = False
        self.exchanges: set[str] = set()
        """Exchanges declared on this broker by this driver (cleared on reconnect)."""

    # -- connection --------------------------------------------------------------------

    def _connect(self) -> Any:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        if self._conn is not None and self._conn.connected:
            self._channel = self._conn.channel()
            return self._channel
        self._drop()
        errors = []
        hosts = self.options.hosts
        for i in range(len(hosts)):
            host = hosts[(self._host + i) % len(hosts)]
            tls: dict[str, Any] = {}
            if self.options.tls is not None:
                tls = {"context": self.options.tls.context, "server_hostname": host.hostname}
            conn = self._connection_class(
                host.address,
                userid=host.user,
                password=host.password,
                virtual_host=self.options.virtual_host,
                connect_timeout=self.options.connect_timeout,
                heartbeat=0,
                client_properties={"connection_name": f"rpclib amqp1 topology {self.label}"},
                **tls,
            )
            try:
                conn.connect()
                self._conn, self._channel = conn, conn.channel()
                self._host = (self._host + i) % len(hosts)
                self.exchanges.clear()
                return self._channel
            except ssl.SSLError as exc:
                errors.append(f"{host.address}: TLS handshake failed: {exc}")
                with contextlib.suppress(Exception):
                    conn.collect()
            except Exception as exc:
                errors.append(f"{host.address}: {exc}")
                with contextlib.suppress(Exception):
                    conn.collect()
        raise TransportError(f"no RabbitMQ broker answered ({'; '.join(errors)})")

    def _drop(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.collect()

    def run(self, what: str, fn: Callable[[Any], T], *, attempts: int = 3) -> T:
        """``fn(channel)`` under the lock, reconnecting on connection errors."""
        amqp = self._amqp
        last: BaseException | None = None
        with self._lock:
            if self._closed:
                raise TransportError("amqp1 driver is closed")
            for attempt in range(attempts):
                try:
                    return fn(self._connect())
                except amqp.exceptions.NotFound:
                    self._channel = None  # the broker closed the channel: a fresh one next time
                    raise
                except amqp.exceptions.ChannelError as exc:
                    self._channel = None
                    raise TransportError(f"RabbitMQ refused to {what}: {exc}") from exc
                except _REFUSALS as exc:  # the same request would be refused again: no retry
                    self._drop()
                    raise TransportError(f"RabbitMQ refused to {what}: {exc}{_hint(exc)}") from exc
                except (OSError, amqp.exceptions.AMQPError, EOFError) as exc:
                    last = exc
                    self._drop()
                    time.sleep(min(self.options.retry_backoff * (2**attempt), 1.0))
                except TransportError as exc:
                    last = exc
                    time.sleep(min(self.options.retry_backoff * (2**attempt), 1.0))
        raise TransportError(f"could not {what}: {last}") from last

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                with contextlib.suppress(Exception):
                    conn.collect()

    # -- operations --------------------------------------------------------------------

    def exchange(self, name: str, kind: str, *, auto_delete: bool = False) -> None:
        if name in self.exchanges:
            return
        self.run(
            f"declare exchange {name}",
            lambda ch: ch.exchange_declare(name, kind, durable=True, auto_delete=auto_delete),
        )
        if not auto_delete:
            self.exchanges.add(name)

    def shared_exchange(self, name: str) -> None:
        """Declare the durable topic exchange ``name`` that many principals use, or, if this
        user may not configure it (a least-privilege account: the operator declared it, see
        rpclib.transports.amqp1.access), check that it exists."""
        if name in self.exchanges:
            return
        try:
            self.exchange(name, "topic")
        except TransportError as exc:
            if "ACCESS_REFUSED" not in str(exc):
                raise
            if not self.exchange_exists(name):
                raise TransportError(
                    f"exchange {name} does not exist and this user may not declare it: "
                    "provision it (rpclib-access apply) or grant configure on it"
                ) from exc
            self.exchanges.add(name)

    def shared_queue(self, name: str, arguments: dict[str, Any] | None = None) -> None:
        """Declare durable queue ``name`` (the dead letters) with ``arguments``, or check it
        exists when this user may not configure it (as :meth:`shared_exchange`)."""
        try:
            self.queue(name, durable=True, arguments=arguments)
        except TransportError as exc:
            if "ACCESS_REFUSED" not in str(exc):
                raise
            if self.messages(name) is None:
                raise TransportError(
                    f"queue {name} does not exist and this user may not declare it: "
                    "provision it (rpclib-access apply) or grant configure on it"
                ) from exc

    def queue(
        self,
        name: str,
        *,
        durable: bool,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.run(
            f"declare queue {name}",
            lambda ch: ch.queue_declare(
                name, durable=durable, auto_delete=auto_delete, arguments=arguments or {}
            ),
        )

    def bind_queue(self, queue: str, exchange: str, key: str) -> None:
        self.run(f"bind {queue} to {exchange}", lambda ch: ch.queue_bind(queue, exchange, key))

    def bind_exchange(self, destination: str, source: str, key: str) -> None:
        self.run(
            f"bind {destination} to {source}",
            lambda ch: ch.exchange_bind(destination, source, key),
        )

    def exchange_exists(self, name: str) -> bool:
        try:
            self.run(
                f"check exchange {name}",
                lambda ch: ch.exchange_declare(name, "fanout", passive=True),
            )
        except self._amqp.exceptions.NotFound:
            return False
        return True

    def consumers(self, name: str) -> int | None:
        """Consumers of queue ``name``; None if it does not exist."""
        try:
            ok = self.run(f"check queue {name}", lambda ch: ch.queue_declare(name, passive=True))
        except self._amqp.exceptions.NotFound:
            return None
        return int(ok.consumer_count)

    def messages(self, name: str) -> int | None:
        """Messages ready in queue ``name``; None if it does not exist."""
        try:
            ok = self.run(f"check queue {name}", lambda ch: ch.queue_declare(name, passive=True))
        except self._amqp.exceptions.NotFound:
            return None
        return int(ok.message_count)

    def delete_queue(self, name: str) -> None:
        try:
            self.run(f"delete queue {name}", lambda ch: ch.queue_delete(name), attempts=1)
        except (TransportError, self._amqp.exceptions.AMQPError) as exc:
            LOG.info("could not delete queue %s: %s", name, exc)
