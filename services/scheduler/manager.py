"""The scheduler's RPC endpoint (namespace ``scheduler``).

Version history:

- 1.0: boot, delete.
- 1.1: boot takes an optional ``metadata`` (key/value pairs put on the Instance
  cast to compute, e.g. for direct kernel boot; not stored by the conductor).
- 1.2: compute_status(host): whether a compute node is up, as the bus knows it.
  (Same version, no signature change: boot refuses bad requests with
  :class:`BadRequest` before creating anything; delete deletes an instance
  that was never placed at once.)
- 1.3: boot takes an optional ``key_data`` (an OpenSSH public key) and
  ``user_data`` (base64), checked before anything is created and stored
  with the instance for the metadata service.

boot checks the request (name, sizes, image location) and refuses a bad one
with :class:`BadRequest` before anything is created. It asks the conductor for
candidates and keeps those whose compute node is up: its server advertises
itself on the bus (a node stopped or killed has withdrawn its advert, or lets
it expire). It asks the first of them whether it can use the image (a missing
or forbidden local path is refused, still before anything is created), then
creates the instance record, orders the candidates (``spread``: most free
first, the default; ``pack``: least free first), claims one atomically (a
claim lost to a racing scheduler moves on to the next candidate) and casts
``build_instance`` with the full Instance to that node. No candidate left: the
instance goes to ERROR with the reason and the caller gets :class:`NoValidHost`.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import urlsplit

import rpclib
from services.common import guestdata
from services.compute.rpcapi import ComputeAPI
from services.conductor.errors import ClaimError
from services.conductor.rpcapi import ConductorAPI
from services.objects import Flavor, Instance

LOG = logging.getLogger("services.scheduler")
NAMESPACE = "scheduler"
VERSION = "1.3"
STRATEGIES = ("spread", "pack")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NAME_RULE = "1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"
MAX_IMAGE_LENGTH = 255  # the conductor's column
IMAGE_SCHEMES = ("", "file", "http", "https")


class NoValidHost(Exception):
    """No compute node can take the instance; the message says what was asked."""


class BadRequest(ValueError):
    """A boot request that can never succeed; nothing was created. The message says why."""


def check_request(
    name: object, vcpus: object, memory_mb: object, disk_gb: object, image: object
) -> None:
    """Raise BadRequest naming the first field of a boot request that cannot work."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        shown = name if not isinstance(name, str) or len(name) <= 40 else f"{name[:40]}..."
        raise BadRequest(f"name {shown!r} is not a valid instance name: use {NAME_RULE}")
    for field, value in (("vcpus", vcpus), ("memory_mb", memory_mb), ("disk_gb", disk_gb)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadRequest(f"{field} must be a whole number of at least 1, got {value!r}")
    if not isinstance(image, str) or not image.strip():
        raise BadRequest("image must name a file path or an http(s) URL")
    if len(image) > MAX_IMAGE_LENGTH:
        raise BadRequest(f"image location is longer than {MAX_IMAGE_LENGTH} characters")
    scheme = urlsplit(image).scheme
    if scheme not in IMAGE_SCHEMES:
        raise BadRequest(f"image {image!r}: unsupported scheme {scheme!r} (http, https, file)")
    if scheme == "" and not image.startswith("/"):
        raise BadRequest(f"image {image!r}: a local image path must be absolute")


class SchedulerManager:
    """Places instances and casts builds."""

    target = rpclib.Target(namespace=NAMESPACE, version=VERSION)
    # Callers at 1.2 or older were written against Instance 1.1 (key_data and user_data
    # came with Instance 1.2): their replies carry it backported, so an older caller
    # without an indirection can still read them during a rolling upgrade.
    reply_object_versions = {"1.2": {"Instance": "1.1"}}

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
            raise BadRequest(f"strategy must be one of {', '.join(STRATEGIES)}, got {order!r}")
        check_request(name, vcpus, memory_mb, disk_gb, image)
        if key_data is not None:
            key_data = guestdata.check_public_key(key_data)
        if user_data is not None:
            user_data = guestdata.check_user_data(user_data)
        flavor = Flavor(vcpus=vcpus, memory_mb=memory_mb, disk_gb=disk_gb)
        wanted = {"VCPU": vcpus, "MEMORY_MB": memory_mb, "DISK_GB": disk_gb}
        fitting = self.conductor.allocation_candidates(ctx, vcpus, memory_mb, disk_gb)
        live = self.compute.live_hosts()
        candidates = [c for c in fitting if c["host"] in live]
        down = sorted(c["host"] for c in fitting if c["host"] not in live)
        if down:
            LOG.info("not placing on %s: no live advert (down or stopped)", ", ".join(down))
        candidates.sort(key=_room, reverse=order == "spread")
        if candidates:
            self._check_image(ctx, candidates[0]["host"], image)
        instance = self.conductor.create_instance(
            ctx, name, project_id, user_id, flavor, image, key_data=key_data, user_data=user_data
        )
        uuid = str(instance.uuid)
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
        tried = f"{len(candidates)} candidate(s) tried"
        if down:
            tried += f"; {', '.join(down)} would fit but are down (no live advert on the bus)"
        reason = (
            f"no valid host: no compute node has {vcpus} vCPU, {memory_mb} MB RAM and "
            f"{disk_gb} GB disk free ({tried})"
        )
        self.conductor.fail_unplaced(ctx, uuid, reason)
        raise NoValidHost(reason)

    def _check_image(self, ctx: dict[str, Any], host: str, image: str) -> None:
        """Ask ``host`` whether it can use ``image``; BadRequest if it cannot."""
        try:
            problem = self.compute.check_image(ctx, host, image)
        except rpclib.VersionCapError:
            return  # a node older than compute 1.2 cannot say; its build reports the problem
        except rpclib.MessagingError as exc:
            LOG.warning("could not ask %s about image %s (%s); placing anyway", host, image, exc)
            return
        if problem:
            raise BadRequest(f"{problem} (checked on {host})")

    def delete(self, ctx: dict[str, Any], instance_uuid: str) -> Instance:
        """Delete an instance; returns it with the delete started.

        One that was never placed is DELETED at once (no compute node knows
        it). A placed one shows ``task_state`` ``deleting`` and its compute node
        is asked to delete it (it reports DELETED and releases the allocation);
        if that node is down the request waits in its queue until it is back.
        """
        instance = self.conductor.begin_delete(ctx, instance_uuid)
        if instance.host is not None and instance.vm_state != "DELETED":
            self.compute.delete_instance(ctx, instance.host, instance)
            if instance.host not in self.compute.live_hosts():
                LOG.warning(
                    "delete of %s waits for %s, which is down", instance_uuid, instance.host
                )
        return instance

    def compute_status(self, ctx: dict[str, Any], host: str) -> dict[str, Any]:
        """Whether compute node ``host`` is up as the bus knows it (its advert is live)."""
        up = host in self.compute.live_hosts()
        reason = (
            "its server advertises itself on the bus"
            if up
            else ("no live advert on the bus: it is stopped, killed or cut off")
        )
        return {"host": host, "up": up, "reason": reason}


def _room(candidate: dict[str, Any]) -> tuple[int, int, int]:
    free = candidate["free"]
    return (free.get("VCPU", 0), free.get("MEMORY_MB", 0), free.get("DISK_GB", 0))
