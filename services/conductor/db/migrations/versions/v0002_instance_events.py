"""Instance events (the applied update history) and the lookup indexes.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instance_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("instance_uuid", sa.String(36), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_instance_events"),
        sa.ForeignKeyConstraint(
            ["instance_uuid"],
            ["instances.uuid"],
            name="fk_instance_events_instance_uuid_instances",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_instance_events_instance_uuid_sequence",
        "instance_events",
        ["instance_uuid", "sequence"],
    )
    op.create_index("ix_instances_project_id", "instances", ["project_id"])
    op.create_index("ix_instances_host", "instances", ["host"])
    op.create_index("ix_allocations_provider_id", "allocations", ["provider_id"])
