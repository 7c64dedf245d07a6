"""Routes for groups: create, list, show, join, leave, performance, siblings, merge, split."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status
from pydantic import ValidationError
from starlette.routing import Route

from registry import crud, round_tickets, siblings, snapshots
from registry.api import reads
from registry.api.deps import DatabaseDep, PageDep, SettingsDep, TokenDep, request_token
from registry.api.validation import invalid_response
from registry.db import Database, GroupCommit
from registry.schemas import (
    GroupCreate,
    GroupDetail,
    GroupHost,
    GroupLinkPublic,
    GroupLinksPublic,
    GroupMerge,
    GroupMoved,
    GroupPublic,
    GroupSplit,
    GroupsPublic,
    HostClaim,
    JoinRequest,
    LeaveRequest,
    LeaveResult,
    MembershipPublic,
    PerformanceReportIn,
    PerformanceReportPublic,
    PerformanceReportsPublic,
    RoundKey,
    RoundTicket,
    SiblingsReport,
)
from registry.settings import RegistrySettings

router = APIRouter(prefix="/groups", tags=["groups"])

GroupIdPath = Annotated[int, Path(ge=1, le=2**31 - 1)]
AUTH_ERRORS: dict[int | str, dict[str, object]] = {401: {}, 403: {}}


def _check_caller(caller_id: str, claimed: str | None) -> None:
    if claimed is not None and claimed != caller_id:
        raise crud.ForbiddenError(f"token belongs to '{caller_id}', not '{claimed}'")


@router.post(
    "",
    response_model=GroupPublic,
    status_code=status.HTTP_201_CREATED,
    responses={**AUTH_ERRORS, 409: {}},
)
def create_group(
    db: DatabaseDep, settings: SettingsDep, token: TokenDep, body: GroupCreate
) -> GroupPublic:
    """Create a group in the caller's domain (`join: true` joins it); a `model_signature`
    sets the domain's model when it has none, and one that differs from it is 409."""
    signature = snapshots.parse_declaration(
        body.model_signature, max_model_bytes=settings.max_model_bytes
    )
    with db.write() as session:
        caller = crud.authenticate(session, token=token)
        group = crud.create_group(
            session,
            caller=caller,
            body=body,
            quarantine_flags=settings.quarantine_flags,
            quarantine_s=settings.quarantine_s,
        )
        if signature is not None:
            snapshots.declare_signature(
                session, domain=body.domain, signature=signature, declared_by=caller.id
            )
        return crud.group_public(group, 1 if body.join else 0)


@router.get("", response_model=GroupsPublic, responses={**reads.READ_RESPONSES, **AUTH_ERRORS})
async def list_groups(
    request: Request,
    page: PageDep,
    token: TokenDep,
    domain: Annotated[str | None, Query(max_length=64)] = None,
    include_archived: bool = False,
    if_none_match: reads.IfNoneMatchHeader = None,
) -> Response:
    """Groups with member count, capacity, performance and round; filter by domain.
    With a node's token, only the node's domain (403 for another `domain`, 401 for an
    unknown token); without one, every domain. Tagged with an `ETag`; 304 when
    `If-None-Match` names the current answer."""
    return await reads.list_groups(request)


# Joins (a migration when the node is in another group) are how the network reshapes
# itself, so they take the heartbeat's path: a plain Starlette route ahead of FastAPI's
# routing (`FAST_ROUTES`) and a group-commit writer (one transaction for every join queued
# meanwhile, `crud.join_groups`). The FastAPI route below is what /docs shows; it answers
# the same way, through the same writer, when an app is built without the fast route.
JOIN_PATH = "/groups/join"


async def _join(request: Request, join: crud.JoinIn) -> MembershipPublic:
    """Queue the join for the writer; its outcome once the commit that stored it is done."""
    db: Database = request.app.state.db
    settings: RegistrySettings = request.app.state.settings
    writer: GroupCommit[crud.JoinIn, MembershipPublic] = db.group_commit(
        "join",
        lambda s, joins: crud.join_groups(
            s,
            joins=joins,
            quarantine_flags=settings.quarantine_flags,
            quarantine_s=settings.quarantine_s,
        ),
    )
    return await writer.submit(join)


async def join_fast(request: Request) -> Response:
    """Join a group, leaving the old one in the same transaction (a migration)."""
    raw = await request.body()
    if not raw.strip():
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        return invalid_response([missing])
    try:
        body = JoinRequest.model_validate_json(raw)
    except ValidationError as exc:
        return invalid_response(exc.errors(include_url=False), loc_prefix=("body",))
    joined = await _join(request, crud.JoinIn(request_token(request), body.node_id, body.group_id))
    return Response(joined.model_dump_json(), media_type="application/json")


FAST_ROUTES = [Route(JOIN_PATH, join_fast, methods=["POST"])]


@router.post(
    "/join",
    response_model=MembershipPublic,
    responses={**AUTH_ERRORS, 404: {}, 409: {}},
)
async def join_group(request: Request, token: TokenDep, body: JoinRequest) -> MembershipPublic:
    """Join a group, leaving the old one in the same transaction (a migration); 409 when
    full, 403 while the caller is quarantined for harming its groups (``registry.quarantine``)."""
    return await _join(request, crud.JoinIn(token, body.node_id, body.group_id))


@router.post("/leave", response_model=LeaveResult, responses={**AUTH_ERRORS, 409: {}})
def leave_group(db: DatabaseDep, token: TokenDep, body: LeaveRequest | None = None) -> LeaveResult:
    """Leave the current group; its slot frees at once."""
    with db.write() as session:
        caller = crud.authenticate(session, token=token)
        _check_caller(caller.id, body.node_id if body else None)
        group_id = crud.leave_group(session, caller=caller)
        return LeaveResult(node_id=caller.id, group_id=group_id)


@router.get("/{group_id}", response_model=GroupDetail, responses={**reads.READ_RESPONSES, 404: {}})
async def get_group(
    request: Request, group_id: GroupIdPath, if_none_match: reads.IfNoneMatchHeader = None
) -> Response:
    """One group with its members. Tagged with an `ETag`; 304 when `If-None-Match` names
    the current answer."""
    return await reads.get_group(request)


@router.put(
    "/{group_id}/performance",
    response_model=GroupPublic,
    responses={**AUTH_ERRORS, 404: {}, 409: {}},
)
def report_performance(
    db: DatabaseDep,
    settings: SettingsDep,
    token: TokenDep,
    group_id: GroupIdPath,
    body: PerformanceReportIn,
) -> GroupPublic:
    """A member reports a figure; the group's performance is the example-weighted mean
    (409 for a round more than `max_round_jump` past the group's)."""
    with db.write() as session:
        caller = crud.authenticate(session, token=token)
        group = crud.report_performance(
            session,
            caller=caller,
            group_id=group_id,
            body=body,
            max_round_jump=settings.max_round_jump,
        )
        _, members = crud.get_group(session, group_id=group_id)
        return crud.group_public(group, len(members))


@router.get("/{group_id}/performance", response_model=PerformanceReportsPublic, responses={404: {}})
def list_performance(
    db: DatabaseDep,
    page: PageDep,
    group_id: GroupIdPath,
    metric: Annotated[str | None, Query(max_length=64)] = None,
) -> PerformanceReportsPublic:
    """The group's report history (oldest first) and its current performance."""
    with db.read() as session:
        group, _ = crud.get_group(session, group_id=group_id)
        rows, total = crud.list_reports(
            session, group_id=group_id, metric=metric, offset=page.offset, limit=page.limit
        )
        return PerformanceReportsPublic(
            data=[PerformanceReportPublic.model_validate(r) for r in rows],
            count=total,
            group_performance=dict(group.performance or {}),
        )


@router.post("/{group_id}/host", response_model=GroupHost, responses={**AUTH_ERRORS, 404: {}})
def claim_host(
    db: DatabaseDep, token: TokenDep, group_id: GroupIdPath, body: HostClaim
) -> GroupHost:
    """Claim hosting the group's aggregation (members only); `claimed` says if it was granted."""
    with db.write() as session:
        caller = crud.authenticate(session, token=token)
        return crud.claim_host(session, caller=caller, group_id=group_id, address=body.address)


@router.post(
    "/{group_id}/round-ticket",
    response_model=RoundTicket,
    responses={**AUTH_ERRORS, 404: {}, 409: {}},
)
def round_ticket(
    db: DatabaseDep, settings: SettingsDep, token: TokenDep, group_id: GroupIdPath
) -> RoundTicket:
    """A current member's ticket to the group's Flower rounds under its current host
    (`round_ticket_ttl` seconds); 403 for non-members, 409 while the group has no host."""
    secret = round_tickets.load_secret(settings.data_dir)
    with db.read() as session:
        caller = crud.authenticate(session, token=token)
        return round_tickets.issue_round_ticket(
            session,
            caller=caller,
            group_id=group_id,
            secret=secret,
            ttl_s=settings.round_ticket_ttl,
        )


@router.post("/{group_id}/round-key", response_model=RoundKey, responses={**AUTH_ERRORS, 404: {}})
def round_key(
    db: DatabaseDep, settings: SettingsDep, token: TokenDep, group_id: GroupIdPath
) -> RoundKey:
    """The group's round key for its current host epoch, which checks members' tickets;
    the current host only (403 for anyone else)."""
    secret = round_tickets.load_secret(settings.data_dir)
    with db.read() as session:
        caller = crud.authenticate(session, token=token)
        return round_tickets.issue_round_key(
            session, caller=caller, group_id=group_id, secret=secret
        )


# --- meta-federation: sibling links, merge, split (registry.siblings) ---------------------


def _links(rows: list[object]) -> GroupLinksPublic:
    return GroupLinksPublic(links=[GroupLinkPublic.model_validate(r) for r in rows])


@router.put(
    "/{group_id}/siblings",
    response_model=GroupLinksPublic,
    responses={**AUTH_ERRORS, 404: {}, 409: {}},
)
def report_siblings(
    db: DatabaseDep,
    settings: SettingsDep,
    token: TokenDep,
    group_id: GroupIdPath,
    body: SiblingsReport,
) -> GroupLinksPublic:
    """A member replaces the group's sibling links (the groups whose models it scored on
    its members' validation data); 422 for the group itself or a sibling listed twice, 404
    for an unknown sibling, 409 for one of another domain. Returns the stored links."""
    with db.write() as session:
        caller = crud.authenticate(session, token=token)
        rows = siblings.report_siblings(
            session,
            caller=caller,
            group_id=group_id,
            body=body,
            max_round_jump=settings.max_round_jump,
        )
        return _links(list(rows))


@router.get("/{group_id}/siblings", response_model=GroupLinksPublic, responses={404: {}})
def list_siblings(db: DatabaseDep, group_id: GroupIdPath) -> GroupLinksPublic:
    """The sibling links the group measured and those pointing at it, between live groups."""
    with db.read() as session:
        crud.get_group(session, group_id=group_id)
        return _links(list(siblings.list_links(session, group_id=group_id)))


@router.post(
    "/{group_id}/merge",
    response_model=GroupMoved,
    responses={**AUTH_ERRORS, 404: {}, 409: {}},
)
def merge_group(
    db: DatabaseDep,
    settings: SettingsDep,
    token: TokenDep,
    group_id: GroupIdPath,
    body: GroupMerge,
) -> GroupMoved:
    """A member moves the whole group into a sibling (`into`) and the group is archived;
    409 when `into` is not a sibling (no link either way), is of another domain,
    aggregation or mode, or has no room for every member."""
    with db.write() as session:
        caller = crud.authenticate(session, token=token)
        group, moved = siblings.merge_group(
            session,
            caller=caller,
            group_id=group_id,
            into=body.into,
            quarantine_flags=settings.quarantine_flags,
            quarantine_s=settings.quarantine_s,
        )
        return GroupMoved(group=group, moved=moved)


@router.post(
    "/{group_id}/split",
    response_model=GroupMoved,
    status_code=status.HTTP_201_CREATED,
    responses={**AUTH_ERRORS, 404: {}, 409: {}},
)
def split_group(
    db: DatabaseDep,
    settings: SettingsDep,
    token: TokenDep,
    group_id: GroupIdPath,
    body: GroupSplit,
) -> GroupMoved:
    """A member splits the listed members off into a new group like this one (domain,
    capacity, aggregation, mode) named `name`; 409 when a listed node is not a member,
    when every member is listed, or when the name is taken."""
    with db.write() as session:
        caller = crud.authenticate(session, token=token)
        group, moved = siblings.split_group(
            session,
            caller=caller,
            group_id=group_id,
            body=body,
            quarantine_flags=settings.quarantine_flags,
            quarantine_s=settings.quarantine_s,
        )
        return GroupMoved(group=group, moved=moved)
