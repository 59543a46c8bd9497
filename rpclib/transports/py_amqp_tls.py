"""py-amqp's TLS transport over a given ``ssl.SSLContext``: for every py-amqp connection.

py-amqp builds TLS contexts only from its own option dict; rpclib checks the
URL's ``ssl*`` options once into an ``SSLContext`` (:mod:`rpclib.transports.tls`)
and wants exactly that context, with SNI and the name check towards the URL's
host. Used by the RabbitMQ driver's connections and by the AMQP 1.0 driver's
RabbitMQ topology connection. Imports py-amqp.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from amqp.transport import SSLTransport


class ContextTLSTransport(SSLTransport):  # type: ignore[misc]
    """py-amqp's TLS transport, wrapping its socket with ``context`` towards ``server_hostname``."""

    def __init__(
        self, host: str, context: ssl.SSLContext, server_hostname: str, **kwargs: Any
    ) -> None:
        self._rpclib_context = context
        self._rpclib_hostname = server_hostname
        super().__init__(host, **kwargs)

    def _wrap_socket(self, sock: socket.socket, context: Any = None, **sslopts: Any) -> Any:
        return self._rpclib_context.wrap_socket(
            sock, server_hostname=self._rpclib_hostname, do_handshake_on_connect=False
        )

    def _setup_transport(self) -> None:
        super()._setup_transport()  # the handshake, bounded by the connect timeout
        # py-amqp leaves that timeout on the socket; go back to blocking mode, as its plain
        # TCP transport is (reads stay bounded by SO_RCVTIMEO where the caller sets it).
        self.sock.settimeout(None)


__all__ = ["ContextTLSTransport"]
