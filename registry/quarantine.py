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

A quarantined node earns no ledger entries, so its record cannot clear itself by rounds:
time ends the quarantine, and another ``flags`` flagged rounds start a new one.
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

    In force when the node's ``flags`` newest ledger entries are all flagged harmful and
    the newest is less than ``duration_s`` seconds old. ``flags <= 0`` is never.
    """
    if flags <= 0:
        return None
    newest = session.execute(
        select(LedgerEntry.reason, LedgerEntry.created_at)
        .where(LedgerEntry.node_id == node_id)
        .order_by(LedgerEntry.id.desc())
        .limit(flags)
    ).all()
    if len(newest) < flags or any(reason != REASON_FLAGGED for reason, _ in newest):
        return None
    until = _aware(newest[0].created_at) + dt.timedelta(seconds=duration_s)
    if until <= (now or utcnow()):
        return None
    return Quarantine(node_id, flags, until)
