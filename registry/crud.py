"""Registry operations: keyword-only functions on a session, raising RegistryError.

Every rule that many nodes race for (capacity, one group per node) is enforced inside
the database transaction: group rows are locked in id order before counting members
(PostgreSQL), and SQLite write transactions begin IMMEDIATE, which serialises writers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from registry.errors import (
    AuthError,
    ConflictError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    RegistryError,
)
from registry.events import EventType, record_event, record_events
from registry.models import (
    Event,
    Group,
    LedgerEntry,
    MemberMetric,
    Membership,
    ModelSnapshot,
    Node,
    PerformanceReport,
    RoundEvaluation,
    utcnow,
)
from registry.quarantine import REASON_FLAGGED, quarantine_of
from registry.schemas import (
    DEFAULT_METRIC,
    EvaluationReportIn,
    GroupCreate,
    GroupHost,
    GroupPublic,
    MembershipPublic,
    NodePublic,
    NodeRegister,
    PerformanceReportIn,
)

__all__ = [
    "JoinIn",
    "archive_empty_groups",
    "authenticate",
    "create_group",
    "expire_nodes",
    "get_group",
    "group_public",
    "heartbeat",
    "join_group",
    "join_groups",
    "latest_snapshot",
    "leave_group",
    "list_events",
    "list_groups",
    "list_nodes",
    "lock_groups",
    "record_snapshot",
    "register_node",
    "report_evaluation",
    "report_performance",
    "rotate_token",
    "round_evaluations",
]


def hash_token(token: str) -> str:
    """The stored form of a bearer token."""
    return hashlib.sha256(token.encode()).hexdigest()


# --- nodes -------------------------------------------------------------------------


MISSING_TOKEN = "missing bearer token (Authorization: Bearer <token>)"
INVALID_TOKEN = "invalid token"


def authenticate(session: Session, *, token: str | None) -> Node:
    """The node owning `token`; AuthError when missing or unknown."""
    if not token:
        raise AuthError(MISSING_TOKEN)
    node = session.scalar(select(Node).where(Node.token_hash == hash_token(token)))
    if node is None:
        raise AuthError(INVALID_TOKEN)
    return node


# A client-chosen secret: as strong as the registry's own (secrets.token_urlsafe(32)
# gives 43 such characters).
MIN_SECRET_CHARS = 32
_SECRET = re.compile(rf"[A-Za-z0-9_-]{{{MIN_SECRET_CHARS},512}}")


def _check_new_secret(session: Session, secret: str) -> str:
    """The stored hash of a client-chosen secret; InvalidError when it is weak,
    ConflictError when another node holds it already."""
    if not _SECRET.fullmatch(secret):
        raise InvalidError(
            f"a client-chosen token must be {MIN_SECRET_CHARS} to 512 URL-safe characters "
            f"(A-Z a-z 0-9 - _), e.g. Python's secrets.token_urlsafe(32); got {len(secret)} "
            "characters"
        )
    digest = hash_token(secret)
    if session.scalar(select(Node.id).where(Node.token_hash == digest)) is not None:
        raise ConflictError("that token belongs to another node: generate a new one")
    return digest


def register_node(
    session: Session, *, body: NodeRegister, token: str | None
) -> tuple[Node, str | None, bool]:
    """Register a new node or update one (needs its token); returns the node, the token the
    registry generated (None when the client chose it, or on an update) and whether the
    node is new.

    A new node's `token`, when given, is its client-chosen secret: InvalidError when weaker
    than MIN_SECRET_CHARS URL-safe characters, ConflictError when another node holds it.
    The same node and token again is an update, so a retried register is harmless.
    AuthError (no token) or ForbiddenError (another token) for a registered node.
    """
    node = session.get(Node, body.node_id, with_for_update=True)
    now = utcnow()
    if node is None:
        new_token = None if token else secrets.token_urlsafe(32)
        digest = _check_new_secret(session, token) if token else hash_token(cast(str, new_token))
        node = Node(
            id=body.node_id,
            token_hash=digest,
            address=body.address,
            domain=body.domain,
            capabilities=dict(body.capabilities),
            public_key=body.public_key,
            status="active",
            registered_at=now,
            updated_at=now,
            last_heartbeat=now,
        )
        session.add(node)
        record_event(
            session, EventType.REGISTERED, node_id=node.id, domain=node.domain, address=node.address
        )
        session.flush()
        return node, new_token, True
    if not token:
        raise AuthError(f"node '{body.node_id}' is registered; re-registering needs its token")
    if not secrets.compare_digest(node.token_hash, hash_token(token)):
        raise ForbiddenError(
            f"that token does not belong to node '{body.node_id}' (credential lost? an admin "
            f"can set a new one: POST /nodes/{body.node_id}/token)"
        )
    if body.domain != node.domain and node.group_id is not None:
        raise ConflictError("leave your group before changing domain")
    was_inactive = node.status != "active"
    node.address = body.address
    node.domain = body.domain
    node.capabilities = dict(body.capabilities)
    if body.public_key is not None:
        node.public_key = body.public_key
    node.status = "active"
    node.updated_at = now
    node.last_heartbeat = now
    record_event(session, EventType.UPDATED, node_id=node.id, address=node.address)
    if was_inactive:
        record_event(session, EventType.REACTIVATED, node_id=node.id)
    return node, None, False


def rotate_token(session: Session, *, node_id: str, token: str | None) -> str | None:
    """Replace a node's credential (the admin's recovery for a lost one): with `token`, a
    client-chosen secret (checked as at registration), else a generated token, returned
    once. The old token stops working at commit; a `token_rotated` event records it.
    NotFoundError for an unknown node, InvalidError/ConflictError as for register_node."""
    node = session.get(Node, node_id, with_for_update=True)
    if node is None:
        raise NotFoundError(f"no node '{node_id}'")
    generated = None if token else secrets.token_urlsafe(32)
    node.token_hash = (
        _check_new_secret(session, token) if token else hash_token(cast(str, generated))
    )
    node.updated_at = utcnow()
    record_event(
        session,
        EventType.TOKEN_ROTATED,
        node_id=node.id,
        chosen_by="client" if token else "registry",
    )
    return generated


class HeartbeatIn(NamedTuple):
    """One heartbeat: the bearer token sent, the node id in the path, the metrics."""

    token: str | None
    node_id: str
    metrics: dict[str, float]


def heartbeat(
    session: Session, *, beats: Sequence[HeartbeatIn]
) -> list[NodePublic | RegistryError]:
    """Record a batch of heartbeats: liveness plus each node's own latest metrics.

    One outcome per beat, in order: the node as stored, or the error for that beat
    (AuthError for a missing or unknown token, ForbiddenError for another node's id).
    A beat from an inactive node reactivates it. Core statements, one SELECT and one
    executemany UPDATE per batch: this runs for every heartbeat of the network.
    """
    nodes = cast(Table, Node.__table__)
    digests = [hash_token(b.token) if b.token else None for b in beats]
    rows = session.execute(
        select(nodes)
        .where(nodes.c.token_hash.in_({d for d in digests if d}))
        .order_by(nodes.c.id)  # rows are locked in id order (PostgreSQL): no deadlocks
        .with_for_update()
    ).mappings()
    by_digest = {row["token_hash"]: dict(row) for row in rows}
    now = utcnow()
    changed: dict[str, dict[str, Any]] = {}
    outcomes: list[NodePublic | RegistryError] = []
    for beat, digest in zip(beats, digests, strict=True):
        node = by_digest.get(digest) if digest else None
        if node is None:
            outcomes.append(AuthError(INVALID_TOKEN if beat.token else MISSING_TOKEN))
            continue
        if node["id"] != beat.node_id:
            outcomes.append(ForbiddenError("a node may only send its own heartbeat"))
            continue
        node["last_heartbeat"] = now
        if beat.metrics:
            node["metrics"] = {**node["metrics"], **beat.metrics}
        if node["status"] != "active":
            node["status"] = "active"
            record_event(session, EventType.REACTIVATED, node_id=node["id"])
        changed[node["id"]] = node
        outcomes.append(NodePublic.model_validate(node))
    if changed:
        _store_beats(session, nodes, list(changed.values()), now)
    return outcomes


def _store_beats(
    session: Session, nodes: Table, beats: Sequence[dict[str, Any]], now: dt.datetime
) -> None:
    """One executemany UPDATE of the beats, in the driver's own SQL: every heartbeat of the
    network passes here, and SQLAlchemy's per-row parameter handling cost more than the
    statement. Values go through the columns' own bind processors, so they are stored
    exactly as SQLAlchemy would store them."""
    conn = session.connection()
    dialect = conn.dialect
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    to_time = nodes.c.last_heartbeat.type.dialect_impl(dialect).bind_processor(dialect)
    to_json = nodes.c.metrics.type.dialect_impl(dialect).bind_processor(dialect)
    stamp = to_time(now) if to_time else now
    conn.exec_driver_sql(
        f"UPDATE nodes SET last_heartbeat = {mark}, metrics = {mark}, status = {mark} "
        f"WHERE id = {mark}",
        [
            (stamp, to_json(n["metrics"]) if to_json else n["metrics"], n["status"], n["id"])
            for n in beats
        ],
    )


def list_nodes(
    session: Session,
    *,
    domain: str | None,
    status: str | None,
    group_id: int | None,
    offset: int,
    limit: int,
) -> tuple[Sequence[Node], int]:
    """A page of nodes with the total count."""
    q = select(Node)
    if domain is not None:
        q = q.where(Node.domain == domain)
    if status is not None:
        q = q.where(Node.status == status)
    if group_id is not None:
        q = q.where(Node.group_id == group_id)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = session.scalars(q.order_by(Node.id).offset(offset).limit(limit)).all()
    return rows, total


def get_node(session: Session, *, node_id: str) -> Node:
    """One node; NotFoundError when unknown."""
    node = session.get(Node, node_id)
    if node is None:
        raise NotFoundError(f"no node '{node_id}'")
    return node


# --- groups ------------------------------------------------------------------------


def _member_count(session: Session, group_id: int) -> int:
    return session.scalar(select(func.count()).where(Node.group_id == group_id)) or 0


def lock_groups(session: Session, ids: Sequence[int]) -> dict[int, Group]:
    """Lock group rows in id order, so two crossing migrations never deadlock."""
    rows = session.scalars(
        select(Group)
        .where(Group.id.in_(sorted(set(ids))))
        .order_by(Group.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    return {g.id: g for g in rows}


def _lock_node(session: Session, node_id: str) -> Node:
    node = session.get(Node, node_id, with_for_update=True, populate_existing=True)
    if node is None:
        raise AuthError(f"node '{node_id}' is not registered")
    return node


def group_public(group: Group, member_count: int) -> GroupPublic:
    """The API view of a group."""
    perf = {k: float(v) for k, v in (group.performance or {}).items()}
    return GroupPublic(
        id=group.id,
        name=group.name,
        domain=group.domain,
        description=group.description,
        max_capacity=group.max_capacity,
        member_count=member_count,
        performance=perf,
        accuracy=perf.get(DEFAULT_METRIC),
        round=group.round,
        model_round=group.model_round,
        created_by=group.created_by,
        created_at=group.created_at,
        updated_at=group.updated_at,
        archived=group.archived_at is not None,
        host_node_id=group.host_node_id,
        host_address=group.host_address,
        host_epoch=group.host_epoch or 0,
        aggregation=group.aggregation or "fedavg",
        mode=group.mode or "rounds",
    )


def check_not_quarantined(session: Session, node_id: str, *, flags: int, duration_s: float) -> None:
    """ForbiddenError naming the end of ``node_id``'s quarantine while one is in force
    (``registry.quarantine``): a quarantined node may not create, merge or split groups."""
    held = quarantine_of(session, node_id, flags=flags, duration_s=duration_s)
    if held is not None:
        raise ForbiddenError(held.reason())


def add_group(
    session: Session,
    *,
    name: str,
    domain: str,
    description: str | None,
    max_capacity: int,
    created_by: str,
    round_: int,
    aggregation: str,
    mode: str,
    **event: Any,
) -> Group:
    """Add a new, empty group and its ``group_created`` event (with ``event`` besides);
    ConflictError when a live group already has ``name``."""
    taken = session.scalar(select(Group.id).where(Group.name == name, Group.archived_at.is_(None)))
    if taken is not None:
        raise ConflictError(f"a group named '{name}' already exists (id {taken})")
    now = utcnow()
    group = Group(
        name=name,
        domain=domain,
        description=description,
        max_capacity=max_capacity,
        created_by=created_by,
        created_at=now,
        updated_at=now,
        empty_since=now,
        round=round_,
        performance={},
        aggregation=aggregation,
        mode=mode,
    )
    session.add(group)
    session.flush()
    record_event(
        session,
        EventType.GROUP_CREATED,
        node_id=created_by,
        group_id=group.id,
        name=group.name,
        domain=group.domain,
        max_capacity=group.max_capacity,
        aggregation=group.aggregation,
        mode=group.mode,
        **event,
    )
    return group


def create_group(
    session: Session,
    *,
    caller: Node,
    body: GroupCreate,
    quarantine_flags: int = 0,
    quarantine_s: float = 0.0,
) -> Group:
    """Create a group in the caller's domain; the creator joins when asked (ForbiddenError
    while the caller is quarantined: ``join_group``)."""
    check_not_quarantined(session, caller.id, flags=quarantine_flags, duration_s=quarantine_s)
    if body.domain != caller.domain:
        raise ForbiddenError(
            f"node '{caller.id}' is in domain '{caller.domain}' and cannot create a group "
            f"in domain '{body.domain}'"
        )
    group = add_group(
        session,
        name=body.name,
        domain=body.domain,
        description=body.description,
        max_capacity=body.max_capacity,
        created_by=caller.id,
        round_=0,
        aggregation=body.aggregation,
        mode=body.mode,
    )
    if body.join:
        join_group(
            session,
            caller=caller,
            group_id=group.id,
            quarantine_flags=quarantine_flags,
            quarantine_s=quarantine_s,
        )
    return group


def report_evaluation(
    session: Session,
    *,
    caller: Node,
    group_id: int,
    round_: int,
    body: EvaluationReportIn,
    max_round_jump: int | None = None,
) -> tuple[RoundEvaluation, bool]:
    """Store a member's losses on a round's models, once; returns (stored, created).
    A round more than ``max_round_jump`` past the group's is a conflict (no evidence
    filed ahead of a round).

    Only a current member may report. A retry with the same figures returns the stored
    report; different figures for a round already reported are a conflict (a member
    cannot revise its evidence once the ledger may have read it).
    """
    group = session.get(Group, group_id)
    if group is None:
        raise NotFoundError(f"no group {group_id}")
    node = _lock_node(session, caller.id)
    if node.group_id != group_id:
        raise ForbiddenError(f"only members of group {group_id} may report its evaluations")
    check_round(group, round_, max_jump=max_round_jump, what="an evaluation")
    stored = session.scalar(
        select(RoundEvaluation).where(
            RoundEvaluation.group_id == group_id,
            RoundEvaluation.round == round_,
            RoundEvaluation.node_id == node.id,
        )
    )
    if stored is not None:
        if stored.losses != body.losses or stored.num_examples != body.num_examples:
            raise ConflictError(
                f"node '{node.id}' already reported its evaluation of round {round_}"
            )
        return stored, False
    stored = RoundEvaluation(
        group_id=group_id,
        round=round_,
        node_id=node.id,
        num_examples=body.num_examples,
        losses=dict(body.losses),
        created_at=utcnow(),
    )
    session.add(stored)
    session.flush()
    return stored, True


def round_evaluations(session: Session, *, group_id: int, round_: int) -> list[RoundEvaluation]:
    """Every member's evaluation of a round, in node order."""
    return list(
        session.scalars(
            select(RoundEvaluation)
            .where(RoundEvaluation.group_id == group_id, RoundEvaluation.round == round_)
            .order_by(RoundEvaluation.node_id)
        )
    )


def _performance(session: Session, group_id: int) -> dict[str, float]:
    """Group performance: example-weighted mean of current members' latest reports."""
    rows = session.execute(
        select(MemberMetric.metric, MemberMetric.value, MemberMetric.num_examples)
        .join(Node, Node.id == MemberMetric.node_id)
        .where(MemberMetric.group_id == group_id, Node.group_id == group_id)
    ).all()
    sums: dict[str, list[float]] = {}
    for metric, value, n in rows:
        acc = sums.setdefault(metric, [0.0, 0.0])
        acc[0] += value * n
        acc[1] += n
    return {m: s / w for m, (s, w) in sums.items() if w > 0}


def _recompute_performance(session: Session, group: Group) -> None:
    group.performance = _performance(session, group.id)


def _remove_member(session: Session, *, node: Node, group: Group, reason: str) -> None:
    """Take `node` out of `group` (locked by the caller) and close its membership."""
    now = utcnow()
    session.flush()
    _close_memberships(session, [(node.id, group.id)], now, reason=reason)
    node.group_id = None
    if group.host_node_id == node.id:  # its host left: the hosting is free to claim
        group.host_node_id = None
        group.host_address = None
        record_event(
            session, EventType.HOST_RELEASED, node_id=node.id, group_id=group.id, reason=reason
        )
    session.flush()
    _recompute_performance(session, group)
    group.updated_at = now
    if _member_count(session, group.id) == 0:
        group.empty_since = now


def join_group(
    session: Session,
    *,
    caller: Node,
    group_id: int,
    quarantine_flags: int = 0,
    quarantine_s: float = 0.0,
) -> MembershipPublic:
    """Put the caller in `group_id`, moving it out of its old group in the same transaction
    (``join_groups`` for one node already authenticated; raises its errors).

    ORM objects of the session are expired afterwards: the join wrote past them.
    """
    session.flush()
    nodes = cast(Table, Node.__table__)
    row = session.execute(
        select(nodes.c.id, nodes.c.domain, nodes.c.group_id)
        .where(nodes.c.id == caller.id)
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise AuthError(f"node '{caller.id}' is not registered")
    [outcome] = _apply_joins(
        session,
        [_Ask(row.id, row.domain, group_id)],
        {row.id: row.group_id},
        quarantine_flags=quarantine_flags,
        quarantine_s=quarantine_s,
    )
    session.expire_all()
    if isinstance(outcome, RegistryError):
        raise outcome
    return outcome


class JoinIn(NamedTuple):
    """One join request: the bearer token sent, the node id the body names (if any), the
    group asked for."""

    token: str | None
    node_id: str | None
    group_id: int


def join_groups(
    session: Session,
    *,
    joins: Sequence[JoinIn],
    quarantine_flags: int = 0,
    quarantine_s: float = 0.0,
) -> list[MembershipPublic | RegistryError]:
    """Apply a batch of joins (migrations when the node is in another group) in one
    transaction, in order, with a handful of statements whatever the batch size.

    One outcome per join: the membership, or the error for that join alone (AuthError for a
    missing or unknown token, ForbiddenError for another node's id, while quarantined or
    for a group of another domain, NotFoundError for an unknown group, ConflictError when
    the group is archived or full). Node rows, then group rows, are locked in id order,
    and members are counted after the group locks: capacity holds under races between
    workers (PostgreSQL), and crossing migrations cannot deadlock.
    """
    nodes = cast(Table, Node.__table__)
    digests = [hash_token(j.token) if j.token else None for j in joins]
    rows = session.execute(
        select(nodes.c.id, nodes.c.token_hash, nodes.c.domain, nodes.c.group_id)
        .where(nodes.c.token_hash.in_({d for d in digests if d}))
        .order_by(nodes.c.id)
        .with_for_update()
    ).all()
    by_digest = {row.token_hash: row for row in rows}
    asks: list[_Ask | RegistryError] = []
    for join, digest in zip(joins, digests, strict=True):
        row = by_digest.get(digest) if digest else None
        if row is None:
            asks.append(AuthError(INVALID_TOKEN if join.token else MISSING_TOKEN))
        elif join.node_id is not None and join.node_id != row.id:
            asks.append(ForbiddenError(f"token belongs to '{row.id}', not '{join.node_id}'"))
        else:
            asks.append(_Ask(row.id, row.domain, join.group_id))
    return _apply_joins(
        session,
        asks,
        {row.id: row.group_id for row in rows},
        quarantine_flags=quarantine_flags,
        quarantine_s=quarantine_s,
    )


class _Ask(NamedTuple):
    node_id: str
    domain: str
    group_id: int


class _GroupState:
    """A locked group's row as the batch changes it."""

    def __init__(self, row: Any, members: int) -> None:
        self.id: int = row.id
        self.name: str = row.name
        self.domain: str = row.domain
        self.capacity: int = row.max_capacity
        self.archived = row.archived_at is not None
        self.host_node_id: str | None = row.host_node_id
        self.host_address: str | None = row.host_address
        self.members = members
        self.touched = False


def _held_nodes(
    session: Session, node_ids: set[str], *, flags: int, duration_s: float, now: dt.datetime
) -> dict[str, str]:
    """Refusal reasons of the quarantined among `node_ids` (``registry.quarantine``).

    Only a node with a flag inside the quarantine window can be held: one query finds
    those, and only they get the full check.
    """
    if flags <= 0 or not node_ids:
        return {}
    suspects = session.scalars(
        select(LedgerEntry.node_id)
        .where(
            LedgerEntry.node_id.in_(node_ids),
            LedgerEntry.reason == REASON_FLAGGED,
            LedgerEntry.created_at >= now - dt.timedelta(seconds=duration_s),
        )
        .distinct()
    ).all()
    held = {}
    for node_id in suspects:
        q = quarantine_of(session, node_id, flags=flags, duration_s=duration_s, now=now)
        if q is not None:
            held[node_id] = q.reason()
    return held


def _apply_joins(
    session: Session,
    asks: Sequence[_Ask | RegistryError],
    at: dict[str, int | None],
    *,
    quarantine_flags: int,
    quarantine_s: float,
) -> list[MembershipPublic | RegistryError]:
    """The joins of `asks` (nodes locked by the caller, `at` their current groups)."""
    groups = cast(Table, Group.__table__)
    nodes = cast(Table, Node.__table__)
    now = utcnow()
    wanted = [a for a in asks if isinstance(a, _Ask)]
    if not wanted:
        return [a for a in asks if isinstance(a, RegistryError)]
    held = _held_nodes(
        session,
        {a.node_id for a in wanted},
        flags=quarantine_flags,
        duration_s=quarantine_s,
        now=now,
    )
    # Every group a node may leave in this batch is its current one or an earlier target.
    ids = sorted({a.group_id for a in wanted} | {g for g in at.values() if g is not None})
    locked = session.execute(
        select(groups).where(groups.c.id.in_(ids)).order_by(groups.c.id).with_for_update()
    ).all()
    counts: dict[int, int] = dict(
        session.execute(  # after the locks: no join of another transaction is in between
            select(nodes.c.group_id, func.count())
            .where(nodes.c.group_id.in_(ids))
            .group_by(nodes.c.group_id)
        ).all()
    )
    state = {row.id: _GroupState(row, int(counts.get(row.id, 0))) for row in locked}
    where = dict(at)
    outcomes: list[MembershipPublic | RegistryError] = []
    moves: list[tuple[str, int | None, int]] = []  # (node, from, to), in order
    for ask in asks:
        if isinstance(ask, RegistryError):
            outcomes.append(ask)
            continue
        previous = where[ask.node_id]
        try:
            _check_join(ask, previous, state.get(ask.group_id), held.get(ask.node_id))
        except RegistryError as exc:
            outcomes.append(exc)
            continue
        outcomes.append(
            MembershipPublic(
                node_id=ask.node_id,
                group_id=ask.group_id,
                previous_group_id=previous if previous != ask.group_id else None,
                migrated=previous is not None and previous != ask.group_id,
            )
        )
        if previous == ask.group_id:
            continue
        target = state[ask.group_id]
        target.members += 1
        target.touched = True
        if previous is not None:
            state[previous].members -= 1
            state[previous].touched = True
        where[ask.node_id] = ask.group_id
        moves.append((ask.node_id, previous, ask.group_id))
    if moves:
        _write_moves(session, moves, state, now)
    return outcomes


def _check_join(
    ask: _Ask, previous: int | None, target: _GroupState | None, held: str | None
) -> None:
    """Raise the refusal of one join, in the order the API documents them."""
    if held is not None and previous != ask.group_id:
        raise ForbiddenError(held)
    if target is None:
        raise NotFoundError(f"no group {ask.group_id}")
    if target.domain != ask.domain:
        raise ForbiddenError(
            f"group {target.id} is in domain '{target.domain}', node '{ask.node_id}' in "
            f"'{ask.domain}'"
        )
    if previous == ask.group_id:
        return
    if target.archived:
        raise ConflictError(f"group {target.id} is archived")
    if target.members >= target.capacity:
        raise ConflictError(
            f"group {target.id} ('{target.name}') is full: {target.members}/{target.capacity} "
            "members"
        )


def _write_moves(
    session: Session,
    moves: Sequence[tuple[str, int | None, int]],
    state: dict[int, _GroupState],
    now: dt.datetime,
) -> None:
    """Store checked moves: memberships closed and opened, nodes moved, hosts released,
    groups' emptiness and performance, and one event per move; a few executemany
    statements. A node moving twice in the batch is written move by move."""
    rounds: list[list[tuple[str, int | None, int]]] = [[]]
    for move in moves:
        if any(m[0] == move[0] for m in rounds[-1]):
            rounds.append([])
        rounds[-1].append(move)
    events: list[dict[str, Any]] = []
    rescore: set[int] = set()
    for batch in rounds:
        leaving = [(n, p) for n, p, _ in batch if p is not None]
        if leaving:
            rescore |= _close_memberships(session, leaving, now, reason="migrated")
        session.execute(
            update(cast(Table, Node.__table__))
            .where(cast(Table, Node.__table__).c.id == bindparam("node"))
            .values(group_id=bindparam("to"), status="active", last_heartbeat=now),
            [{"node": n, "to": t} for n, _, t in batch],
        )
        session.execute(
            insert(cast(Table, Membership.__table__)),
            [{"node_id": n, "group_id": t, "joined_at": now} for n, _, t in batch],
        )
        for node_id, previous, target in batch:
            group = state.get(previous) if previous is not None else None
            if group is not None and group.host_node_id == node_id:
                group.host_node_id = group.host_address = None
                released = _event(EventType.HOST_RELEASED, node_id, previous, group.domain)
                events.append({**released, "data": {"reason": "migrated"}})
            if previous is None:
                events.append(_event(EventType.JOINED, node_id, target, state[target].domain))
            else:
                domain = state[target].domain
                events.append(
                    _event(EventType.MIGRATED, node_id, target, domain, from_group=previous)
                )
    groups = cast(Table, Group.__table__)
    touched = [g for g in state.values() if g.touched]
    session.execute(
        update(groups)
        .where(groups.c.id == bindparam("gid"))
        .values(
            updated_at=now,
            empty_since=bindparam("empty"),
            host_node_id=bindparam("host"),
            host_address=bindparam("host_at"),
        ),
        [
            {
                "gid": g.id,
                "empty": now if g.members == 0 else None,
                "host": g.host_node_id,
                "host_at": g.host_address,
            }
            for g in touched
        ],
    )
    for gid in sorted(rescore):
        session.execute(
            update(groups).where(groups.c.id == gid).values(performance=_performance(session, gid))
        )
    record_events(session, events)


def _event(
    type_: str, node_id: str, group_id: int | None, domain: str, **data: Any
) -> dict[str, Any]:
    return {"type": type_, "node_id": node_id, "group_id": group_id, "domain": domain, "data": data}


def _close_memberships(
    session: Session, leaving: Sequence[tuple[str, int]], now: dt.datetime, *, reason: str
) -> set[int]:
    """Close the open memberships of (node, group) pairs and drop the nodes' latest
    metrics there; returns the groups whose performance those metrics were part of.

    Open memberships are found by node first: by (node, group) SQLite's planner (without
    statistics) picks the group index and reads the group's whole history.
    """
    memberships = cast(Table, Membership.__table__)
    metrics = cast(Table, MemberMetric.__table__)
    pairs = set(leaving)
    node_ids = {n for n, _ in leaving}
    open_rows = session.execute(
        select(memberships.c.id, memberships.c.node_id, memberships.c.group_id).where(
            memberships.c.node_id.in_(node_ids), memberships.c.left_at.is_(None)
        )
    ).all()
    closing = [{"mid": row.id} for row in open_rows if (row.node_id, row.group_id) in pairs]
    if closing:
        session.execute(
            update(memberships)
            .where(memberships.c.id == bindparam("mid"))
            .values(left_at=now, left_reason=reason),
            closing,
        )
    scored = session.execute(
        select(metrics.c.node_id, metrics.c.group_id)
        .where(metrics.c.node_id.in_(node_ids))
        .distinct()
    ).all()
    gone = {(n, g) for n, g in scored} & pairs
    if gone:
        session.execute(
            delete(metrics).where(
                metrics.c.node_id == bindparam("node"), metrics.c.group_id == bindparam("gid")
            ),
            [{"node": n, "gid": g} for n, g in gone],
        )
    return {g for _, g in gone}


def leave_group(session: Session, *, caller: Node, reason: str = "left") -> int:
    """Take the caller out of its group; returns that group's id."""
    node = _lock_node(session, caller.id)
    if node.group_id is None:
        raise ConflictError(f"node '{node.id}' is not in a group")
    group_id = node.group_id
    group = lock_groups(session, [group_id])[group_id]
    _remove_member(session, node=node, group=group, reason=reason)
    record_event(session, EventType.LEFT, node_id=node.id, group_id=group_id, reason=reason)
    return group_id


def get_group(session: Session, *, group_id: int) -> tuple[Group, list[Node]]:
    """One group and its members."""
    group = session.get(Group, group_id)
    if group is None:
        raise NotFoundError(f"no group {group_id}")
    members = session.scalars(select(Node).where(Node.group_id == group_id).order_by(Node.id))
    return group, list(members)


def list_groups(
    session: Session,
    *,
    domain: str | None,
    include_archived: bool,
    offset: int,
    limit: int,
) -> tuple[list[GroupPublic], int]:
    """A page of groups with member counts, newest first."""
    counts = (
        select(Node.group_id.label("gid"), func.count().label("n"))
        .where(Node.group_id.is_not(None))
        .group_by(Node.group_id)
        .subquery()
    )
    q = select(Group, func.coalesce(counts.c.n, 0)).outerjoin(counts, counts.c.gid == Group.id)
    filt = select(Group.id)
    if domain is not None:
        q = q.where(Group.domain == domain)
        filt = filt.where(Group.domain == domain)
    if not include_archived:
        q = q.where(Group.archived_at.is_(None))
        filt = filt.where(Group.archived_at.is_(None))
    total = session.scalar(select(func.count()).select_from(filt.subquery())) or 0
    rows = session.execute(q.order_by(Group.id).offset(offset).limit(limit)).all()
    return [group_public(g, int(n)) for g, n in rows], total


def report_performance(
    session: Session,
    *,
    caller: Node,
    group_id: int,
    body: PerformanceReportIn,
    max_round_jump: int | None = None,
) -> Group:
    """Store a member's report and recompute the group's performance (ConflictError for a
    round more than ``max_round_jump`` past the group's)."""
    group = session.get(Group, group_id)
    if group is None:
        raise NotFoundError(f"no group {group_id}")
    node = _lock_node(session, caller.id)
    if node.group_id != group_id:
        raise ForbiddenError(f"only members of group {group_id} may report its performance")
    group = lock_groups(session, [group_id])[group_id]
    check_round(group, body.round, max_jump=max_round_jump, what="a performance report")
    now = utcnow()
    figure = {
        "group_id": group_id,
        "node_id": node.id,
        "metric": body.metric,
        "value": body.value,
        "round": body.round,
        "num_examples": body.num_examples,
    }
    session.add(PerformanceReport(**figure, created_at=now))
    latest = session.get(MemberMetric, (group_id, node.id, body.metric))
    if latest is None:
        session.add(MemberMetric(**figure, reported_at=now))
    elif body.round >= latest.round:  # a late report for an older round never overrides
        latest.value = body.value
        latest.round = body.round
        latest.num_examples = body.num_examples
        latest.reported_at = now
    session.flush()
    _recompute_performance(session, group)
    group.round = max(group.round, body.round)
    group.updated_at = now
    record_event(
        session,
        EventType.PERFORMANCE,
        node_id=node.id,
        group_id=group_id,
        metric=body.metric,
        value=body.value,
        round=body.round,
        num_examples=body.num_examples,
        group_value=group.performance.get(body.metric),
    )
    return group


def list_reports(
    session: Session, *, group_id: int, metric: str | None, offset: int, limit: int
) -> tuple[Sequence[PerformanceReport], int]:
    """A page of a group's performance history, oldest first."""
    q = select(PerformanceReport).where(PerformanceReport.group_id == group_id)
    if metric is not None:
        q = q.where(PerformanceReport.metric == metric)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = session.scalars(q.order_by(PerformanceReport.id).offset(offset).limit(limit)).all()
    return rows, total


def claim_host(session: Session, *, caller: Node, group_id: int, address: str) -> GroupHost:
    """Atomically claim a group's hosting: granted when free, already the caller's, or held
    by a node that is no longer an active member. Otherwise `claimed` is False and the
    current host is returned, so the caller connects to it instead."""
    node = _lock_node(session, caller.id)
    if session.get(Group, group_id) is None:
        raise NotFoundError(f"no group {group_id}")
    if node.group_id != group_id:
        raise ForbiddenError(f"only members of group {group_id} may host it")
    group = lock_groups(session, [group_id])[group_id]
    holder = session.get(Node, group.host_node_id) if group.host_node_id else None
    free = holder is None or holder.group_id != group_id or holder.status != "active"
    if free or group.host_node_id == node.id:
        changed = group.host_node_id != node.id or group.host_address != address
        if changed:
            group.host_epoch = (group.host_epoch or 0) + 1
            group.host_node_id = node.id
            group.host_address = address
            group.host_claimed_at = utcnow()
            record_event(
                session,
                EventType.HOST_CLAIMED,
                node_id=node.id,
                group_id=group_id,
                address=address,
                epoch=group.host_epoch,
                previous=holder.id if holder is not None and holder.id != node.id else None,
            )
        claimed = True
    else:
        claimed = False
    return GroupHost(
        group_id=group_id,
        host_node_id=group.host_node_id,
        host_address=group.host_address,
        host_epoch=group.host_epoch or 0,
        claimed=claimed,
    )


# --- models ------------------------------------------------------------------------


def check_round(group: Group, round_: int, *, max_jump: int | None, what: str) -> None:
    """ConflictError when ``round_`` claims to be more than ``max_jump`` rounds past the
    group's round (None: no bound): a member cannot push a group's round to the end of
    the range and jam it, or file evidence for rounds far ahead."""
    if max_jump is not None and round_ > group.round + max_jump:
        raise ConflictError(
            f"group {group.id} is at round {group.round}: {what} for round {round_} is more "
            f"than {max_jump} rounds ahead"
        )


def check_uploader(session: Session, *, node: Node, group: Group) -> None:
    """ForbiddenError unless ``node`` may store ``group``'s snapshots: a member, and its
    host when the group has a live one (a member cannot replace the host's model)."""
    if node.group_id != group.id:
        raise ForbiddenError(f"only members of group {group.id} may upload its model")
    if group.host_node_id is not None and group.host_node_id != node.id:
        host = session.get(Node, group.host_node_id)
        if host is not None and host.group_id == group.id:
            raise ForbiddenError(
                f"only the host of group {group.id} ('{host.id}') may upload its model"
            )


def authorize_upload(
    session: Session, *, caller: Node, group_id: int, round_: int, max_round_jump: int | None
) -> Group:
    """The group, if the caller may upload its snapshot for ``round_`` (``check_uploader``,
    ``check_round``): NotFoundError, ForbiddenError or ConflictError otherwise."""
    group = session.get(Group, group_id)
    if group is None:
        raise NotFoundError(f"no group {group_id}")
    check_uploader(session, node=caller, group=group)
    check_round(group, round_, max_jump=max_round_jump, what="a snapshot")
    return group


def latest_snapshot(session: Session, *, group_id: int, round_: int | None = None) -> ModelSnapshot:
    """The newest stored snapshot of a group (or the one of a given round)."""
    if session.get(Group, group_id) is None:
        raise NotFoundError(f"no group {group_id}")
    q = select(ModelSnapshot).where(
        ModelSnapshot.group_id == group_id, ModelSnapshot.pruned.is_(False)
    )
    if round_ is not None:
        q = q.where(ModelSnapshot.round == round_)
    snap = session.scalar(q.order_by(ModelSnapshot.round.desc()).limit(1))
    if snap is None:
        which = f"round {round_}" if round_ is not None else "any round"
        raise NotFoundError(f"group {group_id} has no model snapshot for {which}")
    return snap


def record_snapshot(
    session: Session,
    *,
    caller: Node,
    group_id: int,
    round_: int,
    sha256: str,
    size: int,
    path: str,
    keep: int,
    max_round_jump: int | None = None,
) -> tuple[ModelSnapshot, bool, list[str]]:
    """Record an uploaded snapshot; returns (snapshot, created, paths to delete).

    Re-uploading the same bytes for the same round is a no-op; other bytes for an
    existing round, a round older than the newest or more than ``max_round_jump``
    rounds ahead of the group is a conflict; a member that is not the group's live
    host is forbidden (``check_uploader``).
    """
    node = _lock_node(session, caller.id)
    if node.group_id != group_id:  # before the lookup: a member's group exists
        raise ForbiddenError(f"only members of group {group_id} may upload its model")
    group = lock_groups(session, [group_id])[group_id]
    check_uploader(session, node=node, group=group)
    check_round(group, round_, max_jump=max_round_jump, what="a snapshot")
    same = session.scalar(
        select(ModelSnapshot).where(
            ModelSnapshot.group_id == group_id, ModelSnapshot.round == round_
        )
    )
    if same is not None and same.sha256 == sha256:
        return same, False, []
    newest = session.scalar(
        select(ModelSnapshot)
        .where(ModelSnapshot.group_id == group_id)
        .order_by(ModelSnapshot.round.desc())
        .limit(1)
    )
    if newest is not None and round_ <= newest.round:
        raise ConflictError(
            f"group {group_id} already has a model for round {newest.round}; "
            f"upload a newer round (got {round_})"
        )
    now = utcnow()
    snap = ModelSnapshot(
        group_id=group_id,
        round=round_,
        sha256=sha256,
        size=size,
        path=path,
        uploaded_by=node.id,
        created_at=now,
    )
    session.add(snap)
    group.model_round = round_
    group.round = max(group.round, round_)
    group.updated_at = now
    session.flush()
    old = session.scalars(
        select(ModelSnapshot)
        .where(ModelSnapshot.group_id == group_id, ModelSnapshot.pruned.is_(False))
        .order_by(ModelSnapshot.round.desc())
        .offset(keep)
    ).all()
    stale = []
    for s in old:
        s.pruned = True
        stale.append(s.path)
    record_event(
        session,
        EventType.MODEL_UPLOADED,
        node_id=node.id,
        group_id=group_id,
        round=round_,
        sha256=sha256,
        size=size,
    )
    return snap, True, stale


# --- events and liveness -------------------------------------------------------------


def list_events(
    session: Session,
    *,
    after_id: int,
    limit: int,
    type_: str | None = None,
    types: Collection[str] | None = None,
    domain: str | None = None,
    node_id: str | None = None,
    group_id: int | None = None,
    before: int | None = None,
    newest: bool = False,
) -> Sequence[Event]:
    """Events with after_id < id (< before, when given), oldest first: the oldest `limit`
    of them, or with `newest` the newest `limit` (for paging back). Each filter given
    narrows: `type_` one type, `types` any of several, `domain` the events of that domain."""
    q = select(Event).where(Event.id > after_id)
    if before is not None:
        q = q.where(Event.id < before)
    if type_ is not None:
        q = q.where(Event.type == type_)
    if types is not None:
        q = q.where(Event.type.in_(sorted(types)))
    if domain is not None:
        q = q.where(Event.domain == domain)
    if node_id is not None:
        q = q.where(Event.node_id == node_id)
    if group_id is not None:
        q = q.where(Event.group_id == group_id)
    if newest:
        return list(reversed(session.scalars(q.order_by(Event.id.desc()).limit(limit)).all()))
    return session.scalars(q.order_by(Event.id).limit(limit)).all()


def stale_node_ids(session: Session, *, now: dt.datetime, ttl: float) -> list[str]:
    """Active nodes whose last heartbeat is older than the TTL."""
    cutoff = now - dt.timedelta(seconds=ttl)
    return list(
        session.scalars(
            select(Node.id).where(Node.status == "active", Node.last_heartbeat < cutoff)
        )
    )


def expire_nodes(session: Session, *, node_id: str, now: dt.datetime, ttl: float) -> bool:
    """Mark one node inactive and free its slot, if it is still stale."""
    node = session.get(Node, node_id, with_for_update=True, populate_existing=True)
    cutoff = now - dt.timedelta(seconds=ttl)
    if node is None or node.status != "active" or node.last_heartbeat >= cutoff:
        return False
    node.status = "inactive"
    group_id = node.group_id
    if group_id is not None:
        group = lock_groups(session, [group_id])[group_id]
        _remove_member(session, node=node, group=group, reason="expired")
    last_seen = node.last_heartbeat.isoformat()
    record_event(
        session, EventType.EXPIRED, node_id=node.id, group_id=group_id, last_heartbeat=last_seen
    )
    return True


def archive_empty_groups(session: Session, *, now: dt.datetime, grace: float) -> list[int]:
    """Archive live groups that have been empty for longer than the grace period."""
    cutoff = now - dt.timedelta(seconds=grace)
    ids = list(
        session.scalars(
            select(Group.id).where(
                Group.archived_at.is_(None),
                Group.empty_since.is_not(None),
                Group.empty_since < cutoff,
            )
        )
    )
    archived = []
    for gid, group in lock_groups(session, ids).items():
        if group.archived_at is None and _member_count(session, gid) == 0:
            group.archived_at = now
            group.updated_at = now
            record_event(session, EventType.GROUP_ARCHIVED, group_id=gid, name=group.name)
            archived.append(gid)
    return archived
