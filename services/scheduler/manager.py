"""The scheduler's RPC endpoint (namespace ``scheduler``).

Version history:

- 1.0: boot, delete.
- 1.1: boot takes an optional ``metadata`` (key/value pairs put on the Instance
  cast to compute, e.g. for direct kernel boot; not stored by the conductor).
- 1.2: boot takes an optional ``key_data`` (an OpenSSH public key) and
  ``user_data`` (base64), checked before anything is created and stored
  with the instance for the metadata service.

boot creates the instance record, asks the conductor for candidates, orders
them (``spread``: most free first, the default; ``pack``: least free first),
claims one atomically (a claim lost to a racing scheduler moves on to the
next candidate) and casts ``build_instance`` with the full Instance to that
node. No candidate left: the instance goes to ERROR with the reason and the
caller gets :class:`NoValidHost`.
"""

from __future__ import annotations

import logging
from typing import Any

import rpclib
from services.common import guestdata
from services.compute.rpcapi import ComputeAPI
from services.conductor.errors import ClaimError
from services.conductor.rpcapi import ConductorAPI
from services.objects import Flavor, Instance

LOG = logging.getLogger("services.scheduler")
NAMESPACE = "scheduler"
VERSION = "1.2"
STRATEGIES = ("spread", "pack")


class NoValidHost(Exception):
    """No compute node can take the instance; the message says what was asked."""


class SchedulerManager:
    """Places instances and casts builds."""

    target = rpclib.Target(namespace=NAMESPACE, version=VERSION)

    def __init__(
        self, conductor: ConductorAPI, compute: ComputeAPI, *, strategy: str = "spread"
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        self.conductor = conductor
        self.compute = compute
        self.strategy = strategy

    def boot(
        self,
        ctx: dict[str, Any],
        name: str,
        vcpus: int,
        memory_mb: int,
        disk_gb: int,
        image: str,
        project_id: str = "demo",
        user_id: str = "demo",
        network: str | None = None,
        strategy: str | None = None,
        metadata: dict[str, str] | None = None,
        key_data: str | None = None,
        user_data: str | None = None,
    ) -> Instance:
        """Create, place and build an instance; returns it as placed (BUILDING)."""
        order = strategy or self.strategy
        if order not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {order!r}")
        if key_data is not None:
            key_data = guestdata.check_public_key(key_data)
        if user_data is not None:
            user_data = guestdata.check_user_data(user_data)
        flavor = Flavor(vcpus=vcpus, memory_mb=memory_mb, disk_gb=disk_gb)
        instance = self.conductor.create_instance(
            ctx, name, project_id, user_id, flavor, image, key_data=key_data, user_data=user_data
        )
        uuid = str(instance.uuid)
        wanted = {"VCPU": vcpus, "MEMORY_MB": memory_mb, "DISK_GB": disk_gb}
        candidates = self.conductor.allocation_candidates(ctx, vcpus, memory_mb, disk_gb)
        candidates.sort(key=_room, reverse=order == "spread")
        for candidate in candidates:
            host = candidate["host"]
            try:
                allocation = self.conductor.claim(ctx, uuid, host, wanted)
            except ClaimError as exc:
                LOG.info("claim for %s on %s lost (%s); trying the next host", uuid, host, exc)
                continue
            placed = self.conductor.get_instance(ctx, uuid)
            if metadata:
                placed.metadata = dict(metadata)
            self.compute.build_instance(ctx, host, placed, allocation, image, network)
            LOG.info("instance %s (%s) placed on %s", uuid, name, host)
            return placed
        reason = (
            f"no valid host: no compute node has {vcpus} vCPU, {memory_mb} MB RAM and "
            f"{disk_gb} GB disk free ({len(candidates)} candidate(s) tried)"
        )
        self.conductor.fail_unplaced(ctx, uuid, reason)
        raise NoValidHost(reason)

    def delete(self, ctx: dict[str, Any], instance_uuid: str) -> Instance:
        """Ask the instance's compute node to delete it (it reports DELETED and releases)."""
        instance = self.conductor.get_instance(ctx, instance_uuid)
        if instance.host is None:
            raise ValueError(f"instance {instance_uuid} was never placed; nothing to delete")
        self.compute.delete_instance(ctx, instance.host, instance)
        return instance


def _room(candidate: dict[str, Any]) -> tuple[int, int, int]:
    free = candidate["free"]
    return (free.get("VCPU", 0), free.get("MEMORY_MB", 0), free.get("DISK_GB", 0))
