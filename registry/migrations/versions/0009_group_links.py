"""group_links: directed sibling links between groups with their fit scores

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 10:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "group_links",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("sibling_id", sa.Integer(), nullable=False),
        sa.Column("fit", sa.Float(), nullable=False),
        sa.Column("own_fit", sa.Float(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("examples", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"]),
        sa.ForeignKeyConstraint(["sibling_id"], ["groups.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("group_id", "sibling_id", name="uq_group_link"),
    )
    op.create_index("ix_group_links_group_id", "group_links", ["group_id"])
    op.create_index("ix_group_links_sibling_id", "group_links", ["sibling_id"])


def downgrade() -> None:
    op.drop_index("ix_group_links_sibling_id", table_name="group_links")
    op.drop_index("ix_group_links_group_id", table_name="group_links")
    op.drop_table("group_links")
