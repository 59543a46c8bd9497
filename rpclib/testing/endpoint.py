"""Call one endpoint method as a remote caller would, with no bus to set up."""

from __future__ import annotations

from typing import Any

from rpclib.client import RPCClient
from rpclib.dispatcher import endpoint_interface
from rpclib.policy import Policy
from rpclib.serializer import Serializer
from rpclib.server import RPCServer
from rpclib.target import Target
from rpclib.testing.bus import TestBus

_TOPIC = "rpclib-testing"
_SERVER_PRINCIPAL = "rpclib-testing-server"


def call_endpoint(
    endpoint: object,
    method: str,
    ctx: dict[str, Any] | None = None,
    /,
    *,
    version: str | None = None,
    sender: str | None = None,
    policy: Policy | None = None,
    serializer: Serializer | None = None,
    timeout: float = 10.0,
    **kwargs: Any,
) -> Any:
    """``endpoint.method(ctx, **kwargs)`` through rpclib's whole request path.

    The arguments and the result travel as they would between processes
    (serialized, versions checked, the endpoint's interface version or
    ``version`` asked for), so a test sees what a caller would: the result,
    or the exception a caller gets (``rpclib.NoSuchMethod``,
    ``rpclib.InvalidArguments``, ``rpclib.RemoteError`` for what the method
    raised...). ``sender`` is the authenticated principal the request comes
    from (what ``rpclib.current_request().sender`` says inside the method);
    with ``policy`` the request is authorised as a server with that policy
    would, so a refused request raises ``rpclib.Forbidden``.

    Each call runs on a bus of its own, closed before returning: no state is
    shared between calls except the endpoint object itself.
    """
    namespace, implemented = endpoint_interface(endpoint)
    asked = version or str(implemented)
    with TestBus() as bus:
        if sender is not None:
            server_transport = bus.transport(principal=_SERVER_PRINCIPAL)
            client_transport = bus.transport(principal=sender)
        else:
            server_transport = client_transport = bus.transport()
        server = RPCServer(
            server_transport,
            Target(topic=_TOPIC, server="stub"),
            [endpoint],
            serializer=serializer,
            policy=policy,
            executor_threads=1,
        )
        with server:
            client = RPCClient(
                client_transport,
                Target(topic=_TOPIC, namespace=namespace, version=asked),
                serializer=serializer,
                timeout=timeout,
            )
            return client.call(ctx if ctx is not None else {}, method, **kwargs)
