"""groups.mode: `rounds` (Flower) or `gossip`, so gossip nodes find their domain's groups

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("groups") as batch:
        batch.add_column(
            sa.Column("mode", sa.String(length=16), nullable=False, server_default="rounds")
        )


def downgrade() -> None:
    with op.batch_alter_table("groups") as batch:
        batch.drop_column("mode")
