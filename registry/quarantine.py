"""Quarantine: a member flagged as harmful round after round is taken out of its group and
may join none for a while.

A flag (``registry.ledger``) says that the members' own evaluations show the model was
worse for the *other* members with this member's update than without it. One flag can be
noise; ``flags`` flagged rounds in a row (its newest ``flags`` ledger entries) are a
member that keeps breaking its group's model. Such a node is

- taken out of its group at once (``left`` with reason ``quarantined``, and a
  ``member_quarantined`` event), so the group heals without its honest members having to
  leave it, and
- refused (403, naming the end of the quarantine) when it asks to join or create a group,
  until ``duration_s`` seconds after its last flag. Meanwhile it can still learn alone.

Only time ends a quarantine: entries written after it began (a host paying rounds that
were under way, or a member getting a round paid on purpose) do not lift it, and
another ``flags`` flagged rounds in a row start a new one.
``flags = 0`` turns quarantine off.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.models import LedgerEntry, utcnow

__all__ = ["REASON_FLAGGED", "Quarantine", "quarantine_of"]

REASON_FLAGGED = "flagged_harmful"
# The newest entries of a node a quarantine is looked for in (a bound on the query).
WINDOW_ROWS = 1000


@dataclass(frozen=True)
class Quarantine:
    """A node's quarantine: its ``flags`` newest ledger entries are all flagged."""

    node_id: str
    flags: int
    until: dt.datetime

    def reason(self) -> str:
        """One line for a refusal or an event."""
        until = self.until.isoformat(timespec="seconds")
        return (
            f"node '{self.node_id}' is quarantined until {until}: its updates harmed "
            f"the other members in {self.flags} rounds in a row"
        )


def _aware(moment: dt.datetime) -> dt.datetime:
    # SQLite hands timestamps back without their zone; every one was written as UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def quarantine_of(
    session: Session,
    node_id: str,
    *,
    flags: int,
    duration_s: float,
    now: dt.datetime | None = None,
) -> Quarantine | None:
    """The node's quarantine in force at ``now``, or None.

    In force for ``duration_s`` seconds after the last of ``flags`` consecutive flagged
    ledger entries of the node (in the order they were written). Entries written later
    do not lift it: a member cannot clear its record by getting a round paid.
    ``flags <= 0`` is never.
    """
    if flags <= 0:
        return None
    moment = now or utcnow()
    window = session.execute(
        select(LedgerEntry.reason, LedgerEntry.created_at)
        .where(
            LedgerEntry.node_id == node_id,
            LedgerEntry.created_at >= moment - dt.timedelta(seconds=duration_s),
        )
        .order_by(LedgerEntry.id.desc())
        .limit(WINDOW_ROWS)
    ).all()
    run = 0
    for i in range(len(window) - 1, -1, -1):  # oldest first
        reason, created_at = window[i]
        run = run + 1 if reason == REASON_FLAGGED else 0
        if run >= flags:
            ends = _aware(created_at) + dt.timedelta(seconds=duration_s)
            if ends > moment:
                return Quarantine(node_id, flags, ends)
    return None
