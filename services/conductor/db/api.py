"""ConductorDB: the conductor's persistence and placement operations, no RPC.

Every public method is one short transaction and returns detached records
(``records.py``). Two compare-and-set rules carry the concurrency:

- **Provider generation.** Every change to a provider's inventories or
  allocations bumps its generation with ``UPDATE ... WHERE generation =
  :seen``. A claim reads the generation, then usage, checks the fit, bumps
  (which also locks the provider row until commit) and checks again. A racing
  claim that committed first makes the bump match no row: the claim reruns on
  fresh data, so the loser of a race for the last resources gets
  :class:`NoCapacity`, and :class:`ClaimConflict` only if the provider kept
  changing for ``claim_attempts`` tries.
- **Instance sequence.** ``apply_instance_update`` is one ``UPDATE ... WHERE
  uuid = :u AND host = :host AND sequence < :seq``: duplicates and older
  updates match no row, whatever order workers run them in, so state never
  goes back. Each update should therefore carry the instance's whole mutable
  state as of its sequence, not a delta.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar, cast
from uuid import UUID, uuid4

from sqlalchemy import CursorResult, Engine, Result, delete, func, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.conductor.db.engine import check_engine, for_writes
from services.conductor.db.models import (
    AllocationRow,
    DatabaseIdentityRow,
    InstanceEventRow,
    InstanceRow,
    InventoryRow,
    ProviderRow,
    ServiceRow,
)
from services.conductor.db.records import (
    Allocation,
    Candidate,
    Instance,
    InstanceEvent,
    Inventory,
    Provider,
    Service,
    Usage,
    VmState,
    resources,
)
from services.conductor.errors import (
    ClaimConflict,
    HostInUse,
    InstanceExists,
    InstanceNotFound,
    InventoryInUse,
    NoCapacity,
    ProviderConflict,
    ProviderNotFound,
    ServiceNotFound,
    WrongHost,
)

T = TypeVar("T")

UPDATABLE_FIELDS = frozenset(
    {"vm_state", "task_state", "ip_address", "error_reason", "launched_at", "deleted_at"}
)
_TEXT_FIELDS = frozenset({"task_state", "ip_address", "error_reason"})
_TIME_FIELDS = frozenset({"launched_at", "deleted_at"})
_VM_STATES = frozenset(state.value for state in VmState)
# PostgreSQL serialization failure and deadlock: the transaction may simply be rerun.
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})


class _Rerun(Exception):
    """Raised inside a transaction to roll it back and run it again."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ConductorDB:
    """The conductor's database operations over one engine (thread-safe, share it).

    The engine must come from :func:`services.conductor.db.create_engine`.

    ``clock`` returns the aware UTC "now" stamped on rows; ``claim_attempts``
    bounds how often a claim reruns after losing a generation race.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], datetime] = _utcnow,
        claim_attempts: int = 10,
    ) -> None:
        check_engine(engine)
        self.engine = engine
        self._clock = clock
        self._claim_attempts = claim_attempts
        self._reader = sessionmaker(engine, expire_on_commit=False)
        self._writer = sessionmaker(for_writes(engine), expire_on_commit=False)

    # -- identity ---------------------------------------------------------------------------

    def database_id(self) -> str:
        """This database's identity: a UUID made the first time it is asked for, then kept.

        Conductors compare it before serving on a bus (two conductors on different
        databases must never share one).
        """
        with self._reader() as s:
            found = s.scalars(select(DatabaseIdentityRow.uuid)).first()
        if found is not None:
            return found

        def work(s: Session) -> str:
            row = s.scalars(select(DatabaseIdentityRow)).first()
            if row is None:  # a racing conductor inserting id 1 too makes this attempt rerun
                row = DatabaseIdentityRow(id=1, uuid=str(uuid4()), created_at=self._clock())
                s.add(row)
                s.flush()
            return row.uuid

        return self._write(work, attempts=2)

    # -- services ---------------------------------------------------------------------------

    def register_service(self, host: str, binary: str, versions: Mapping[str, str]) -> Service:
        """Record a service (or re-record it after a restart) with its interface versions."""

        def work(s: Session) -> Service:
            now = self._clock()
            row = s.scalars(
                select(ServiceRow).where(ServiceRow.host == host, ServiceRow.binary == binary)
            ).one_or_none()
            if row is None:
                row = ServiceRow(host=host, binary=binary, created_at=now)
                s.add(row)
            row.versions = dict(versions)
            row.last_heartbeat = now
            s.flush()
            return _service(row)

        return self._write(work, attempts=2)

    def service_heartbeat(self, host: str, binary: str) -> None:
        """Stamp a registered service as alive now."""
        with self._writer.begin() as s:
            stmt = (
                update(ServiceRow)
                .where(ServiceRow.host == host, ServiceRow.binary == binary)
                .values(last_heartbeat=self._clock())
            )
            if not _rowcount(s.execute(stmt, execution_options={"synchronize_session": False})):
                raise ServiceNotFound(host, binary)

    def forget_compute(self, host: str) -> bool:
        """Remove a retired compute host: its service row, resource provider and inventories.

        Raises :class:`HostInUse` while instances that are not DELETED are on
        it. Returns False if the host was not known at all.
        """
        with self._writer.begin() as s:
            provider = s.scalars(
                select(ProviderRow).where(ProviderRow.name == host).with_for_update()
            ).one_or_none()  # locked first: a racing claim on it waits, then finds it gone
            remaining = s.scalars(
                select(InstanceRow.uuid).where(
                    InstanceRow.host == host, InstanceRow.vm_state != VmState.DELETED.value
                )
            ).all()
            if remaining:
                raise HostInUse(host, len(remaining))
            options = {"synchronize_session": False}
            if provider is not None:
                for table in (AllocationRow, InventoryRow):
                    s.execute(
                        delete(table).where(table.provider_id == provider.id),
                        execution_options=options,
                    )
                s.execute(
                    delete(ProviderRow).where(ProviderRow.id == provider.id),
                    execution_options=options,
                )
            services = s.execute(
                delete(ServiceRow).where(ServiceRow.host == host, ServiceRow.binary == "compute"),
                execution_options=options,
            )
            return provider is not None or _rowcount(services) > 0

    def list_services(self, binary: str | None = None) -> list[Service]:
        """Registered services (of one binary), by binary then host."""
        stmt = select(ServiceRow).order_by(ServiceRow.binary, ServiceRow.host)
        if binary is not None:
            stmt = stmt.where(ServiceRow.binary == binary)
        with self._reader() as s:
            return [_service(row) for row in s.scalars(stmt)]

    # -- placement --------------------------------------------------------------------------

    def ensure_provider(self, name: str, inventories: Mapping[str, Inventory]) -> Provider:
        """Create provider ``name`` or set its inventories to exactly these.

        The generation is bumped when anything changed (a no-op report leaves it,
        so it does not disturb claims in flight). Removing a resource class that
        allocations still use raises :class:`InventoryInUse`.
        """
        wanted = dict(inventories)
        for rc in wanted:
            if not rc or not isinstance(rc, str):
                raise ValueError(f"invalid resource class {rc!r}")

        def work(s: Session) -> Provider:
            now = self._clock()
            row = s.scalars(select(ProviderRow).where(ProviderRow.name == name)).one_or_none()
            if row is None:
                row = ProviderRow(
                    uuid=str(uuid4()), name=name, generation=0, created_at=now, updated_at=now
                )
                s.add(row)
                s.flush()
            generation = row.generation
            current = {
                inv.resource_class: inv
                for inv in s.scalars(select(InventoryRow).where(InventoryRow.provider_id == row.id))
            }
            if {rc: _inventory(inv) for rc, inv in current.items()} != wanted:
                _check_unused(s, row, current.keys() - wanted.keys())
                if not _bump_generation(s, row.id, seen=generation, now=now):
                    raise _Rerun
                generation += 1
                _replace_inventories(s, row.id, current, wanted)
            return Provider(
                uuid=row.uuid,
                name=row.name,
                generation=generation,
                inventories=wanted,
                used=_usage(s, [row.id]).get(row.id, {}),
            )

        return self._write(
            work,
            attempts=self._claim_attempts,
            exhausted=lambda: ProviderConflict(name, self._claim_attempts),
        )

    def get_provider(self, name: str) -> Provider:
        """A provider with its inventories and current usage."""
        with self._reader.begin() as s:
            row = s.scalars(select(ProviderRow).where(ProviderRow.name == name)).one_or_none()
            if row is None:
                raise ProviderNotFound(name)
            return Provider(
                uuid=row.uuid,
                name=row.name,
                generation=row.generation,
                inventories=_inventories(s, row.id),
                used=_usage(s, [row.id]).get(row.id, {}),
            )

    def allocation_candidates(self, vcpus: int, memory_mb: int, disk_gb: int) -> list[Candidate]:
        """Providers that can fit the request now, most free first.

        Order: free memory, then free vCPUs, then free disk, descending (spread);
        reverse the list to pack. The answer is advisory: :meth:`claim` decides.
        """
        wanted = _request(resources(vcpus, memory_mb, disk_gb))
        with self._reader.begin() as s:
            providers = s.execute(
                select(ProviderRow.id, ProviderRow.name, ProviderRow.uuid, ProviderRow.generation)
            ).all()
            inventories: dict[int, dict[str, Inventory]] = {}
            for inv in s.scalars(select(InventoryRow)):
                inventories.setdefault(inv.provider_id, {})[inv.resource_class] = _inventory(inv)
            usage = _usage(s)
        candidates = []
        for p in providers:
            invs, used = inventories.get(p.id, {}), usage.get(p.id, {})
            if all(
                rc in invs and invs[rc].refusal(amount, used.get(rc, 0)) is None
                for rc, amount in wanted.items()
            ):
                capacity = {rc: inv.capacity for rc, inv in invs.items()}
                free = {rc: cap - used.get(rc, 0) for rc, cap in capacity.items()}
                candidates.append(Candidate(p.name, p.uuid, p.generation, free, capacity))
        candidates.sort(key=_spread_order)
        return candidates

    def claim(
        self, instance_uuid: str | UUID, provider_name: str, resources: Mapping[str, int]
    ) -> Allocation:
        """Atomically allocate ``resources`` (class -> amount) on a provider and place the instance.

        Replaces whatever the instance held before (so a retried claim is
        idempotent). Raises :class:`NoCapacity` when it does not fit,
        :class:`ClaimConflict` when the provider kept changing under it.
        """
        uuid = _uuid(instance_uuid)
        wanted = _request(resources)

        def work(s: Session) -> Allocation:
            provider = s.scalars(
                select(ProviderRow).where(ProviderRow.name == provider_name)
            ).one_or_none()
            if provider is None:
                raise ProviderNotFound(provider_name)
            instance = s.get(InstanceRow, uuid)
            if instance is None:
                raise InstanceNotFound(uuid)
            now, seen = self._clock(), provider.generation
            _check_fit(s, provider, wanted, uuid)  # fail fast, before locking the provider
            if not _bump_generation(s, provider.id, seen=seen, now=now):
                raise _Rerun
            _check_fit(s, provider, wanted, uuid)  # authoritative: the provider row is ours now
            _drop_allocations(s, uuid, now=now, keep_provider=provider.id)
            s.add_all(
                AllocationRow(
                    consumer_uuid=uuid, provider_id=provider.id, resource_class=rc, used=amount
                )
                for rc, amount in wanted.items()
            )
            instance.host = provider.name
            instance.updated_at = now
            return Allocation(uuid, provider.name, provider.uuid, seen + 1, wanted)

        return self._write(
            work,
            attempts=self._claim_attempts,
            exhausted=lambda: ClaimConflict(provider_name, self._claim_attempts),
        )

    def release(self, instance_uuid: str | UUID) -> bool:
        """Free everything the instance holds; False if it held nothing."""
        uuid = _uuid(instance_uuid)
        with self._writer.begin() as s:
            return _drop_allocations(s, uuid, now=self._clock())

    def get_allocation(self, instance_uuid: str | UUID) -> Allocation | None:
        """What the instance holds now (None: nothing)."""
        uuid = _uuid(instance_uuid)
        with self._reader.begin() as s:
            rows = s.execute(
                select(
                    ProviderRow.name,
                    ProviderRow.uuid,
                    ProviderRow.generation,
                    AllocationRow.resource_class,
                    AllocationRow.used,
                )
                .join(ProviderRow, ProviderRow.id == AllocationRow.provider_id)
                .where(AllocationRow.consumer_uuid == uuid)
            ).all()
        if not rows:
            return None
        first = rows[0]
        held = {r.resource_class: r.used for r in rows}
        return Allocation(uuid, first.name, first.uuid, first.generation, held)

    # -- instances --------------------------------------------------------------------------

    def create_instance(
        self,
        *,
        name: str,
        project_id: str,
        user_id: str,
        vcpus: int,
        memory_mb: int,
        disk_gb: int,
        image: str,
        uuid: str | UUID | None = None,
        key_data: str | None = None,
        user_data: str | None = None,
    ) -> Instance:
        """Record a new instance in BUILDING, unplaced, at sequence 0 (uuid generated if None).

        ``key_data`` and ``user_data`` are stored as given: the conductor's
        endpoint checks them (services.common.guestdata) before calling this.
        """
        instance_uuid = _uuid(uuid) if uuid is not None else str(uuid4())
        _request(resources(vcpus, memory_mb, disk_gb))

        def work(s: Session) -> Instance:
            if s.get(InstanceRow, instance_uuid) is not None:
                raise InstanceExists(instance_uuid)
            now = self._clock()
            row = InstanceRow(
                uuid=instance_uuid,
                name=name,
                project_id=project_id,
                user_id=user_id,
                host=None,
                vcpus=vcpus,
                memory_mb=memory_mb,
                disk_gb=disk_gb,
                image=image,
                vm_state=VmState.BUILDING.value,
                created_at=now,
                updated_at=now,
                sequence=0,
                key_data=key_data,
                user_data=user_data,
            )
            s.add(row)
            s.flush()
            s.add(
                InstanceEventRow(
                    instance_uuid=instance_uuid,
                    name="create",
                    detail={},
                    sequence=0,
                    created_at=now,
                )
            )
            return _instance(row)

        try:
            return self._write(work)
        except IntegrityError as exc:  # created concurrently by someone else
            raise InstanceExists(instance_uuid) from exc

    def get_instance(self, uuid: str | UUID) -> Instance:
        instance_uuid = _uuid(uuid)
        with self._reader() as s:
            row = s.get(InstanceRow, instance_uuid)
            if row is None:
                raise InstanceNotFound(instance_uuid)
            return _instance(row)

    def list_instances(
        self,
        project_id: str | None = None,
        *,
        host: str | None = None,
        include_deleted: bool = False,
    ) -> list[Instance]:
        """Instances (of a project, on a host), oldest first; DELETED ones only if asked."""
        stmt = select(InstanceRow).order_by(InstanceRow.created_at, InstanceRow.uuid)
        if project_id is not None:
            stmt = stmt.where(InstanceRow.project_id == project_id)
        if host is not None:
            stmt = stmt.where(InstanceRow.host == host)
        if not include_deleted:
            stmt = stmt.where(InstanceRow.vm_state != VmState.DELETED.value)
        with self._reader() as s:
            return [_instance(row) for row in s.scalars(stmt)]

    def instance_at_address(self, host: str, address: str) -> Instance | None:
        """The live (not DELETED) instance on ``host`` with IP ``address``, if any.

        Asked per host because each compute node's private network may reuse
        addresses another node's network also hands out.
        """
        stmt = (
            select(InstanceRow)
            .where(
                InstanceRow.host == host,
                InstanceRow.ip_address == address,
                InstanceRow.vm_state != VmState.DELETED.value,
            )
            .order_by(InstanceRow.updated_at.desc())
            .limit(1)
        )
        with self._reader() as s:
            row = s.scalars(stmt).first()
            return _instance(row) if row is not None else None

    def apply_instance_update(
        self,
        uuid: str | UUID,
        host: str,
        sequence: int,
        changes: Mapping[str, object],
        *,
        event: str = "update",
    ) -> bool:
        """Apply a compute host's update if it is newer than what is stored.

        Returns False for a duplicate or older ``sequence`` (nothing changes).
        Raises :class:`WrongHost` when the instance is not placed on ``host``,
        :class:`InstanceNotFound`, and ValueError naming a field that updates may
        not touch (allowed: ``UPDATABLE_FIELDS``) or a bad value. An applied
        update is recorded as an instance event ``event`` with its sequence.
        """
        applied, _ = self.apply_instance_transition(uuid, host, sequence, changes, event=event)
        return applied

    def apply_instance_transition(
        self,
        uuid: str | UUID,
        host: str,
        sequence: int,
        changes: Mapping[str, object],
        *,
        event: str = "update",
    ) -> tuple[bool, VmState | None]:
        """Like :meth:`apply_instance_update`, also returning the vm_state it replaced.

        The previous state is read under a row lock in the same transaction as
        the compare-and-set, so of several concurrent updates exactly one sees
        a given transition (e.g. BUILDING -> ACTIVE): the caller can emit a
        notification for it once.
        """
        instance_uuid = _uuid(uuid)
        values = _checked_changes(changes)
        if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 1:
            raise ValueError(f"sequence must be an int >= 1, got {sequence!r}")
        with self._writer.begin() as s:
            now = self._clock()
            current = s.execute(
                select(InstanceRow.host, InstanceRow.vm_state, InstanceRow.sequence)
                .where(InstanceRow.uuid == instance_uuid)
                .with_for_update()
            ).one_or_none()
            if current is None:
                raise InstanceNotFound(instance_uuid)
            if current.host != host:
                raise WrongHost(instance_uuid, host, current.host)
            if current.sequence >= sequence:
                return False, None
            stmt = (
                update(InstanceRow)
                .where(
                    InstanceRow.uuid == instance_uuid,
                    InstanceRow.host == host,
                    InstanceRow.sequence < sequence,
                )
                .values(values | {"sequence": sequence, "updated_at": now})
            )
            if not _rowcount(s.execute(stmt, execution_options={"synchronize_session": False})):
                return False, None
            s.add(
                InstanceEventRow(
                    instance_uuid=instance_uuid,
                    name=event,
                    detail=_jsonable(values),
                    sequence=sequence,
                    created_at=now,
                )
            )
            return True, VmState(current.vm_state)

    def fail_unplaced(self, uuid: str | UUID, reason: str) -> bool:
        """Put an instance that was never placed in ERROR with ``reason`` (no valid host).

        Returns False if it was placed meanwhile (then its compute host owns its
        state) or is already in ERROR.
        """
        instance_uuid = _uuid(uuid)
        if not isinstance(reason, str) or not reason:
            raise ValueError("reason must be a non-empty string")
        with self._writer.begin() as s:
            now = self._clock()
            stmt = (
                update(InstanceRow)
                .where(
                    InstanceRow.uuid == instance_uuid,
                    InstanceRow.host.is_(None),
                    InstanceRow.vm_state != VmState.ERROR.value,
                )
                .values(vm_state=VmState.ERROR.value, error_reason=reason, updated_at=now)
            )
            if _rowcount(s.execute(stmt, execution_options={"synchronize_session": False})):
                s.add(
                    InstanceEventRow(
                        instance_uuid=instance_uuid,
                        name="no_valid_host",
                        detail={"error_reason": reason},
                        sequence=0,
                        created_at=now,
                    )
                )
                return True
            exists = s.execute(
                select(InstanceRow.uuid).where(InstanceRow.uuid == instance_uuid)
            ).one_or_none()
            if exists is None:
                raise InstanceNotFound(instance_uuid)
            return False

    def begin_delete(self, uuid: str | UUID) -> Instance:
        """Start deleting an instance; returns it as it is now.

        One never placed (no host: it holds nothing and no compute node knows
        it) is DELETED at once. A placed one gets ``task_state`` ``deleting``
        until its compute node reports DELETED (its update, with a higher
        sequence, replaces the task state). A DELETED one is left as it is.
        """
        instance_uuid = _uuid(uuid)
        with self._writer.begin() as s:
            row = s.get(InstanceRow, instance_uuid, with_for_update=True)
            if row is None:
                raise InstanceNotFound(instance_uuid)
            if row.vm_state != VmState.DELETED.value:
                now = self._clock()
                if row.host is None:
                    row.vm_state, row.task_state, row.deleted_at = VmState.DELETED.value, None, now
                    event, detail = "delete_unplaced", {"vm_state": VmState.DELETED.value}
                    _drop_allocations(s, instance_uuid, now=now)
                else:
                    row.task_state = "deleting"
                    event, detail = "delete_requested", {"task_state": "deleting"}
                row.updated_at = now
                s.add(
                    InstanceEventRow(
                        instance_uuid=instance_uuid,
                        name=event,
                        detail=detail,
                        sequence=row.sequence,
                        created_at=now,
                    )
                )
                s.flush()
            return _instance(row)

    def list_instance_events(self, uuid: str | UUID) -> list[InstanceEvent]:
        """The instance's recorded events, in the order they were applied."""
        instance_uuid = _uuid(uuid)
        stmt = (
            select(InstanceEventRow)
            .where(InstanceEventRow.instance_uuid == instance_uuid)
            .order_by(InstanceEventRow.id)
        )
        with self._reader() as s:
            return [
                InstanceEvent(row.instance_uuid, row.name, row.sequence, row.created_at, row.detail)
                for row in s.scalars(stmt)
            ]

    def usage_between(self, start: datetime, end: datetime) -> list[Usage]:
        """Instances that were running at some time in ``[start, end)``, for the "exists" audit.

        Running means launched before ``end`` and not deleted by ``start``
        (never-launched instances are not billable). Each usage says which part
        of the window the instance covered.
        """
        if start.utcoffset() is None or end.utcoffset() is None:
            raise ValueError("usage window bounds must be timezone-aware")
        if not start < end:
            raise ValueError(f"empty usage window {start} .. {end}")
        stmt = (
            select(InstanceRow)
            .where(
                InstanceRow.launched_at.is_not(None),
                InstanceRow.launched_at < end,
                or_(InstanceRow.deleted_at.is_(None), InstanceRow.deleted_at > start),
            )
            .order_by(InstanceRow.launched_at, InstanceRow.uuid)
        )
        with self._reader() as s:
            rows = list(s.scalars(stmt))
        return [_usage_record(row, start, end) for row in rows]

    # -- transactions -----------------------------------------------------------------------

    def _write(
        self,
        work: Callable[[Session], T],
        *,
        attempts: int = 1,
        exhausted: Callable[[], Exception] | None = None,
    ) -> T:
        """Run ``work`` in a write transaction, rerunning it on races, up to ``attempts`` times."""
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            try:
                with self._writer.begin() as s:
                    return work(s)
            except _Rerun:
                if last and exhausted is None:
                    raise RuntimeError(f"still racing after {attempts} attempts") from None
            except IntegrityError:  # lost a race to insert the same row
                if last:
                    raise
            except DBAPIError as exc:
                if last or getattr(exc.orig, "sqlstate", None) not in _TRANSIENT_SQLSTATES:
                    raise
        assert exhausted is not None
        raise exhausted()


# -- helpers (all run inside a caller's transaction) -----------------------------------------


def _rowcount(result: Result[Any]) -> int:
    return cast("CursorResult[Any]", result).rowcount


def _bump_generation(s: Session, provider_id: int, *, seen: int, now: datetime) -> bool:
    """Compare-and-set the generation from ``seen``; locks the provider row until commit."""
    stmt = (
        update(ProviderRow)
        .where(ProviderRow.id == provider_id, ProviderRow.generation == seen)
        .values(generation=seen + 1, updated_at=now)
    )
    return _rowcount(s.execute(stmt, execution_options={"synchronize_session": False})) == 1


def _usage(
    s: Session, provider_ids: Iterable[int] | None = None, *, exclude: str | None = None
) -> dict[int, dict[str, int]]:
    """Used amounts by provider id and resource class."""
    stmt = select(
        AllocationRow.provider_id, AllocationRow.resource_class, func.sum(AllocationRow.used)
    ).group_by(AllocationRow.provider_id, AllocationRow.resource_class)
    if provider_ids is not None:
        stmt = stmt.where(AllocationRow.provider_id.in_(list(provider_ids)))
    if exclude is not None:
        stmt = stmt.where(AllocationRow.consumer_uuid != exclude)
    usage: dict[int, dict[str, int]] = {}
    for provider_id, rc, used in s.execute(stmt):
        usage.setdefault(provider_id, {})[rc] = int(used)
    return usage


def _inventories(s: Session, provider_id: int) -> dict[str, Inventory]:
    rows = s.scalars(select(InventoryRow).where(InventoryRow.provider_id == provider_id))
    return {row.resource_class: _inventory(row) for row in rows}


def _check_fit(s: Session, provider: ProviderRow, wanted: Mapping[str, int], consumer: str) -> None:
    """Raise NoCapacity unless ``wanted`` fits beside everyone else's allocations."""
    inventories = _inventories(s, provider.id)
    used = _usage(s, [provider.id], exclude=consumer).get(provider.id, {})
    for rc, amount in wanted.items():
        if rc not in inventories:
            raise NoCapacity(provider.name, rc, "the provider has no inventory of it")
        if reason := inventories[rc].refusal(amount, used.get(rc, 0)):
            raise NoCapacity(provider.name, rc, reason)


def _drop_allocations(
    s: Session, consumer: str, *, now: datetime, keep_provider: int | None = None
) -> bool:
    """Delete the consumer's allocations, bumping the generation of the providers it left."""
    held = s.scalars(
        select(AllocationRow.provider_id).where(AllocationRow.consumer_uuid == consumer).distinct()
    ).all()
    if not held:
        return False
    s.execute(
        delete(AllocationRow).where(AllocationRow.consumer_uuid == consumer),
        execution_options={"synchronize_session": False},
    )
    left = sorted(pid for pid in held if pid != keep_provider)
    if left:
        s.execute(
            update(ProviderRow)
            .where(ProviderRow.id.in_(left))
            .values(generation=ProviderRow.generation + 1, updated_at=now),
            execution_options={"synchronize_session": False},
        )
    return True


def _check_unused(s: Session, provider: ProviderRow, classes: Iterable[str]) -> None:
    classes = list(classes)
    if not classes:
        return
    in_use = s.scalars(
        select(AllocationRow.resource_class)
        .where(AllocationRow.provider_id == provider.id, AllocationRow.resource_class.in_(classes))
        .distinct()
    ).all()
    if in_use:
        raise InventoryInUse(provider.name, ", ".join(sorted(in_use)))


def _replace_inventories(
    s: Session,
    provider_id: int,
    current: Mapping[str, InventoryRow],
    wanted: Mapping[str, Inventory],
) -> None:
    for rc, row in current.items():
        if rc not in wanted:
            s.delete(row)
    for rc, inv in wanted.items():
        row = current.get(rc) or InventoryRow(provider_id=provider_id, resource_class=rc)
        row.total, row.reserved, row.allocation_ratio = (
            inv.total,
            inv.reserved,
            inv.allocation_ratio,
        )
        row.min_unit, row.max_unit, row.step_size = inv.min_unit, inv.max_unit, inv.step_size
        s.add(row)


def _request(wanted: Mapping[str, int]) -> dict[str, int]:
    """A validated resource request: non-negative ints, zero amounts left out, not empty."""
    request: dict[str, int] = {}
    for rc, amount in wanted.items():
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise ValueError(f"{rc}: amount must be an int >= 0, got {amount!r}")
        if amount:
            request[rc] = amount
    if not request:
        raise ValueError("a resource request must ask for something")
    return request


def _checked_changes(changes: Mapping[str, object]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field, value in changes.items():
        if field not in UPDATABLE_FIELDS:
            allowed = ", ".join(sorted(UPDATABLE_FIELDS))
            raise ValueError(f"field {field!r} cannot be set by an instance update ({allowed})")
        if field == "vm_state":
            if not isinstance(value, str) or value not in _VM_STATES:
                raise ValueError(f"vm_state: {value!r} is not one of {', '.join(VmState)}")
            value = VmState(value).value
        elif field in _TEXT_FIELDS and value is not None and not isinstance(value, str):
            raise ValueError(f"{field} must be a str or None, got {type(value).__name__}")
        elif (
            field in _TIME_FIELDS
            and value is not None
            and not (isinstance(value, datetime) and value.utcoffset() is not None)
        ):
            raise ValueError(f"{field} must be a timezone-aware datetime or None, got {value!r}")
        values[field] = value
    return values


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}


def _uuid(value: str | UUID) -> str:
    try:
        return str(value if isinstance(value, UUID) else UUID(value))
    except (TypeError, ValueError):
        raise ValueError(f"not a UUID: {value!r}") from None


def _spread_order(c: Candidate) -> tuple[int, int, int, str]:
    return (-c.free.get("MEMORY_MB", 0), -c.free.get("VCPU", 0), -c.free.get("DISK_GB", 0), c.name)


def _inventory(row: InventoryRow) -> Inventory:
    return Inventory(
        total=row.total,
        reserved=row.reserved,
        allocation_ratio=row.allocation_ratio,
        min_unit=row.min_unit,
        max_unit=row.max_unit,
        step_size=row.step_size,
    )


def _service(row: ServiceRow) -> Service:
    return Service(row.host, row.binary, dict(row.versions), row.created_at, row.last_heartbeat)


def _instance(row: InstanceRow) -> Instance:
    return Instance(
        uuid=row.uuid,
        name=row.name,
        project_id=row.project_id,
        user_id=row.user_id,
        host=row.host,
        vcpus=row.vcpus,
        memory_mb=row.memory_mb,
        disk_gb=row.disk_gb,
        image=row.image,
        vm_state=VmState(row.vm_state),
        task_state=row.task_state,
        ip_address=row.ip_address,
        error_reason=row.error_reason,
        created_at=row.created_at,
        updated_at=row.updated_at,
        launched_at=row.launched_at,
        deleted_at=row.deleted_at,
        sequence=row.sequence,
        key_data=row.key_data,
        user_data=row.user_data,
    )


def _usage_record(row: InstanceRow, start: datetime, end: datetime) -> Usage:
    assert row.launched_at is not None
    return Usage(
        instance_uuid=row.uuid,
        name=row.name,
        project_id=row.project_id,
        user_id=row.user_id,
        host=row.host,
        vcpus=row.vcpus,
        memory_mb=row.memory_mb,
        disk_gb=row.disk_gb,
        image=row.image,
        vm_state=VmState(row.vm_state),
        launched_at=row.launched_at,
        deleted_at=row.deleted_at,
        period_start=max(row.launched_at, start),
        period_end=min(row.deleted_at, end) if row.deleted_at else end,
    )
