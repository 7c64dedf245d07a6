"""The reward ledger: pay a round's contributions once per node, list entries, sum balances.

Trust model: a node never reports its own reward. The member that aggregated the
round (the group's host) measures every member's contribution and submits them all
in one call; the registry checks that the caller is a member (the host, when the group
has one), that every node paid was in the group and that the group has reached that
round, and computes the amounts itself: ``scale * max(0, contribution)``. The unique
key (node, group, round) makes a retried report return the entries already written.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.crud import lock_groups
from registry.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError
from registry.events import EventType, record_event
from registry.models import LedgerEntry, Membership, Node, utcnow
from registry.schemas import Balance, ContributionsIn

__all__ = [
    "REASON_NO_GAIN",
    "REASON_REWARD",
    "balance",
    "list_balances",
    "list_entries",
    "pay_round",
    "reward_amount",
]

REASON_REWARD = "positive_contribution"
REASON_NO_GAIN = "no_improvement"


def reward_amount(contribution: float, scale: float) -> float:
    """Tokens for a contribution: proportional to it when positive, else nothing."""
    return scale * max(0.0, contribution)


def pay_round(
    session: Session,
    *,
    caller: Node,
    group_id: int,
    round_: int,
    body: ContributionsIn,
    scale: float,
) -> tuple[list[LedgerEntry], bool]:
    """Write the round's entries that do not exist yet; returns (entries, any created)."""
    # Locking the group row serialises two reports of the same group (PostgreSQL).
    group = lock_groups(session, [group_id]).get(group_id)
    if group is None:
        raise NotFoundError(f"no group {group_id}")
    if caller.group_id != group_id:
        raise ForbiddenError(f"only members of group {group_id} may report its contributions")
    host = session.get(Node, group.host_node_id) if group.host_node_id else None
    if host is not None and host.id != caller.id and host.group_id == group_id:
        raise ForbiddenError(f"only the host of group {group_id} ('{host.id}') may report them")
    if round_ > group.round:
        raise ConflictError(f"group {group_id} is at round {group.round}, not {round_}")
    ids = [c.node_id for c in body.contributions]
    existing = {
        e.node_id: e
        for e in session.scalars(
            select(LedgerEntry).where(
                LedgerEntry.group_id == group_id,
                LedgerEntry.round == round_,
                LedgerEntry.node_id.in_(ids),
            )
        )
    }
    new = [c for c in body.contributions if c.node_id not in existing]
    if new:
        were_members = set(
            session.scalars(
                select(Membership.node_id)
                .where(
                    Membership.group_id == group_id,
                    Membership.node_id.in_([c.node_id for c in new]),
                )
                .distinct()
            )
        )
        strangers = sorted({c.node_id for c in new} - were_members)
        if strangers:
            raise InvalidError(
                f"never members of group {group_id}, cannot be paid: {', '.join(strangers)}"
            )
    now = utcnow()
    created = []
    for c in new:
        amount = reward_amount(c.contribution, scale)
        entry = LedgerEntry(
            node_id=c.node_id,
            group_id=group_id,
            round=round_,
            contribution=c.contribution,
            amount=amount,
            reason=REASON_REWARD if amount > 0 else REASON_NO_GAIN,
            method=body.method,
            submitted_by=caller.id,
            created_at=now,
        )
        session.add(entry)
        created.append(entry)
    session.flush()
    for entry in created:
        record_event(
            session,
            EventType.REWARD,
            node_id=entry.node_id,
            group_id=group_id,
            entry_id=entry.id,
            round=round_,
            contribution=entry.contribution,
            amount=entry.amount,
            reason=entry.reason,
            method=entry.method,
        )
    entries = sorted([*existing.values(), *created], key=lambda e: e.node_id)
    return entries, bool(created)


def list_entries(
    session: Session,
    *,
    node_id: str | None,
    group_id: int | None,
    round_: int | None,
    offset: int,
    limit: int,
) -> tuple[Sequence[LedgerEntry], int, float]:
    """A page of entries, newest first, with the filter's total count and amount."""
    conds = []
    if node_id is not None:
        conds.append(LedgerEntry.node_id == node_id)
    if group_id is not None:
        conds.append(LedgerEntry.group_id == group_id)
    if round_ is not None:
        conds.append(LedgerEntry.round == round_)
    count, total = session.execute(
        select(func.count(), func.coalesce(func.sum(LedgerEntry.amount), 0.0)).where(*conds)
    ).one()
    rows = session.scalars(
        select(LedgerEntry)
        .where(*conds)
        .order_by(LedgerEntry.id.desc())
        .offset(offset)
        .limit(limit)
    ).all()
    return rows, int(count), float(total)


def balance(session: Session, *, node_id: str) -> Balance:
    """A node's balance, summed from its entries; NotFoundError for an unknown node."""
    if session.get(Node, node_id) is None:
        raise NotFoundError(f"no node '{node_id}'")
    total, count, last = session.execute(
        select(
            func.coalesce(func.sum(LedgerEntry.amount), 0.0),
            func.count(LedgerEntry.id),
            func.max(LedgerEntry.created_at),  # typed like the column: UTC-aware
        ).where(LedgerEntry.node_id == node_id)
    ).one()
    return Balance(node_id=node_id, balance=float(total), entries=int(count), last_entry_at=last)


def list_balances(session: Session, *, offset: int, limit: int) -> tuple[list[Balance], int]:
    """Balances of every node with entries, highest first."""
    total_nodes = session.scalar(select(func.count(func.distinct(LedgerEntry.node_id)))) or 0
    amount = func.coalesce(func.sum(LedgerEntry.amount), 0.0).label("amount")
    rows = session.execute(
        select(
            LedgerEntry.node_id,
            amount,
            func.count(LedgerEntry.id),
            func.max(LedgerEntry.created_at),
        )
        .group_by(LedgerEntry.node_id)
        .order_by(amount.desc(), LedgerEntry.node_id)
        .offset(offset)
        .limit(limit)
    ).all()
    return [
        Balance(node_id=n, balance=float(a), entries=int(c), last_entry_at=last)
        for n, a, c, last in rows
    ], int(total_nodes)
