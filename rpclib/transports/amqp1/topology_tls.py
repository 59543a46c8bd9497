"""py-amqp over the URL's checked ``ssl.SSLContext``: the TLS topology connection.

The ``rabbitmq`` strategy's AMQP 0-9-1 side connection goes to the same TLS
listener as the AMQP 1.0 one (RabbitMQ serves both protocols there) and
trusts, presents and verifies exactly what the URL says. py-amqp only builds
TLS contexts from its own option dict, so its connection is told to wrap the
socket with ours. Imported only for TLS (it imports py-amqp).
"""

from __future__ import annotations

import ssl
from typing import Any

import amqp

from rpclib.transports.py_amqp_tls import ContextTLSTransport


class TLSConnection(amqp.Connection):  # type: ignore[misc]
    """An ``amqp.Connection`` whose TLS is ``context`` towards ``server_hostname``."""

    def __init__(
        self, host: str, *, context: ssl.SSLContext, server_hostname: str, **kwargs: Any
    ) -> None:
        super().__init__(host, ssl=True, **kwargs)
        self.rpclib_context = context
        self.rpclib_hostname = server_hostname

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
        return ContextTLSTransport(
            host,
            self.rpclib_context,
            self.rpclib_hostname,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            socket_settings=socket_settings,
        )


__all__ = ["TLSConnection"]
