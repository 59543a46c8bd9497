"""What the conductor's database API returns: plain frozen records, no ORM state.

Records are detached snapshots, safe to keep after the transaction and to turn
into versioned objects for the wire.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta

VCPU = "VCPU"
MEMORY_MB = "MEMORY_MB"
DISK_GB = "DISK_GB"
STANDARD_RESOURCE_CLASSES = (VCPU, MEMORY_MB, DISK_GB)


class VmState(enum.StrEnum):
    """An instance's lifecycle state (stored as its value)."""

    BUILDING = "BUILDING"
    ACTIVE = "ACTIVE"
    STOPPED = "STOPPED"
    PAUSED = "PAUSED"
    SUSPENDED = "SUSPENDED"
    ERROR = "ERROR"
    DELETED = "DELETED"


def resources(vcpus: int, memory_mb: int, disk_gb: int) -> dict[str, int]:
    """A resource request by class, leaving out classes asked for zero of."""
    amounts = {VCPU: vcpus, MEMORY_MB: memory_mb, DISK_GB: disk_gb}
    return {rc: amount for rc, amount in amounts.items() if amount}


@dataclass(frozen=True, slots=True)
class Inventory:
    """How much of one resource class a provider has, and how it may be cut.

    ``capacity`` is ``int((total - reserved) * allocation_ratio)``; a single
    allocation must lie in ``[min_unit, max_unit]`` and be a multiple of
    ``step_size`` (``max_unit=None``: no limit but capacity).
    """

    total: int
    reserved: int = 0
    allocation_ratio: float = 1.0
    min_unit: int = 1
    max_unit: int | None = None
    step_size: int = 1

    def __post_init__(self) -> None:
        if self.total < 0 or self.reserved < 0:
            raise ValueError(f"total and reserved must be >= 0, got {self.total}/{self.reserved}")
        if self.allocation_ratio <= 0:
            raise ValueError(f"allocation_ratio must be > 0, got {self.allocation_ratio}")
        if self.min_unit < 1 or self.step_size < 1:
            raise ValueError("min_unit and step_size must be >= 1")
        if self.max_unit is not None and self.max_unit < self.min_unit:
            raise ValueError(f"max_unit {self.max_unit} is below min_unit {self.min_unit}")

    @property
    def capacity(self) -> int:
        return max(0, int((self.total - self.reserved) * self.allocation_ratio))

    def refusal(self, amount: int, used: int) -> str | None:
        """Why ``amount`` more cannot be allocated with ``used`` already taken (None: it can)."""
        if amount < self.min_unit:
            return f"{amount} is below min_unit {self.min_unit}"
        if self.max_unit is not None and amount > self.max_unit:
            return f"{amount} is above max_unit {self.max_unit}"
        if amount % self.step_size:
            return f"{amount} is not a multiple of step_size {self.step_size}"
        free = self.capacity - used
        if amount > free:
            return f"requested {amount}, {max(free, 0)} free of capacity {self.capacity}"
        return None


@dataclass(frozen=True, slots=True)
class Provider:
    """A resource provider (one compute host) with its inventories and usage."""

    uuid: str
    name: str
    generation: int
    inventories: dict[str, Inventory]
    used: dict[str, int]

    @property
    def free(self) -> dict[str, int]:
        return {rc: inv.capacity - self.used.get(rc, 0) for rc, inv in self.inventories.items()}


@dataclass(frozen=True, slots=True)
class Candidate:
    """A provider that fits a request, with what it has free before the claim."""

    name: str
    uuid: str
    generation: int
    free: dict[str, int]
    capacity: dict[str, int]


@dataclass(frozen=True, slots=True)
class Allocation:
    """What a claim holds for one instance on one provider."""

    instance_uuid: str
    provider: str
    provider_uuid: str
    generation: int
    resources: dict[str, int]


@dataclass(frozen=True, slots=True)
class Service:
    """A running service process as it registered itself."""

    host: str
    binary: str
    versions: dict[str, str]
    created_at: datetime
    last_heartbeat: datetime

    def is_up(self, now: datetime, max_age: timedelta) -> bool:
        return now - self.last_heartbeat <= max_age


@dataclass(frozen=True, slots=True)
class Instance:
    """An instance row; ``sequence`` is the last update sequence applied to it."""

    uuid: str
    name: str
    project_id: str
    user_id: str
    host: str | None
    vcpus: int
    memory_mb: int
    disk_gb: int
    image: str
    vm_state: VmState
    task_state: str | None
    ip_address: str | None
    error_reason: str | None
    created_at: datetime
    updated_at: datetime
    launched_at: datetime | None
    deleted_at: datetime | None
    sequence: int
    key_data: str | None = None
    user_data: str | None = None
    """Base64, as the user gave it to the metadata service."""

    @property
    def resources(self) -> dict[str, int]:
        return resources(self.vcpus, self.memory_mb, self.disk_gb)


@dataclass(frozen=True, slots=True)
class InstanceEvent:
    """One recorded change of an instance (``detail``: the changes, JSON-safe)."""

    instance_uuid: str
    name: str
    sequence: int
    created_at: datetime
    detail: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Usage:
    """An instance alive during an audit window, and the part of the window it was."""

    instance_uuid: str
    name: str
    project_id: str
    user_id: str
    host: str | None
    vcpus: int
    memory_mb: int
    disk_gb: int
    image: str
    vm_state: VmState
    launched_at: datetime
    deleted_at: datetime | None
    period_start: datetime
    period_end: datetime

    @property
    def seconds(self) -> float:
        return (self.period_end - self.period_start).total_seconds()
