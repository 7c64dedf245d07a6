"""Meta-federation at the registry: sibling links between groups, merges and splits.

A group measures other groups' models on its members' validation data and reports them as
its *siblings* (``report_siblings``): directed links ``group -> sibling`` with the
sibling's fit next to its own, as in IFCA's cluster choice (Ghosh et al., 2020) applied
group to group. Two siblings whose members fit one group's capacity may merge
(``merge_group``); a group whose members' data disagree may split some of them off
(``split_group``), as clustered FL does (Sattler et al., 2020).

Merges and splits move many nodes at once, so they lock like joins do
(``registry.crud.join_groups``): the node rows in id order, then the group rows in id order,
and count members only after the group locks. Capacity holds under races between workers
(PostgreSQL), and a merge cannot deadlock with a crossing join; SQLite write transactions
begin IMMEDIATE, which serialises them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from sqlalchemy import Table, delete, insert, or_, select, update
from sqlalchemy.orm import Session, aliased

from registry import crud
from registry.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError
from registry.events import EventType, record_event
from registry.models import Group, GroupLink, Membership, Node, utcnow
from registry.schemas import GroupPublic, GroupSplit, SiblingsReport

__all__ = [
    "list_links",
    "merge_group",
    "report_siblings",
    "split_group",
]


def _live_group(session: Session, group_id: int) -> Group:
    group = session.get(Group, group_id)
    if group is None:
        raise NotFoundError(f"no group {group_id}")
    return group


def _check_member(node: Node, group: Group, what: str) -> None:
    if node.group_id != group.id:
        raise ForbiddenError(f"only members of group {group.id} may {what}")
    if group.archived_at is not None:  # a member of an archived group cannot exist; be sure
        raise ConflictError(f"group {group.id} is archived")


def list_links(
    session: Session,
    *,
    group_id: int | None = None,
    domain: str | None = None,
) -> list[GroupLink]:
    """Links between live (not archived) groups, by (group_id, sibling_id): those measured
    by or pointing at ``group_id`` when given, those of ``domain`` when given."""
    measurer = aliased(Group)
    sibling = aliased(Group)
    q = (
        select(GroupLink)
        .join(measurer, measurer.id == GroupLink.group_id)
        .join(sibling, sibling.id == GroupLink.sibling_id)
        .where(measurer.archived_at.is_(None), sibling.archived_at.is_(None))
    )
    if group_id is not None:
        q = q.where(or_(GroupLink.group_id == group_id, GroupLink.sibling_id == group_id))
    if domain is not None:
        q = q.where(measurer.domain == domain)
    return list(session.scalars(q.order_by(GroupLink.group_id, GroupLink.sibling_id)))


def report_siblings(
    session: Session,
    *,
    caller: Node,
    group_id: int,
    body: SiblingsReport,
    max_round_jump: int | None = None,
) -> list[GroupLink]:
    """Replace group ``group_id``'s outgoing sibling links with ``body.siblings``; returns
    them by sibling id.

    Raises NotFoundError for an unknown (or archived) group or sibling, ForbiddenError when
    the caller is not a current member, InvalidError when the group lists itself,
    ConflictError for a sibling of another domain or a round more than ``max_round_jump``
    past the group's.
    """
    group = _live_group(session, group_id)
    node = crud._lock_node(session, caller.id)
    _check_member(node, group, "report its siblings")
    ids = [s.group_id for s in body.siblings]
    if group_id in ids:
        raise InvalidError(f"group {group_id} cannot be its own sibling")
    # Locked so two members replacing the set at once are serialised, not interleaved.
    locked = crud.lock_groups(session, [group_id, *ids])
    group = locked[group_id]
    crud.check_round(group, body.round, max_jump=max_round_jump, what="a sibling report")
    for sid in ids:
        sibling = locked.get(sid)
        if sibling is None or sibling.archived_at is not None:
            raise NotFoundError(f"no group {sid} (listed as a sibling)")
        if sibling.domain != group.domain:
            raise ConflictError(
                f"group {sid} is in domain '{sibling.domain}', group {group_id} in "
                f"'{group.domain}': siblings share a domain"
            )
    links = cast(Table, GroupLink.__table__)
    session.execute(delete(links).where(links.c.group_id == group_id))
    now = utcnow()
    if body.siblings:
        session.execute(
            insert(links),
            [
                {
                    "group_id": group_id,
                    "sibling_id": s.group_id,
                    "fit": s.fit,
                    "own_fit": s.own_fit,
                    "loss": s.loss,
                    "examples": s.examples,
                    "round": body.round,
                    "updated_at": now,
                }
                for s in body.siblings
            ],
        )
    record_event(
        session,
        EventType.SIBLINGS_UPDATED,
        node_id=node.id,
        group_id=group_id,
        domain=group.domain,
        round=body.round,
        siblings=[{"group_id": s.group_id, "fit": s.fit} for s in body.siblings],
    )
    session.flush()
    return list(
        session.scalars(
            select(GroupLink)
            .where(GroupLink.group_id == group_id)
            .order_by(GroupLink.sibling_id)
            .execution_options(populate_existing=True)
        )
    )


def _lock_members(session: Session, group_id: int, extra: Sequence[str]) -> None:
    """Lock the node rows of ``group_id``'s members and of ``extra``, in id order (joins
    lock nodes before groups too, so the two cannot deadlock)."""
    session.scalars(
        select(Node.id)
        .where(or_(Node.group_id == group_id, Node.id.in_(extra)))
        .order_by(Node.id)
        .with_for_update()
    ).all()


def _member_ids(session: Session, group_id: int) -> list[str]:
    return list(
        session.scalars(
            select(Node.id)
            .where(Node.group_id == group_id)
            .order_by(Node.id)
            .execution_options(populate_existing=True)
        )
    )


def _move(
    session: Session, *, nodes: Sequence[str], source: Group, target: Group, reason: str
) -> None:
    """Move ``nodes`` (members of ``source``, rows locked) into ``target``: memberships
    closed and opened, the source's host released when it moves, both groups' emptiness
    and performance brought up to date."""
    now = utcnow()
    session.flush()
    crud._close_memberships(session, [(n, source.id) for n in nodes], now, reason=reason)
    table = cast(Table, Node.__table__)
    session.execute(
        update(table)
        .where(table.c.id.in_(list(nodes)))
        .values(group_id=target.id, status="active", last_heartbeat=now)
    )
    session.execute(
        insert(cast(Table, Membership.__table__)),
        [{"node_id": n, "group_id": target.id, "joined_at": now} for n in nodes],
    )
    if source.host_node_id in nodes:
        record_event(
            session,
            EventType.HOST_RELEASED,
            node_id=source.host_node_id,
            group_id=source.id,
            domain=source.domain,
            reason=reason,
        )
        source.host_node_id = None
        source.host_address = None
    session.flush()
    for group in (source, target):
        group.performance = crud._performance(session, group.id)
        group.updated_at = now
        group.empty_since = now if crud._member_count(session, group.id) == 0 else None


def merge_group(
    session: Session,
    *,
    caller: Node,
    group_id: int,
    into: int,
    quarantine_flags: int = 0,
    quarantine_s: float = 0.0,
) -> tuple[GroupPublic, list[str]]:
    """Move every member of ``group_id`` into its sibling ``into`` and archive
    ``group_id`` (its links go with it); returns ``into`` as stored and the moved node ids.

    Raises NotFoundError for an unknown group, ForbiddenError when the caller is not a
    member of ``group_id`` (or is quarantined), ConflictError when ``into`` is the group
    itself, archived, of another domain, aggregation or mode, not a sibling (no link
    either way), or too small for both groups' members.
    """
    if into == group_id:
        raise ConflictError(f"group {group_id} cannot merge into itself")
    _live_group(session, group_id)
    _live_group(session, into)
    _lock_members(session, group_id, [caller.id])
    locked = crud.lock_groups(session, [group_id, into])
    source, target = locked[group_id], locked[into]
    node = session.get(Node, caller.id, populate_existing=True)
    if node is None:
        raise NotFoundError(f"no node '{caller.id}'")
    _check_member(node, source, "merge it")
    crud.check_not_quarantined(session, node.id, flags=quarantine_flags, duration_s=quarantine_s)
    if target.archived_at is not None:
        raise ConflictError(f"group {into} is archived")
    for what, ours, theirs in (
        ("domain", source.domain, target.domain),
        ("aggregation", source.aggregation, target.aggregation),
        ("mode", source.mode, target.mode),
    ):
        if ours != theirs:
            raise ConflictError(
                f"group {group_id} has {what} '{ours}', group {into} '{theirs}': "
                "only groups of one domain, aggregation and mode merge"
            )
    linked = session.scalar(
        select(GroupLink.id)
        .where(
            or_(
                (GroupLink.group_id == group_id) & (GroupLink.sibling_id == into),
                (GroupLink.group_id == into) & (GroupLink.sibling_id == group_id),
            )
        )
        .limit(1)
    )
    if linked is None:
        raise ConflictError(
            f"group {into} is not a sibling of group {group_id}: report it first "
            f"(PUT /groups/{group_id}/siblings)"
        )
    moving = _member_ids(session, group_id)
    present = crud._member_count(session, into)
    if present + len(moving) > target.max_capacity:
        raise ConflictError(
            f"group {into} ('{target.name}') has {present}/{target.max_capacity} members: "
            f"the {len(moving)} of group {group_id} do not fit"
        )
    _move(session, nodes=moving, source=source, target=target, reason="merged")
    now = utcnow()
    source.archived_at = now
    source.empty_since = now
    links = cast(Table, GroupLink.__table__)
    session.execute(
        delete(links).where(or_(links.c.group_id == group_id, links.c.sibling_id == group_id))
    )
    record_event(
        session,
        EventType.GROUPS_MERGED,
        node_id=node.id,
        group_id=into,
        domain=target.domain,
        **{"from": group_id, "moved": moving},
    )
    record_event(
        session,
        EventType.GROUP_ARCHIVED,
        group_id=group_id,
        domain=source.domain,
        name=source.name,
        reason="merged",
    )
    session.flush()
    return crud.group_public(target, present + len(moving)), moving


def split_group(
    session: Session,
    *,
    caller: Node,
    group_id: int,
    body: GroupSplit,
    quarantine_flags: int = 0,
    quarantine_s: float = 0.0,
) -> tuple[GroupPublic, list[str]]:
    """Create a group like ``group_id`` (domain, capacity, aggregation, mode) named
    ``body.name`` and move ``body.members`` into it; returns the new group and the moved
    node ids (sorted).

    Raises NotFoundError for an unknown group, ForbiddenError when the caller is not a
    member (or is quarantined), ConflictError when a listed node is not a current member,
    when every member is listed (the group would be left empty), when the group is
    archived or when a live group has the name already.
    """
    _live_group(session, group_id)
    _lock_members(session, group_id, [caller.id, *body.members])
    source = crud.lock_groups(session, [group_id])[group_id]
    node = session.get(Node, caller.id, populate_existing=True)
    if node is None:
        raise NotFoundError(f"no node '{caller.id}'")
    _check_member(node, source, "split it")
    crud.check_not_quarantined(session, node.id, flags=quarantine_flags, duration_s=quarantine_s)
    members = _member_ids(session, group_id)
    strangers = sorted(set(body.members) - set(members))
    if strangers:
        shown = ", ".join(strangers[:10]) + (
            f" and {len(strangers) - 10} more" if len(strangers) > 10 else ""
        )
        raise ConflictError(f"not members of group {group_id}: {shown}")
    if len(body.members) >= len(members):
        raise ConflictError(
            f"a split must leave group {group_id} at least one of its {len(members)} members"
        )
    new = crud.add_group(
        session,
        name=body.name,
        domain=source.domain,
        description=f"split from group {group_id} ('{source.name}')",
        max_capacity=source.max_capacity,
        created_by=node.id,
        round_=source.round,
        aggregation=source.aggregation,
        mode=source.mode,
        split_from=group_id,
    )
    moving = sorted(body.members)
    _move(session, nodes=moving, source=source, target=new, reason="split")
    record_event(
        session,
        EventType.GROUP_SPLIT,
        node_id=node.id,
        group_id=new.id,
        domain=new.domain,
        **{"from": group_id, "to": new.id, "moved": moving},
    )
    session.flush()
    return crud.group_public(new, len(moving)), moving
