"""Object backports over RPC: the indirection service and its client.

A receiver that gets an object version newer than it knows (an old compute
node, say) asks a service that knows every version (the conductor) to
backport it. Serve :class:`ObjectBackportEndpoint` on that service; give the
receiver's serializer an :class:`RPCIndirection` pointing at it::

    conductor = RPCServer(t, Target(topic="conductor", server="c1"),
                          [ConductorAPI(), ObjectBackportEndpoint()])
    serializer = Serializer(indirection=RPCIndirection(t, Target(topic="conductor")))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rpclib.client import RPCClient
from rpclib.serializer import Serializer
from rpclib.target import Target
from rpclib.transport import Transport

NAMESPACE = "rpclib.objects"
VERSION = "1.0"


class ObjectBackportEndpoint:
    """RPC endpoint that re-encodes an object at the versions a receiver knows."""

    target = Target(namespace=NAMESPACE, version=VERSION)

    def __init__(self, serializer: Serializer | None = None) -> None:
        self._serializer = serializer or Serializer()

    def object_backport_versions(
        self, ctx: dict[str, Any], objinst: bytes, object_versions: dict[str, str]
    ) -> bytes:
        """Decode ``objinst`` with the newest local classes, re-encode at ``object_versions``."""
        return self._serializer.backport_encoded(objinst, object_versions)


class RPCIndirection:
    """The :class:`~rpclib.serializer.ObjectIndirection` a receiver's serializer calls."""

    def __init__(self, transport: Transport, target: Target, *, timeout: float = 30.0) -> None:
        # its own plain serializer: the answer is bytes, and a backport must never recurse
        self._client = RPCClient(
            transport,
            target(namespace=NAMESPACE, version=VERSION),
            timeout=timeout,
            serializer=Serializer(),
        )

    def object_backport_versions(
        self, ctx: Mapping[str, Any], objinst: bytes, object_versions: dict[str, str]
    ) -> bytes:
        result = self._client.call(
            dict(ctx), "object_backport_versions", objinst=objinst, object_versions=object_versions
        )
        if not isinstance(result, bytes):
            raise TypeError(f"backport service answered {type(result).__name__}, expected bytes")
        return result
