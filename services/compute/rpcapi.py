"""The client side of the compute interface (namespace ``compute``).

Version history (the server side is ``services.compute.manager``):

- 1.0: build_instance(instance, allocation, image), delete_instance(instance)
- 1.1: build_instance takes ``network``
- 1.2: check_image(image) -> the reason the node cannot use it, or None

Calls go to one node (``compute.<host>``) under ``version_cap="auto"``: a node
still on 1.0 gets build_instance without ``network``, and the Instance
backported to the versions it advertises. An operator's pin
(``upgrade_levels``, ``version_cap="1.0"``) replaces ``auto``; each node's cap
is logged when it changes. Builds and deletes are at-least-once casts: a node
that is restarting gets them when it is back.
"""

from __future__ import annotations

from typing import Any

import rpclib
from services.common.upgrade_levels import AUTO, CapWatch
from services.objects import Instance

TOPIC = "compute"
NAMESPACE = "compute"
VERSION = "1.2"
BUILD_INSTANCE = rpclib.Method("build_instance", since="1.0", args={"network": "1.1"})
DELETE_INSTANCE = rpclib.Method("delete_instance", since="1.0")
CHECK_IMAGE = rpclib.Method("check_image", since="1.2")


class ComputeAPI:
    """Typed wrappers over an RPCClient to compute nodes."""

    def __init__(self, transport: rpclib.Transport, *, version_cap: str = AUTO) -> None:
        self.transport = transport
        self.client = rpclib.RPCClient(
            transport,
            rpclib.Target(topic=TOPIC, namespace=NAMESPACE, version=VERSION),
            version_cap=version_cap,
            at_least_once=True,
        )
        self.caps = CapWatch(TOPIC, version_cap)

    def build_instance(
        self,
        ctx: dict[str, Any],
        host: str,
        instance: Instance,
        allocation: dict[str, int],
        image: str,
        network: str | None = None,
    ) -> None:
        client = self.client.prepare(server=host)
        self.caps.note(host, client.version_cap)
        client.cast(
            ctx,
            BUILD_INSTANCE,
            instance=instance,
            allocation=allocation,
            image=image,
            network=network,
        )

    def delete_instance(self, ctx: dict[str, Any], host: str, instance: Instance) -> None:
        self.client.prepare(server=host).cast(ctx, DELETE_INSTANCE, instance=instance)

    def check_image(
        self, ctx: dict[str, Any], host: str, image: str, *, timeout: float = 10.0
    ) -> str | None:
        """Why ``host`` cannot use ``image``, or None (VersionCapError: a node before 1.2)."""
        client = self.client.prepare(server=host, at_least_once=False, timeout=timeout)
        result: str | None = client.call(ctx, CHECK_IMAGE, image=image)
        return result

    def live_hosts(self) -> set[str]:
        """The compute nodes whose adverts are live on the bus now (what the bus knows)."""
        view = self.transport.directory.view(self.transport.default_exchange, TOPIC)
        return {advert.server for advert in view.live()}
