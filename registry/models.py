"""Database tables of the registry (SQLAlchemy 2 declarative)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "DomainSignature",
    "Event",
    "Group",
    "GroupLink",
    "LedgerEntry",
    "MemberMetric",
    "Membership",
    "ModelSnapshot",
    "Node",
    "PerformanceReport",
    "Simulation",
    "SimulationLog",
    "utcnow",
]

# SQLite has no BIGINT autoincrement; it maps BigInteger primary keys to INTEGER.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> dt.datetime:
    """Now, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores UTC; always returns timezone-aware UTC (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""

    type_annotation_map = {dt.datetime: UTCDateTime, dict[str, Any]: JSON}


class Group(Base):
    """A learning group: members of one domain training one model."""

    __tablename__ = "groups"
    __table_args__ = (
        # Names are unique among the live groups; archived ones free their name.
        Index(
            "uq_groups_live_name",
            "name",
            unique=True,
            sqlite_where=text("archived_at IS NULL"),
            postgresql_where=text("archived_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    domain: Mapped[str] = mapped_column(String(64), index=True)
    description: Mapped[str | None] = mapped_column(Text, default=None)
    max_capacity: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str | None] = mapped_column(String(128), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    archived_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    empty_since: Mapped[dt.datetime | None] = mapped_column(default=None)
    round: Mapped[int] = mapped_column(Integer, default=0)
    performance: Mapped[dict[str, Any]] = mapped_column(default=dict)
    model_round: Mapped[int | None] = mapped_column(Integer, default=None)
    # The member hosting the group's aggregation when nodes run as separate processes.
    host_node_id: Mapped[str | None] = mapped_column(String(128), default=None)
    host_address: Mapped[str | None] = mapped_column(String(256), default=None)
    host_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    host_claimed_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # The Flower strategy every host of the group aggregates with (fedavg, fedmedian, ...).
    aggregation: Mapped[str] = mapped_column(String(16), default="fedavg", server_default="fedavg")
    # How members train together: Flower ``rounds`` or peer-to-peer ``gossip``.
    mode: Mapped[str] = mapped_column(String(16), default="rounds", server_default="rounds")


class GroupLink(Base):
    """A sibling link, directed: group ``group_id`` scored ``sibling_id``'s model on its
    members' validation data (``fit``, accuracy in [0, 1]) next to its own (``own_fit``).
    Reads drop a link once either group is archived."""

    __tablename__ = "group_links"
    __table_args__ = (UniqueConstraint("group_id", "sibling_id", name="uq_group_link"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"), index=True)
    sibling_id: Mapped[int] = mapped_column(ForeignKey("groups.id"), index=True)
    fit: Mapped[float] = mapped_column(Float)
    own_fit: Mapped[float] = mapped_column(Float)
    loss: Mapped[float | None] = mapped_column(Float, default=None)
    examples: Mapped[int] = mapped_column(Integer)
    round: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Node(Base):
    """A registered participant."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    address: Mapped[str] = mapped_column(String(256))
    domain: Mapped[str] = mapped_column(String(64), index=True)
    capabilities: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="active")
    group_id: Mapped[int | None] = mapped_column(ForeignKey("groups.id"), index=True, default=None)
    registered_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_heartbeat: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    public_key: Mapped[str | None] = mapped_column(String(64), default=None)


class Membership(Base):
    """History of who was in which group, and how each stay ended."""

    __tablename__ = "memberships"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), index=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"), index=True)
    joined_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    left_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    left_reason: Mapped[str | None] = mapped_column(String(16), default=None)


class PerformanceReport(Base):
    """Append-only history of what members reported."""

    __tablename__ = "performance_reports"
    __table_args__ = (Index("ix_reports_group_round", "group_id", "round"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"))
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), index=True)
    metric: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    round: Mapped[int] = mapped_column(Integer)
    num_examples: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class RoundEvaluation(Base):
    """What a member measured on its own validation data in one group round: its loss on
    each of the round's models, by label (``new``, ``start``, ``all``, ``without:<node>``).
    The ledger checks a host's contribution figures against these."""

    __tablename__ = "round_evaluations"
    __table_args__ = (UniqueConstraint("group_id", "round", "node_id", name="uq_round_evaluation"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"))
    round: Mapped[int] = mapped_column(Integer)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    num_examples: Mapped[int] = mapped_column(Integer)
    losses: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class MemberMetric(Base):
    """Each current member's latest report per metric: the input of group performance."""

    __tablename__ = "member_metrics"

    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"), primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), primary_key=True)
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    round: Mapped[int] = mapped_column(Integer)
    num_examples: Mapped[int] = mapped_column(Integer)
    reported_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ModelSnapshot(Base):
    """Metadata of a stored model file (the bytes live under the data dir)."""

    __tablename__ = "model_snapshots"
    __table_args__ = (UniqueConstraint("group_id", "round", name="uq_snapshot_group_round"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(512))
    uploaded_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    pruned: Mapped[bool] = mapped_column(default=False)


class DomainSignature(Base):
    """A domain's model signature: every group of the domain trains this model.

    Set once, by the first group created with a declared signature or, when none was ever
    declared, by the domain's first snapshot that decodes and is finite (trust on first
    use); declarations and uploads that differ from it are refused.
    """

    __tablename__ = "domain_signatures"

    domain: Mapped[str] = mapped_column(String(64), primary_key=True)
    # registry.wire.ModelSignature.to_json(): {"tensors": [{"name", "shape", "dtype"}, ...]}
    signature: Mapped[dict[str, Any]] = mapped_column()
    # Upper bound in bytes of one snapshot of this model (ModelSignature.max_blob_bytes).
    max_bytes: Mapped[int] = mapped_column(BigInteger)
    # "declared" (POST /groups) or "first_upload" (trust on first use).
    source: Mapped[str] = mapped_column(String(16))
    declared_by: Mapped[str | None] = mapped_column(String(128), default=None)
    declared_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Event(Base):
    """Every state change, in order; the source of /events and the SSE stream."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(String(32), index=True)
    node_id: Mapped[str | None] = mapped_column(String(128), index=True, default=None)
    group_id: Mapped[int | None] = mapped_column(Integer, index=True, default=None)
    # The domain of its group (else node), kept with the event so streams filter by index.
    domain: Mapped[str | None] = mapped_column(String(64), index=True, default=None)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class LedgerEntry(Base):
    """Append-only reward ledger: one entry per node, group and round, so a retried
    report never pays twice. Balances are sums of entries."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint("node_id", "group_id", "round", name="uq_ledger_node_group_round"),
        Index("ix_ledger_group_round", "group_id", "round"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), index=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"))
    round: Mapped[int] = mapped_column(Integer)
    contribution: Mapped[float] = mapped_column(Float)
    # What the host claimed, before the registry checked it against the members' reports.
    claimed: Mapped[float | None] = mapped_column(Float, default=None)
    amount: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(32))
    submitted_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Simulation(Base):
    """A simulation the registry ran against itself: parameters, status, results."""

    __tablename__ = "simulations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)


class SimulationLog(Base):
    """One line a simulation printed, in order (the source of its live stream)."""

    __tablename__ = "simulation_logs"
    __table_args__ = (Index("ix_simulation_logs_sim_id", "simulation_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    simulation_id: Mapped[int] = mapped_column(ForeignKey("simulations.id"))
    line: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
