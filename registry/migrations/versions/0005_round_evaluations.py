"""round evaluations, group aggregation, claimed contributions

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 18:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "round_evaluations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False, autoincrement=True),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(length=128), nullable=False),
        sa.Column("num_examples", sa.Integer(), nullable=False),
        sa.Column("losses", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"]),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("group_id", "round", "node_id", name="uq_round_evaluation"),
    )
    with op.batch_alter_table("groups") as batch:
        batch.add_column(
            sa.Column(
                "aggregation", sa.String(length=16), nullable=False, server_default="fedavg"
            )
        )
    with op.batch_alter_table("ledger_entries") as batch:
        batch.add_column(sa.Column("claimed", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries") as batch:
        batch.drop_column("claimed")
    with op.batch_alter_table("groups") as batch:
        batch.drop_column("aggregation")
    op.drop_table("round_evaluations")
