"""The reward ledger: pay a round's contributions once per node, list entries, sum balances.

Trust model (docs/ledger.md): a node never reports its own reward, and no node's word
alone sets one.

- Every member reports, for each round, its own losses on the round's models
  (``new``, ``start``, ``all``, ``without:<node>``) measured on its own validation data
  (``round_evaluations``).
- The group's host measures every member's contribution and submits them in one call.
  The registry checks that the caller is a member (the host, when the group has one),
  that every node paid was in the group and that the group has reached that round.
- It credits each node the *smaller* of the host's figure and the figure the other
  members' own reports imply (leave-one-out on the others' data, so a member alone,
  or one nobody else measured, is credited 0). A host cannot pay itself, or anyone,
  more than the members' evidence supports.
- It caps the round's payout at ``scale`` times the round's improvement that the
  members reported (the lower median member's loss of the round's start model minus
  the new model's), and weighs each member's report by its example count clamped to twice
  the round's lower median.
- It computes the amounts itself: ``scale * max(0, credited)``, scaled down to the cap.
- A member credited below ``-flag_margin`` of the others' loss, and that far below the
  round's median member, in a round at least three members reported on, and most of
  the other members' own reports show the harm, is flagged: an event
  ``member_flagged`` and the entry's reason say its update harmed the others, and the
  entry's amount takes back what it earned in the group's ``CLAWBACK_ROUNDS`` rounds
  before (since its last flag). Flagged
  round after round, it is quarantined (``registry.quarantine``).

The unique key (node, group, round) makes a retried report return the entries already
written.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.crud import leave_group, lock_groups
from registry.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError
from registry.events import EventType, record_event
from registry.models import LedgerEntry, Membership, Node, RoundEvaluation, utcnow
from registry.quarantine import REASON_FLAGGED, Quarantine, quarantine_of
from registry.schemas import Balance, ContributionsIn

__all__ = [
    "REASON_FLAGGED",
    "REASON_NO_GAIN",
    "REASON_REWARD",
    "balance",
    "harm_witnesses",
    "list_balances",
    "list_entries",
    "pay_round",
    "quarantine_member",
    "reward_amount",
    "verified_contributions",
]

REASON_REWARD = "positive_contribution"
REASON_NO_GAIN = "no_improvement"
ALL_MODEL, NEW_MODEL, START_MODEL, WITHOUT = "all", "new", "start", "without:"
# A round of fewer members flags nobody: in a group of two, the other member's own
# update always fits its own data better than the mean does (node.federation.contribution).
MIN_TO_FLAG = 3
# Each member's reported example count weighs at most this many times the round's lower
# median (the same clamp a host applies to training replies, node.federation.round).
COUNT_CAP_FACTOR = 2.0
# A flagged member gives back what it earned in this many rounds before (``_clawback``).
CLAWBACK_ROUNDS = 3


def _weighted(pairs: Sequence[tuple[int, float]]) -> float | None:
    total = sum(n for n, _ in pairs)
    return sum(n * v for n, v in pairs) / total if total > 0 else None


def _with_all(evaluation: RoundEvaluation) -> float | None:
    """A report's loss of the FedAvg model of every update: ``all`` when the host sent it
    (a strategy other than FedAvg), else ``new`` (FedAvg's new model is that model).
    Decided per report, so one member's extra label cannot set aside the others'."""
    value = evaluation.losses.get(ALL_MODEL, evaluation.losses.get(NEW_MODEL))
    return None if value is None else float(value)


def verified_contributions(
    evaluations: Sequence[RoundEvaluation], node_ids: Sequence[str]
) -> tuple[dict[str, float], dict[str, float | None], float | None]:
    """From members' own reports: each node's leave-one-out contribution measured on the
    *other* members' data (example-weighted), the others' loss with everyone (for
    flagging), and the round's improvement: the (lower) median member's start-model loss
    minus its new-model loss, so no more than half the members can inflate the round's
    payout cap.

    A node no other member measured is credited 0 and has no reference loss. Members
    report their own example counts, so each weighs at most ``COUNT_CAP_FACTOR`` times
    the round's lower median count (as a host clamps training replies): one member
    cannot outweigh the rest by claiming more examples.
    """
    counts = sorted(e.num_examples for e in evaluations)
    cap = max(1, int(COUNT_CAP_FACTOR * counts[(len(counts) - 1) // 2])) if counts else 1
    weight = {e.node_id: min(e.num_examples, cap) for e in evaluations}
    contributions: dict[str, float] = {}
    references: dict[str, float | None] = {}
    for node_id in node_ids:
        label = f"{WITHOUT}{node_id}"
        others = [
            e
            for e in evaluations
            if e.node_id != node_id and label in e.losses and _with_all(e) is not None
        ]
        with_all = _weighted([(weight[e.node_id], _with_all(e) or 0.0) for e in others])
        without = _weighted([(weight[e.node_id], float(e.losses[label])) for e in others])
        references[node_id] = with_all
        contributions[node_id] = 0.0 if with_all is None or without is None else without - with_all
    both = [e for e in evaluations if START_MODEL in e.losses and NEW_MODEL in e.losses]
    gains = [float(e.losses[START_MODEL]) - float(e.losses[NEW_MODEL]) for e in both]
    improvement = statistics.median_low(gains) if gains else None
    return contributions, references, improvement


def harm_witnesses(
    evaluations: Sequence[RoundEvaluation], node_id: str, *, flag_margin: float
) -> tuple[int, int]:
    """``(harmed, witnesses)``: of the *other* members that measured ``node_id``'s
    leave-one-out model, how many saw their own loss worse with it than without it by
    more than ``flag_margin`` of that loss. A flag needs most witnesses, so one lying
    member cannot get an honest one flagged."""
    label = f"{WITHOUT}{node_id}"
    harmed = witnesses = 0
    for e in evaluations:
        with_all = _with_all(e)
        if e.node_id == node_id or label not in e.losses or with_all is None:
            continue
        witnesses += 1
        harmed += float(e.losses[label]) - with_all < -flag_margin * abs(with_all)
    return harmed, witnesses


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
    flag_margin: float = 0.05,
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
    evaluations = [
        e
        for e in session.scalars(
            select(RoundEvaluation).where(
                RoundEvaluation.group_id == group_id, RoundEvaluation.round == round_
            )
        )
    ]
    verified, references, improvement = verified_contributions(
        evaluations, [c.node_id for c in new]
    )
    credited = {c.node_id: min(c.contribution, verified[c.node_id]) for c in new}
    amounts = {n: reward_amount(v, scale) for n, v in credited.items()}
    cap = scale * max(0.0, improvement) if improvement is not None else 0.0
    paying = sum(amounts.values())
    if paying > cap:  # never more than the improvement the members reported
        amounts = {n: a * cap / paying for n, a in amounts.items()}
    now = utcnow()
    created = []
    typical = statistics.median(credited.values()) if credited else 0.0
    evaluators = len({e.node_id for e in evaluations})
    for c in new:
        amount = amounts[c.node_id]
        reference = references[c.node_id]
        margin = flag_margin * abs(reference) if reference is not None else 0.0
        harmed, witnesses = harm_witnesses(evaluations, c.node_id, flag_margin=flag_margin)
        harmful = (
            reference is not None
            and evaluators >= MIN_TO_FLAG
            and credited[c.node_id] < -margin
            and credited[c.node_id] < typical - margin
            and 2 * harmed > witnesses
        )
        if harmful:
            amount = -_clawback(session, node_id=c.node_id, group_id=group_id, round_=round_) or 0.0
        reason = REASON_FLAGGED if harmful else REASON_REWARD if amount > 0 else REASON_NO_GAIN
        entry = LedgerEntry(
            node_id=c.node_id,
            group_id=group_id,
            round=round_,
            contribution=credited[c.node_id],
            claimed=c.contribution,
            amount=amount,
            reason=reason,
            method=body.method,
            submitted_by=caller.id,
            created_at=now,
        )
        session.add(entry)
        created.append(entry)
        if harmful:
            record_event(
                session,
                EventType.MEMBER_FLAGGED,
                node_id=c.node_id,
                group_id=group_id,
                round=round_,
                contribution=credited[c.node_id],
                others_loss=reference,
            )
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
            claimed=entry.claimed,
            amount=entry.amount,
            reason=entry.reason,
            method=entry.method,
        )
    entries = sorted([*existing.values(), *created], key=lambda e: e.node_id)
    return entries, bool(created)


def quarantine_member(
    session: Session, *, node_id: str, group_id: int, flags: int, duration_s: float
) -> Quarantine | None:
    """Take ``node_id`` out of ``group_id`` when its quarantine is in force
    (``registry.quarantine``): a ``left`` event with reason ``quarantined`` and a
    ``member_quarantined`` event. Returns the quarantine, or None when none is in force or
    the node is no longer in that group. Call it in its own transaction: it locks the node
    and then the group, as a join does."""
    held = quarantine_of(session, node_id, flags=flags, duration_s=duration_s)
    node = session.get(Node, node_id)
    if held is None or node is None or node.group_id != group_id:
        return None
    leave_group(session, caller=node, reason="quarantined")
    record_event(
        session,
        EventType.MEMBER_QUARANTINED,
        node_id=node_id,
        group_id=group_id,
        flags=held.flags,
        until=held.until.isoformat(timespec="seconds"),
    )
    return held


def _clawback(session: Session, *, node_id: str, group_id: int, round_: int) -> float:
    """What a member flagged in ``round_`` gives back: its net pay from this group in the
    ``CLAWBACK_ROUNDS`` rounds before, since its last flag there (never below 0). A
    poisoner's update can look useful for a round or two before it is caught (a
    label-flipper's features help early on); what it earned then is taken back."""
    last_flag = session.scalar(
        select(func.max(LedgerEntry.round)).where(
            LedgerEntry.node_id == node_id,
            LedgerEntry.group_id == group_id,
            LedgerEntry.reason == REASON_FLAGGED,
            LedgerEntry.round < round_,
        )
    )
    since = max(round_ - CLAWBACK_ROUNDS, (last_flag or -1) + 1)
    earned = session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0.0)).where(
            LedgerEntry.node_id == node_id,
            LedgerEntry.group_id == group_id,
            LedgerEntry.round >= since,
            LedgerEntry.round < round_,
        )
    )
    return max(0.0, float(earned or 0.0))


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
