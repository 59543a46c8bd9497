"""What a guest is given at boot: its SSH public key and its user data.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("key_data", sa.Text(), nullable=True))
        batch.add_column(sa.Column("user_data", sa.Text(), nullable=True))
