"""Retention: the sweeper prunes old events, performance reports and simulation log lines.

Each table keeps its rows newer than ``retention_days`` and, of those, its newest
``*_max_rows``. Rows are deleted oldest first, ``prune_batch_rows`` per transaction, so a
pass never holds the database's write lock for long (SQLite has one writer at a time).

What a rule or a reader still needs is never pruned:

- the ledger (``ledger_entries``, append-only, the source of balances and quarantines)
  and members' round evaluations are not touched at all;
- of performance reports, each member's latest report per group and metric, and every
  report of its group's last ``CLAWBACK_ROUNDS`` rounds (the rounds the ledger may
  still pay or take back) stay, whatever their age;
- log lines of a simulation that is queued or running stay until it ends.

Event ids are never reused: a stream resuming after a pruned id (``Last-Event-ID``)
simply gets the events that remain after it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, delete, exists, false, func, or_, select
from sqlalchemy.orm import Session, aliased

from registry.db import Database
from registry.ledger import CLAWBACK_ROUNDS
from registry.models import Event, Group, PerformanceReport, Simulation, SimulationLog, utcnow
from registry.settings import RegistrySettings
from registry.simulations import ACTIVE

__all__ = ["Pruned", "prune_once"]

log = logging.getLogger(__name__)

# A pass stops after this many batches; the next pass carries on. Keeps the sweeper (and
# node expiry, which shares its thread) from being held up by a huge backlog.
MAX_BATCHES_PER_PASS = 200

_Table = type[Event] | type[PerformanceReport] | type[SimulationLog]


@dataclass(frozen=True)
class Pruned:
    """Rows one pass deleted, per table."""

    events: int = 0
    performance_reports: int = 0
    simulation_logs: int = 0

    @property
    def total(self) -> int:
        """Rows deleted in all."""
        return self.events + self.performance_reports + self.simulation_logs


def _first_kept_id(
    session: Session, table: _Table, *, older_than: dt.datetime | None, max_rows: int
) -> int | None:
    """The lowest id that is within both limits, or None when no row is over either.

    Ids grow with ``created_at``, so the oldest rows are those with the lowest ids: the
    age limit becomes the id of the first row young enough, found by walking the primary
    key from the oldest row (no index on ``created_at`` needed).
    """
    bounds: list[int] = []
    if older_than is not None:
        first_young = session.scalar(
            select(table.id).where(table.created_at >= older_than).order_by(table.id).limit(1)
        )
        if first_young is None:  # every row is old
            newest = session.scalar(select(func.max(table.id)))
            if newest is not None:
                bounds.append(newest + 1)
        else:
            bounds.append(first_young)
    if max_rows > 0:
        oldest_kept = session.scalar(
            select(table.id).order_by(table.id.desc()).offset(max_rows - 1).limit(1)
        )
        if oldest_kept is not None:
            bounds.append(oldest_kept)
    return max(bounds) if bounds else None


def _protected_reports() -> ColumnElement[bool]:
    """Reports the pruning keeps: a member's latest per (group, metric), and any of the
    group's last CLAWBACK_ROUNDS rounds."""
    newer = aliased(PerformanceReport)
    latest = ~exists().where(
        newer.group_id == PerformanceReport.group_id,
        newer.node_id == PerformanceReport.node_id,
        newer.metric == PerformanceReport.metric,
        newer.id > PerformanceReport.id,
    )
    group_round = (
        select(Group.round).where(Group.id == PerformanceReport.group_id).scalar_subquery()
    )
    return or_(latest, PerformanceReport.round > group_round - CLAWBACK_ROUNDS)


def _protected_logs() -> ColumnElement[bool]:
    """Log lines of a simulation that has not ended."""
    return SimulationLog.simulation_id.in_(
        select(Simulation.id).where(Simulation.status.in_(ACTIVE))
    )


def _prune_table(
    db: Database,
    table: _Table,
    *,
    older_than: dt.datetime | None,
    max_rows: int,
    keep: ColumnElement[bool],
    batch: int,
) -> int:
    """Delete the rows of `table` below the limits and not `keep`, oldest first, one
    short write transaction per `batch` rows; returns how many were deleted."""
    with db.read() as session:
        bound = _first_kept_id(session, table, older_than=older_than, max_rows=max_rows)
    if bound is None:
        return 0
    deleted, cursor = 0, 0
    for _ in range(MAX_BATCHES_PER_PASS):
        with db.write() as session:
            ids = list(
                session.scalars(
                    select(table.id)
                    .where(table.id > cursor, table.id < bound, ~keep)
                    .order_by(table.id)
                    .limit(batch)
                )
            )
            if ids:
                # rowcount, not len(ids): another worker's sweeper may have deleted some.
                result = session.execute(
                    delete(table)
                    .where(table.id.in_(ids))
                    .execution_options(synchronize_session=False)
                )
                deleted += cast("CursorResult[Any]", result).rowcount
        if len(ids) < batch:
            break
        cursor = ids[-1]
    return deleted


def prune_once(
    db: Database, settings: RegistrySettings, *, now: dt.datetime | None = None
) -> Pruned:
    """One pruning pass over events, performance reports and simulation log lines, by
    the settings' ``retention_days`` and ``*_max_rows``; logs one line when it deleted
    anything. ``now`` (timezone-aware UTC) defaults to the current time. Database errors
    propagate (the sweeper logs them and tries again at its next pass)."""
    moment = now or utcnow()
    older_than = (
        moment - dt.timedelta(days=settings.retention_days) if settings.retention_days else None
    )
    batch = settings.prune_batch_rows
    pruned = Pruned(
        events=_prune_table(
            db,
            Event,
            older_than=older_than,
            max_rows=settings.events_max_rows,
            keep=false(),
            batch=batch,
        ),
        performance_reports=_prune_table(
            db,
            PerformanceReport,
            older_than=older_than,
            max_rows=settings.performance_max_rows,
            keep=_protected_reports(),
            batch=batch,
        ),
        simulation_logs=_prune_table(
            db,
            SimulationLog,
            older_than=older_than,
            max_rows=settings.simulation_logs_max_rows,
            keep=_protected_logs(),
            batch=batch,
        ),
    )
    if pruned.total:
        log.info(
            "retention: pruned %s events, %s performance reports, %s simulation log lines",
            pruned.events,
            pruned.performance_reports,
            pruned.simulation_logs,
        )
    return pruned
