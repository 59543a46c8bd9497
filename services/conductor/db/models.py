"""The conductor's tables (SQLAlchemy 2 typed declarative).

The migrations in ``migrations/versions`` build exactly this schema (a test
compares them); change both together, with a new revision.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out: timestamptz on PostgreSQL, naive UTC elsewhere."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class ServiceRow(Base):
    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("host", "binary"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    binary: Mapped[str] = mapped_column(String(64))
    versions: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    last_heartbeat: Mapped[datetime]


class ProviderRow(Base):
    __tablename__ = "resource_providers"

    id: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    generation: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class InventoryRow(Base):
    __tablename__ = "inventories"
    __table_args__ = (UniqueConstraint("provider_id", "resource_class"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    provider_id: Mapped[int] = mapped_column(
        ForeignKey("resource_providers.id", ondelete="CASCADE")
    )
    resource_class: Mapped[str] = mapped_column(String(64))
    total: Mapped[int]
    reserved: Mapped[int]
    allocation_ratio: Mapped[float] = mapped_column(Float)
    min_unit: Mapped[int]
    max_unit: Mapped[int | None]
    step_size: Mapped[int]


class InstanceRow(Base):
    __tablename__ = "instances"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    user_id: Mapped[str] = mapped_column(String(255))
    host: Mapped[str | None] = mapped_column(String(255), index=True)
    vcpus: Mapped[int]
    memory_mb: Mapped[int]
    disk_gb: Mapped[int]
    image: Mapped[str] = mapped_column(String(255))
    vm_state: Mapped[str] = mapped_column(String(16))
    task_state: Mapped[str | None] = mapped_column(String(64))
    ip_address: Mapped[str | None] = mapped_column(String(64))
    error_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    launched_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]
    sequence: Mapped[int] = mapped_column(BigInteger)
    key_data: Mapped[str | None] = mapped_column(Text)
    user_data: Mapped[str | None] = mapped_column(Text)


class AllocationRow(Base):
    __tablename__ = "allocations"
    __table_args__ = (UniqueConstraint("consumer_uuid", "provider_id", "resource_class"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    consumer_uuid: Mapped[str] = mapped_column(ForeignKey("instances.uuid"))
    provider_id: Mapped[int] = mapped_column(ForeignKey("resource_providers.id"), index=True)
    resource_class: Mapped[str] = mapped_column(String(64))
    used: Mapped[int]


class InstanceEventRow(Base):
    __tablename__ = "instance_events"
    __table_args__ = (
        Index("ix_instance_events_instance_uuid_sequence", "instance_uuid", "sequence"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    instance_uuid: Mapped[str] = mapped_column(ForeignKey("instances.uuid", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]]
    sequence: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]


class DatabaseIdentityRow(Base):
    """One row: this database's identity, so conductors can tell whether they share a database."""

    __tablename__ = "database_identity"

    id: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    created_at: Mapped[datetime]
