"""ComputeManager: the RPC endpoint that builds and deletes this node's VMs.

Every state change is reported to the conductor as the instance's whole
mutable state (``STATE_FIELDS``) with a sequence number that strictly increases
for the life of the node, across restarts too (nanoseconds of the clock, or the
last one + 1). The conductor keeps the update with the highest sequence, so
duplicated or reordered updates can never roll an instance back.

Builds arrive as at-least-once casts and may be delivered twice. A build for an
instance whose domain already runs (or whose message this process already
handled) only reports the instance's state again; a build for an instance
this process deleted is ignored. Operations on one instance are serialized.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import rpclib
from services.compute.images import ImageCache, ImageError
from services.compute.virt import LibvirtDriver, VirtError
from services.objects import Instance

LOG = logging.getLogger("services.compute")

VCPU, MEMORY_MB, DISK_GB = "VCPU", "MEMORY_MB", "DISK_GB"
STATE_FIELDS = ("vm_state", "task_state", "ip_address", "error_reason", "launched_at", "deleted_at")
# Instance.metadata keys for direct kernel boot (image locations, fetched like the image).
KERNEL_KEY, INITRD_KEY, CMDLINE_KEY = "kernel", "initrd", "cmdline"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MEMORY = 10_000  # message ids and deleted instances remembered, for duplicate deliveries


class ConductorClient(Protocol):
    """What compute needs from the conductor (the service wiring passes the RPC client)."""

    def instance_update(
        self,
        ctx: Mapping[str, Any],
        instance_uuid: str,
        host: str,
        sequence: int,
        state: dict[str, Any],
    ) -> None: ...

    def release_allocation(self, ctx: Mapping[str, Any], instance_uuid: str) -> None: ...


class BuildError(Exception):
    """A build could not proceed (bad allocation, no IP address); the reason is the message."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _state(
    vm_state: str,
    *,
    task_state: str | None = None,
    ip_address: str | None = None,
    error_reason: str | None = None,
    launched_at: datetime | None = None,
    deleted_at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "vm_state": vm_state,
        "task_state": task_state,
        "ip_address": ip_address,
        "error_reason": error_reason,
        "launched_at": launched_at,
        "deleted_at": deleted_at,
    }


@dataclass
class _InstanceLock:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


class ComputeManager:
    """The ``compute`` RPC interface of one node.

    Version history:

    - 1.0: ``build_instance(instance, allocation, image)``, ``delete_instance(instance)``.
    - 1.1: ``build_instance`` takes an optional ``network`` (a libvirt network name;
      None: the driver's default).
    - 1.2: ``check_image(image)``: why this node could not use an image, or None
      (the scheduler asks before it creates an instance).

    ``allocation`` maps resource classes (``VCPU``, ``MEMORY_MB``, ``DISK_GB``) to
    the amounts placement granted; the VM gets exactly those. For tiny test
    guests, ``instance.metadata`` may ask for direct kernel boot: ``kernel`` and
    ``initrd`` are image locations, ``cmdline`` the kernel command line.

    On a real hypervisor, a VM with no DHCP lease after ``ip_timeout`` seconds
    is an ERROR; on ``test://`` it would become ACTIVE without an address (the
    test driver invents one, so in practice it has one).
    """

    target = rpclib.Target(namespace="compute", version="1.2")

    def __init__(
        self,
        host: str,
        driver: LibvirtDriver,
        images: ImageCache,
        conductor: ConductorClient,
        *,
        clock: Callable[[], datetime] = _utcnow,
        ip_timeout: float = 120.0,
    ) -> None:
        self._host = host
        self._driver = driver
        self._images = images
        self._conductor = conductor
        self._clock = clock
        self._ip_timeout = ip_timeout
        self._sequence_lock = threading.Lock()
        self._last_sequence = 0
        self._locks: dict[str, _InstanceLock] = {}
        self._locks_guard = threading.Lock()
        self._reported: dict[str, dict[str, Any]] = {}
        self._handled_builds: OrderedDict[str, None] = OrderedDict()
        self._deleted: OrderedDict[str, dict[str, Any]] = OrderedDict()

    # -- RPC interface ---------------------------------------------------------------------

    def build_instance(
        self,
        ctx: Mapping[str, Any],
        instance: Instance,
        allocation: dict[str, Any],
        image: str,
        network: str | None = None,
    ) -> None:
        """Boot the instance with its allocation; report BUILDING, then ACTIVE or ERROR."""
        uuid = str(instance.uuid)
        request = rpclib.current_request()
        message_id = request.message_id if request is not None else None
        with self._instance_locked(uuid):
            if uuid in self._deleted or instance.vm_state == "DELETED":
                LOG.info("ignoring build of deleted instance %s", uuid)
                return
            previous = self._reported.get(uuid)
            if message_id in self._handled_builds and previous is not None:
                LOG.info("duplicate build of instance %s; reporting its state again", uuid)
                self._report(ctx, instance, dict(previous))
                return
            self._build(ctx, instance, allocation, image, network)
            if message_id is not None:
                self._remember(self._handled_builds, message_id, None)

    def check_image(self, ctx: Mapping[str, Any], image: str) -> str | None:
        """Why this node could not use ``image`` (missing, forbidden, bad scheme), or None."""
        try:
            self._images.check(image)
        except ImageError as exc:
            return str(exc)
        return None

    def delete_instance(self, ctx: Mapping[str, Any], instance: Instance) -> None:
        """Destroy the VM and its disk, report DELETED, then release the allocation.

        If the hypervisor fails, the instance is reported in ERROR and the
        error re-raised (a retried delete starts over).
        """
        uuid = str(instance.uuid)
        with self._instance_locked(uuid):
            previous = self._reported.get(uuid) or _state_of(instance)
            try:
                self._driver.destroy(uuid)
                self._images.remove_disk(self._driver.disk_path(uuid))
            except (VirtError, OSError) as exc:
                LOG.error("delete of instance %s failed: %s", uuid, exc)
                failure = {
                    "vm_state": "ERROR",
                    "task_state": None,
                    "error_reason": f"delete failed: {exc}",
                }
                self._report(ctx, instance, previous | failure)
                raise
            deleted = self._deleted.get(uuid)
            if deleted is None:  # a repeated delete reports the same state again
                deleted = _state(
                    "DELETED",
                    error_reason=previous["error_reason"],
                    launched_at=previous["launched_at"],
                    deleted_at=instance.deleted_at or self._clock(),
                )
                self._remember(self._deleted, uuid, deleted)
            self._report(ctx, instance, dict(deleted))
            self._reported.pop(uuid, None)
            self._conductor.release_allocation(ctx, uuid)
            LOG.info("deleted instance %s", uuid)

    # -- building --------------------------------------------------------------------------

    def _build(
        self,
        ctx: Mapping[str, Any],
        instance: Instance,
        allocation: Mapping[str, Any],
        image: str,
        network: str | None,
    ) -> None:
        uuid = str(instance.uuid)
        try:
            running = self._driver.is_running(uuid)
        except VirtError as exc:
            self._fail(ctx, instance, exc)
            return
        launched_at = None
        if running:
            LOG.info("instance %s already runs (redelivered build); reporting it again", uuid)
            launched_at = (self._reported.get(uuid) or {}).get("launched_at")
            launched_at = launched_at or instance.launched_at
        else:
            self._report(ctx, instance, _state("BUILDING", task_state="spawning"))
        try:
            if not running:
                self._spawn(instance, allocation, image, network)
            address = self._driver.wait_for_ip(uuid, self._ip_timeout)
            if address is None and not self._driver.simulated:
                raise BuildError(f"no IP address (DHCP lease) after {self._ip_timeout:g} s")
        except Exception as exc:
            self._fail(ctx, instance, exc)
            return
        launched_at = launched_at or self._clock()
        self._report(ctx, instance, _state("ACTIVE", ip_address=address, launched_at=launched_at))
        LOG.info("instance %s is ACTIVE at %s", uuid, address or "no address (test driver)")

    def _spawn(
        self,
        instance: Instance,
        allocation: Mapping[str, Any],
        image: str,
        network: str | None,
    ) -> None:
        uuid = str(instance.uuid)
        vcpus, memory_mb, disk_gb = _resources(allocation)
        if self._driver.exists(uuid):
            LOG.info("removing the stopped domain of instance %s left by an earlier build", uuid)
            self._driver.destroy(uuid)
        base = self._images.fetch(image)
        metadata: Mapping[str, str] = instance.metadata or {}
        kernel = initrd = None
        if KERNEL_KEY in metadata:
            kernel = self._images.fetch(metadata[KERNEL_KEY])
            if INITRD_KEY in metadata:
                initrd = self._images.fetch(metadata[INITRD_KEY])
        disk = self._driver.disk_path(uuid)
        self._images.make_disk(base, disk, disk_gb)
        options: dict[str, Any] = {"kernel": kernel, "initrd": initrd}
        if kernel is not None:
            options["cmdline"] = metadata.get(CMDLINE_KEY)
        if network is not None:
            options["network"] = network
        self._driver.spawn(uuid, instance.name, vcpus, memory_mb, Path(disk), **options)

    def _fail(self, ctx: Mapping[str, Any], instance: Instance, exc: Exception) -> None:
        """Remove whatever the build created and report ERROR with the reason."""
        uuid = str(instance.uuid)
        LOG.error("build of instance %s failed: %s", uuid, exc, exc_info=not _is_known_failure(exc))
        try:
            self._driver.destroy(uuid)
        except VirtError as problem:
            LOG.warning("cleanup after the failed build of %s: %s", uuid, problem)
        try:
            self._images.remove_disk(self._driver.disk_path(uuid))
        except OSError as problem:
            LOG.warning("cleanup after the failed build of %s: %s", uuid, problem)
        self._report(ctx, instance, _state("ERROR", error_reason=str(exc) or type(exc).__name__))

    # -- reporting -------------------------------------------------------------------------

    def _report(self, ctx: Mapping[str, Any], instance: Instance, state: dict[str, Any]) -> None:
        uuid = str(instance.uuid)
        sequence = self._next_sequence(floor=int(instance.sequence) + 1)
        self._conductor.instance_update(ctx, uuid, self._host, sequence, dict(state))
        self._reported[uuid] = state

    def _next_sequence(self, floor: int) -> int:
        """max(last + 1, now in ns, floor): increasing here and after a restart."""
        now_ns = (self._clock() - _EPOCH) // timedelta(microseconds=1) * 1000
        with self._sequence_lock:
            self._last_sequence = max(self._last_sequence + 1, now_ns, floor)
            return self._last_sequence

    def _remember(self, memory: OrderedDict[str, Any], key: str, value: Any) -> None:
        """Keep ``key`` in a bounded memory (oldest forgotten first)."""
        with self._locks_guard:
            memory[key] = value
            memory.move_to_end(key)
            while len(memory) > _MEMORY:
                memory.popitem(last=False)

    @contextmanager
    def _instance_locked(self, uuid: str) -> Iterator[None]:
        with self._locks_guard:
            entry = self._locks.setdefault(uuid, _InstanceLock())
            entry.users += 1
        try:
            with entry.lock:
                yield
        finally:
            with self._locks_guard:
                entry.users -= 1
                if entry.users == 0:
                    del self._locks[uuid]


def _resources(allocation: Mapping[str, Any]) -> tuple[int, int, int]:
    """(vcpus, memory_mb, disk_gb) from a placement allocation."""
    amounts = []
    for resource_class in (VCPU, MEMORY_MB, DISK_GB):
        amount = allocation.get(resource_class)
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
            raise BuildError(f"allocation has no usable {resource_class}: {amount!r}")
        amounts.append(amount)
    return amounts[0], amounts[1], amounts[2]


def _state_of(instance: Instance) -> dict[str, Any]:
    return {name: getattr(instance, name) for name in STATE_FIELDS}


def _is_known_failure(exc: Exception) -> bool:
    return isinstance(exc, ImageError | VirtError | BuildError)
