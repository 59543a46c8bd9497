"""The conductor's database: models, engine, migrations and the ConductorDB API.

from services.conductor.db import ConductorDB, create_engine, migrations

engine = create_engine()            # SQLite in the state dir, or a URL
migrations.upgrade(engine)          # schema to head
db = ConductorDB(engine)
"""

from services.conductor.db.api import UPDATABLE_FIELDS, ConductorDB
from services.conductor.db.engine import create_engine, default_state_dir, default_url
from services.conductor.db.records import (
    DISK_GB,
    MEMORY_MB,
    VCPU,
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
    ClaimError,
    ConductorDBError,
    HostInUse,
    InstanceExists,
    InstanceNotFound,
    InventoryInUse,
    NoCapacity,
    NotFound,
    ProviderConflict,
    ProviderNotFound,
    ServiceNotFound,
    WrongHost,
)

__all__ = [
    "DISK_GB",
    "MEMORY_MB",
    "UPDATABLE_FIELDS",
    "VCPU",
    "Allocation",
    "Candidate",
    "ClaimConflict",
    "ClaimError",
    "ConductorDB",
    "ConductorDBError",
    "HostInUse",
    "Instance",
    "InstanceEvent",
    "InstanceExists",
    "InstanceNotFound",
    "Inventory",
    "InventoryInUse",
    "NoCapacity",
    "NotFound",
    "Provider",
    "ProviderConflict",
    "ProviderNotFound",
    "Service",
    "ServiceNotFound",
    "Usage",
    "VmState",
    "WrongHost",
    "create_engine",
    "default_state_dir",
    "default_url",
    "resources",
]
