"""The conductor's RPC endpoint: the only way into the database.

Compute nodes report state and register here; the scheduler creates, places
and claims here; the user command lists here. Interface version history
(namespace ``conductor``):

- 1.0: register_compute, heartbeat, instance_update, release_allocation,
  create_instance, allocation_candidates, claim, fail_unplaced, get_instance,
  list_instances, list_services.
- 1.1: database_id (conductors compare it before sharing a bus), begin_delete
  (an unplaced instance is DELETED at once, a placed one shows ``deleting``),
  forget_compute (an operator removes a retired compute host).
- 1.2: create_instance takes ``key_data`` and ``user_data`` (checked by
  services.common.guestdata before any row exists); get_instance_metadata
  (a compute node's metadata service asks who has an address on its host).

Who may call what is :data:`services.common.identities.CONDUCTOR_POLICY`. With
authorization on (the default), the compute host of register_compute,
heartbeat, instance_update and release_allocation is the authenticated
sender's (``compute-<host>``), never the arguments: a ``host`` argument
naming another host is refused with :class:`rpclib.Forbidden`, so the wire
format (and version) is unchanged and honest nodes keep working.

The conductor also emits the instance notifications billing relies on.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import rpclib
from rpclib.logsummary import SummaryLog
from services import notifications
from services.common import guestdata, identities
from services.conductor.db import (
    DISK_GB,
    MEMORY_MB,
    VCPU,
    ConductorDB,
    Inventory,
    Usage,
    VmState,
)
from services.conductor.db import Instance as InstanceRecord
from services.conductor.errors import WrongHost
from services.conductor.rpcapi import NAMESPACE, VERSION
from services.objects import Flavor, Instance

LOG = logging.getLogger("services.conductor")


def to_object(record: InstanceRecord, *, user_data: bool = True) -> Instance:
    """The versioned object for a database row (``user_data=False``: None in its place)."""
    return Instance(
        uuid=record.uuid,
        name=record.name,
        project_id=record.project_id,
        user_id=record.user_id,
        host=record.host,
        flavor=Flavor(vcpus=record.vcpus, memory_mb=record.memory_mb, disk_gb=record.disk_gb),
        image=record.image,
        vm_state=record.vm_state.value,
        task_state=record.task_state,
        ip_address=record.ip_address,
        error_reason=record.error_reason,
        created_at=record.created_at,
        launched_at=record.launched_at,
        deleted_at=record.deleted_at,
        sequence=record.sequence,
        key_data=record.key_data,
        user_data=record.user_data if user_data else None,
    )


def payload_of(record: InstanceRecord | Usage, **audit: Any) -> notifications.InstancePayload:
    """The notification payload of an instance row or of its usage in an audit window."""
    uuid = record.instance_uuid if isinstance(record, Usage) else record.uuid
    return notifications.instance_payload(
        instance_uuid=uuid,
        name=record.name,
        project_id=record.project_id,
        user_id=record.user_id,
        host=record.host,
        vcpus=record.vcpus,
        memory_mb=record.memory_mb,
        disk_gb=record.disk_gb,
        vm_state=record.vm_state.value,
        launched_at=record.launched_at,
        deleted_at=record.deleted_at,
        **audit,
    )


class ConductorManager:
    """RPC endpoint over :class:`ConductorDB`."""

    target = rpclib.Target(namespace=NAMESPACE, version=VERSION)
    # Callers at 1.1 or older were written against Instance 1.1 (key_data and user_data
    # came with Instance 1.2): their replies carry it backported, so an older caller
    # without an indirection can still read them during a rolling upgrade.
    reply_object_versions = {"1.1": {"Instance": "1.1"}}

    def __init__(
        self, db: ConductorDB, notifier: rpclib.Notifier, *, authorization: bool = True
    ) -> None:
        self.db = db
        self.notifier = notifier
        self.authorization = authorization
        self._refusals = SummaryLog(
            LOG
        )  # a node sending nothing but refused requests floods no log

    def _refused(self, who: str | None, msg: str, *args: object) -> None:
        self._refusals.log(logging.WARNING, f"refusals of {who!r}", msg, *args)

    def _acting_host(self, method: str, claimed: str | None) -> str:
        """The compute host the request acts for: its authenticated sender's.

        Raises :class:`rpclib.Forbidden` (and logs it) if the sender is no
        compute node or ``claimed`` names another host. Without authorization
        the claimed host is taken as it is (an unauthenticated bus).
        """
        if not self.authorization:
            if claimed is None:
                raise ValueError(f"{method} needs a host when authorization is off")
            return claimed
        request = rpclib.current_request()
        sender = request.sender if request is not None else None
        host = identities.compute_host(sender)
        if host is not None and claimed in (None, host):
            return host
        rule = "a compute node acts only as its own host"
        self._refused(
            sender, "refused %s from %r: it claimed host %r (%s)", method, sender, claimed, rule
        )
        raise rpclib.Forbidden(sender, method, NAMESPACE, f"{rule}, not as {claimed!r}")

    # --- compute nodes -------------------------------------------------------------

    def register_compute(
        self,
        ctx: dict[str, Any],
        host: str,
        vcpus: int,
        memory_mb: int,
        disk_gb: int,
        versions: dict[str, str],
    ) -> None:
        """A compute node reports itself and what it has (its resource provider)."""
        host = self._acting_host("register_compute", host)
        self.db.register_service(host, "compute", versions)
        self.db.ensure_provider(
            host,
            {
                VCPU: Inventory(total=vcpus),
                MEMORY_MB: Inventory(total=memory_mb),
                DISK_GB: Inventory(total=disk_gb),
            },
        )
        LOG.info("compute %s registered: %d vCPU, %d MB, %d GB", host, vcpus, memory_mb, disk_gb)

    def heartbeat(self, ctx: dict[str, Any], host: str, binary: str) -> None:
        host = self._acting_host("heartbeat", host)
        if self.authorization and binary != "compute":
            self._refused(host, "refused heartbeat from compute %s for binary %r", host, binary)
            raise rpclib.Forbidden(
                f"compute-{host}", "heartbeat", NAMESPACE, f"a compute node is not {binary!r}"
            )
        self.db.service_heartbeat(host, binary)

    def instance_update(
        self,
        ctx: dict[str, Any],
        instance_uuid: str,
        host: str,
        sequence: int,
        state: dict[str, Any],
    ) -> bool:
        """Apply a compute node's update if newer (compare-and-set on ``sequence``).

        Refuses (WrongHost) an update for an instance not placed on ``host``.
        Emits instance.create.end / instance.delete.end on those transitions.
        """
        host = self._acting_host("instance_update", host)
        try:
            applied, previous = self.db.apply_instance_transition(
                instance_uuid, host, sequence, state
            )
        except WrongHost as exc:
            self._refused(host, "refused instance_update from compute %s: %s", host, exc)
            raise
        if not applied:
            LOG.debug("stale or duplicate update %d for %s ignored", sequence, instance_uuid)
            return False
        after = self.db.get_instance(instance_uuid)
        if after.vm_state != previous:
            if after.vm_state == VmState.ACTIVE:
                self.notifier.info(ctx, notifications.CREATE_END, payload_of(after))
            elif after.vm_state == VmState.DELETED:
                self.notifier.info(ctx, notifications.DELETE_END, payload_of(after))
        return True

    def release_allocation(self, ctx: dict[str, Any], instance_uuid: str) -> bool:
        """Free what the instance holds; a compute node may free only what is on its host."""
        if self.authorization:
            host = self._acting_host("release_allocation", None)
            held = self.db.get_allocation(instance_uuid)
            if held is None:
                return False
            if held.provider != host:
                self._refused(
                    host,
                    "refused release_allocation from compute %s: instance %s is held on %s",
                    host,
                    instance_uuid,
                    held.provider,
                )
                raise rpclib.Forbidden(
                    f"compute-{host}",
                    "release_allocation",
                    NAMESPACE,
                    "a compute node releases only what is allocated on its own host",
                )
        return self.db.release(instance_uuid)

    def get_instance_metadata(
        self, ctx: dict[str, Any], host: str, address: str
    ) -> Instance | None:
        """The live instance at ``address`` on the asking compute node's host, or None.

        A compute node's metadata service asks this for the source address of
        a guest's request; it learns only about instances placed on its own
        host (the authenticated sender's: naming another host is Forbidden).
        """
        host = self._acting_host("get_instance_metadata", host)
        record = self.db.instance_at_address(host, address)
        return to_object(record) if record is not None else None

    # --- the scheduler ---------------------------------------------------------------------

    def create_instance(
        self,
        ctx: dict[str, Any],
        name: str,
        project_id: str,
        user_id: str,
        flavor: Flavor,
        image: str,
        key_data: str | None = None,
        user_data: str | None = None,
    ) -> Instance:
        if key_data is not None:
            key_data = guestdata.check_public_key(key_data)
        if user_data is not None:
            user_data = guestdata.check_user_data(user_data)
        record = self.db.create_instance(
            name=name,
            project_id=project_id,
            user_id=user_id,
            vcpus=flavor.vcpus,
            memory_mb=flavor.memory_mb,
            disk_gb=flavor.disk_gb,
            image=image,
            key_data=key_data,
            user_data=user_data,
        )
        return to_object(record)

    def allocation_candidates(
        self, ctx: dict[str, Any], vcpus: int, memory_mb: int, disk_gb: int
    ) -> list[dict[str, Any]]:
        """Hosts that fit, with what each has free (the scheduler sorts them)."""
        return [
            {"host": c.name, "free": dict(c.free), "capacity": dict(c.capacity)}
            for c in self.db.allocation_candidates(vcpus, memory_mb, disk_gb)
        ]

    def claim(
        self, ctx: dict[str, Any], instance_uuid: str, host: str, resources: dict[str, int]
    ) -> dict[str, int]:
        """Atomically claim ``resources`` on ``host`` (NoCapacity / ClaimConflict if lost)."""
        allocation = self.db.claim(instance_uuid, host, resources)
        record = self.db.get_instance(instance_uuid)
        self.notifier.info(ctx, notifications.CREATE_START, payload_of(record))
        return dict(allocation.resources)

    def fail_unplaced(self, ctx: dict[str, Any], instance_uuid: str, reason: str) -> Instance:
        self.db.fail_unplaced(instance_uuid, reason)
        return to_object(self.db.get_instance(instance_uuid))

    def begin_delete(self, ctx: dict[str, Any], instance_uuid: str) -> Instance:
        """Mark a delete as started (see ConductorDB.begin_delete); returns the instance."""
        return to_object(self.db.begin_delete(instance_uuid))

    # --- conductors and operators -------------------------------------------------------------

    def database_id(self, ctx: dict[str, Any]) -> str:
        """The identity of the database this conductor serves."""
        return self.db.database_id()

    def forget_compute(self, ctx: dict[str, Any], host: str) -> bool:
        """Remove a retired compute host's service row and resource provider (HostInUse if
        instances are still on it); False if the host was not known."""
        forgotten = self.db.forget_compute(host)
        LOG.info("compute host %s forgotten (%s)", host, "removed" if forgotten else "was unknown")
        return forgotten

    # --- users ------------------------------------------------------------------------------

    def get_instance(self, ctx: dict[str, Any], instance_uuid: str) -> Instance:
        return to_object(self.db.get_instance(instance_uuid))

    def list_instances(
        self, ctx: dict[str, Any], project_id: str | None = None, include_deleted: bool = False
    ) -> list[Instance]:
        """Instances with ``user_data`` None (up to 64 KiB each: a long list would
        outgrow a message); get_instance has it."""
        return [
            to_object(r, user_data=False)
            for r in self.db.list_instances(project_id, include_deleted=include_deleted)
        ]

    def list_services(self, ctx: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {
                "host": s.host,
                "binary": s.binary,
                "versions": dict(s.versions),
                "last_heartbeat": s.last_heartbeat,
            }
            for s in self.db.list_services()
        ]

    # --- periodic ---------------------------------------------------------------------------

    def emit_exists(self, start: dt.datetime, end: dt.datetime) -> int:
        """One instance.exists per instance alive in [start, end): billing's audit trail."""
        count = 0
        for usage in self.db.usage_between(start, end):
            self.notifier.info(
                {},
                notifications.EXISTS,
                payload_of(usage, audit_period_start=start, audit_period_end=end),
            )
            count += 1
        return count
