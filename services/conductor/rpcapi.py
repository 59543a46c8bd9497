"""The client side of the conductor's interface, for compute, scheduler and users.

State updates and allocation releases are at-least-once casts: they must
survive a conductor restart, and the conductor's compare-and-set on the
sequence makes redelivery harmless. Everything else is a call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import rpclib
from services.common.upgrade_levels import AUTO
from services.objects import Flavor, Instance

TOPIC = "conductor"
NAMESPACE = "conductor"
VERSION = "1.2"  # the history is in services.conductor.manager
BASE_VERSION = "1.0"  # methods named by string: sent as 1.0, so a 1.0 conductor takes them
ERROR_MODULES = ("services.conductor.errors", "services.common.guestdata")
BEGIN_DELETE = rpclib.Method("begin_delete", since="1.1")
DATABASE_ID = rpclib.Method("database_id", since="1.1")
FORGET_COMPUTE = rpclib.Method("forget_compute", since="1.1")
CREATE_INSTANCE = rpclib.Method("create_instance", since="1.0")
# With a key or user data the call needs 1.2: an older conductor is refused
# (VersionCapError) rather than sent a build that silently loses them.
CREATE_INSTANCE_WITH_GUEST_DATA = rpclib.Method("create_instance", since="1.2")
GET_INSTANCE_METADATA = rpclib.Method("get_instance_metadata", since="1.2")


class ConductorAPI:
    """Typed wrappers over an RPCClient to the conductor topic."""

    def __init__(
        self, transport: rpclib.Transport, *, timeout: float = 30.0, version_cap: str = AUTO
    ) -> None:
        self.client = rpclib.RPCClient(
            transport,
            rpclib.Target(topic=TOPIC, namespace=NAMESPACE, version=BASE_VERSION),
            version_cap=version_cap,  # "auto", or the operator's pin (upgrade_levels)
            timeout=timeout,
            max_time=10 * timeout,  # a stuck handler that still beats can't hold us forever
            allowed_remote_exmods=ERROR_MODULES,
        )
        self._reliable = self.client.prepare(at_least_once=True)

    # compute nodes
    def register_compute(
        self,
        ctx: Mapping[str, Any],
        host: str,
        vcpus: int,
        memory_mb: int,
        disk_gb: int,
        versions: dict[str, str],
    ) -> None:
        self.client.call(
            ctx,
            "register_compute",
            host=host,
            vcpus=vcpus,
            memory_mb=memory_mb,
            disk_gb=disk_gb,
            versions=versions,
        )

    def heartbeat(self, ctx: Mapping[str, Any], host: str, binary: str) -> None:
        self.client.cast(ctx, "heartbeat", host=host, binary=binary)

    def instance_update(
        self,
        ctx: Mapping[str, Any],
        instance_uuid: str,
        host: str,
        sequence: int,
        state: dict[str, Any],
    ) -> None:
        self._reliable.cast(
            ctx,
            "instance_update",
            instance_uuid=instance_uuid,
            host=host,
            sequence=sequence,
            state=state,
        )

    def release_allocation(self, ctx: Mapping[str, Any], instance_uuid: str) -> None:
        self._reliable.cast(ctx, "release_allocation", instance_uuid=instance_uuid)

    def get_instance_metadata(
        self, ctx: Mapping[str, Any], host: str, address: str
    ) -> Instance | None:
        result: Instance | None = self.client.call(
            ctx, GET_INSTANCE_METADATA, host=host, address=address
        )
        return result

    # the scheduler
    def create_instance(
        self,
        ctx: Mapping[str, Any],
        name: str,
        project_id: str,
        user_id: str,
        flavor: Flavor,
        image: str,
        key_data: str | None = None,
        user_data: str | None = None,
    ) -> Instance:
        given = (("key_data", key_data), ("user_data", user_data))
        guest = {k: v for k, v in given if v is not None}
        result: Instance = self.client.call(
            ctx,
            CREATE_INSTANCE_WITH_GUEST_DATA if guest else CREATE_INSTANCE,
            name=name,
            project_id=project_id,
            user_id=user_id,
            flavor=flavor,
            image=image,
            **guest,
        )
        return result

    def allocation_candidates(
        self, ctx: Mapping[str, Any], vcpus: int, memory_mb: int, disk_gb: int
    ) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.client.call(
            ctx, "allocation_candidates", vcpus=vcpus, memory_mb=memory_mb, disk_gb=disk_gb
        )
        return result

    def claim(
        self, ctx: Mapping[str, Any], instance_uuid: str, host: str, resources: dict[str, int]
    ) -> dict[str, int]:
        result: dict[str, int] = self.client.call(
            ctx, "claim", instance_uuid=instance_uuid, host=host, resources=resources
        )
        return result

    def fail_unplaced(self, ctx: Mapping[str, Any], instance_uuid: str, reason: str) -> Instance:
        result: Instance = self.client.call(
            ctx, "fail_unplaced", instance_uuid=instance_uuid, reason=reason
        )
        return result

    def begin_delete(self, ctx: Mapping[str, Any], instance_uuid: str) -> Instance:
        result: Instance = self.client.call(ctx, BEGIN_DELETE, instance_uuid=instance_uuid)
        return result

    # conductors and operators
    def database_id(self, ctx: Mapping[str, Any], server: str, *, timeout: float = 10.0) -> str:
        """The database identity of conductor ``server`` (VersionCapError: one older than 1.1)."""
        result: str = self.client.prepare(server=server, timeout=timeout).call(ctx, DATABASE_ID)
        return result

    def forget_compute(self, ctx: Mapping[str, Any], host: str) -> bool:
        result: bool = self.client.call(ctx, FORGET_COMPUTE, host=host)
        return result

    # users
    def get_instance(self, ctx: Mapping[str, Any], instance_uuid: str) -> Instance:
        result: Instance = self.client.call(ctx, "get_instance", instance_uuid=instance_uuid)
        return result

    def list_instances(
        self, ctx: Mapping[str, Any], project_id: str | None = None, include_deleted: bool = False
    ) -> list[Instance]:
        result: list[Instance] = self.client.call(
            ctx, "list_instances", project_id=project_id, include_deleted=include_deleted
        )
        return result
