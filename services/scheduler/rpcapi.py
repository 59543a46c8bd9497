"""The client side of the scheduler interface, for users and the CLI."""

from __future__ import annotations

from typing import Any

import rpclib
from services.common.upgrade_levels import AUTO
from services.objects import Instance
from services.scheduler.manager import NAMESPACE, VERSION

TOPIC = "scheduler"
ERROR_MODULES = (
    "services.scheduler.manager",
    "services.conductor.errors",
    "services.common.guestdata",
)
BOOT = rpclib.Method("boot", since="1.0", args={"metadata": "1.1"})
# With a key or user data a boot needs 1.3: an older scheduler is refused
# (VersionCapError) rather than sent a boot that silently loses them.
BOOT_WITH_GUEST_DATA = rpclib.Method("boot", since="1.3")
DELETE = rpclib.Method("delete", since="1.0")
COMPUTE_STATUS = rpclib.Method("compute_status", since="1.2")


class SchedulerAPI:
    def __init__(
        self, transport: rpclib.Transport, *, timeout: float = 60.0, version_cap: str = AUTO
    ) -> None:
        self.client = rpclib.RPCClient(
            transport,
            rpclib.Target(topic=TOPIC, namespace=NAMESPACE, version=VERSION),
            version_cap=version_cap,  # "auto", or the operator's pin (upgrade_levels)
            timeout=timeout,
            max_time=10 * timeout,  # a stuck handler that still beats can't hold us forever
            allowed_remote_exmods=ERROR_MODULES,
        )

    def boot(self, ctx: dict[str, Any], **request: Any) -> Instance:
        guest = request.get("key_data") is not None or request.get("user_data") is not None
        result: Instance = self.client.call(ctx, BOOT_WITH_GUEST_DATA if guest else BOOT, **request)
        return result

    def delete(self, ctx: dict[str, Any], instance_uuid: str) -> Instance:
        result: Instance = self.client.call(ctx, DELETE, instance_uuid=instance_uuid)
        return result

    def compute_status(self, ctx: dict[str, Any], host: str) -> dict[str, Any]:
        """{"host", "up", "reason"} (VersionCapError: a scheduler older than 1.2)."""
        result: dict[str, Any] = self.client.call(ctx, COMPUTE_STATUS, host=host)
        return result
