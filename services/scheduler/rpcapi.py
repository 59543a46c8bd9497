"""The client side of the scheduler interface, for users and the CLI."""

from __future__ import annotations

from typing import Any

import rpclib
from services.objects import Instance
from services.scheduler.manager import NAMESPACE, VERSION

TOPIC = "scheduler"
ERROR_MODULES = (
    "services.scheduler.manager",
    "services.conductor.errors",
    "services.common.guestdata",
)


class SchedulerAPI:
    def __init__(self, transport: rpclib.Transport, *, timeout: float = 60.0) -> None:
        self.client = rpclib.RPCClient(
            transport,
            rpclib.Target(topic=TOPIC, namespace=NAMESPACE, version=VERSION),
            version_cap="auto",
            timeout=timeout,
            max_time=10 * timeout,  # a stuck handler that still beats can't hold us forever
            allowed_remote_exmods=ERROR_MODULES,
        )

    def boot(self, ctx: dict[str, Any], **request: Any) -> Instance:
        result: Instance = self.client.call(ctx, "boot", **request)
        return result

    def delete(self, ctx: dict[str, Any], instance_uuid: str) -> Instance:
        result: Instance = self.client.call(ctx, "delete", instance_uuid=instance_uuid)
        return result
