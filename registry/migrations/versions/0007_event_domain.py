"""events.domain: each event's domain, indexed, so streams and pages filter by domain

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Old events take their group's domain, else their node's; events of neither stay NULL.
BACKFILL = """
UPDATE events SET domain = COALESCE(
    (SELECT groups.domain FROM groups WHERE groups.id = events.group_id),
    (SELECT nodes.domain FROM nodes WHERE nodes.id = events.node_id)
)
"""


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("domain", sa.String(length=64), nullable=True))
        batch.create_index(batch.f("ix_events_domain"), ["domain"], unique=False)
    op.execute(BACKFILL)


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_index(batch.f("ix_events_domain"))
        batch.drop_column("domain")
