"""nodes.public_key: each node's Ed25519 key for signed P2P and gossip frames

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 23:59:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("public_key", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("public_key")
