"""Routes for nodes: register, heartbeat, list, show."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.routing import Route

from registry import crud
from registry.api.deps import DatabaseDep, PageDep, TokenDep
from registry.api.validation import invalid_response
from registry.db import Database, GroupCommit
from registry.schemas import (
    NODE_ID_PATTERN,
    Heartbeat,
    NodePublic,
    NodeRegister,
    NodeRegistered,
    NodesPublic,
)

router = APIRouter(prefix="/nodes", tags=["nodes"])

NodeIdPath = Annotated[str, Path(pattern=NODE_ID_PATTERN)]


@router.post(
    "/register",
    response_model=NodeRegistered,
    responses={201: {"model": NodeRegistered}, 401: {}, 403: {}, 409: {}},
)
def register_node(
    db: DatabaseDep, token: TokenDep, body: NodeRegister, response: Response
) -> NodeRegistered:
    """Register a node (201, returns its secret token once) or update it (200, needs the token)."""
    with db.write() as session:
        node, new_token, created = crud.register_node(session, body=body, token=token)
        out = NodeRegistered(node=NodePublic.model_validate(node), token=new_token, created=created)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return out


# Heartbeats are the registry's hottest path (every node, every interval). They are
# served by `heartbeat_fast`, a plain Starlette route placed first in the route table:
# FastAPI's per-request machinery (handler rebuild, dependency solving, content-type
# parsing) cost several times the work itself (bench/registry_throughput.py). The
# FastAPI route below documents the endpoint in /docs and shares the same core.
_heartbeat_bearer = HTTPBearer(
    auto_error=False, description="The node's token from /nodes/register."
)
_NODE_ID = re.compile(NODE_ID_PATTERN)


async def _beat(
    request: Request, token: str | None, node_id: str, metrics: dict[str, float]
) -> Response:
    """Queue the beat for the group-commit writer; answer after the commit that stored it."""
    db: Database = request.app.state.db
    writer: GroupCommit[crud.HeartbeatIn, NodePublic] = db.group_commit(
        "heartbeat", lambda s, beats: crud.heartbeat(s, beats=beats)
    )
    node = await writer.submit(crud.HeartbeatIn(token=token, node_id=node_id, metrics=metrics))
    return Response(node.model_dump_json(), media_type="application/json")


@router.post("/{node_id}/heartbeat", response_model=NodePublic, responses={401: {}, 403: {}})
async def heartbeat(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_heartbeat_bearer)],
    node_id: NodeIdPath,
    body: Heartbeat | None = None,
) -> NodePublic:
    """Liveness plus the node's own latest metrics; only the node itself may send it."""
    token = creds.credentials if creds else None
    return await _beat(request, token, node_id, body.metrics if body else {})  # type: ignore[return-value]


def _bearer_token(request: Request) -> str | None:
    """What HTTPBearer(auto_error=False) yields: the credentials of a Bearer header."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() or None if scheme.lower() == "bearer" else None


async def heartbeat_fast(request: Request) -> Response:
    """POST /nodes/{node_id}/heartbeat without FastAPI's per-request overhead."""
    node_id: str = request.path_params["node_id"]
    if not _NODE_ID.fullmatch(node_id):
        mismatch = {
            "type": "string_pattern_mismatch",
            "loc": ("path", "node_id"),
            "msg": f"String should match pattern '{NODE_ID_PATTERN}'",
            "input": node_id,
        }
        return invalid_response([mismatch])
    raw = await request.body()
    metrics: dict[str, float] = {}
    if raw.strip():
        try:
            metrics = Heartbeat.model_validate_json(raw).metrics
        except ValidationError as exc:
            return invalid_response(exc.errors(include_url=False), loc_prefix=("body",))
    return await _beat(request, _bearer_token(request), node_id, metrics)


FAST_ROUTES = [Route("/nodes/{node_id}/heartbeat", heartbeat_fast, methods=["POST"])]


@router.get("", response_model=NodesPublic)
def list_nodes(
    db: DatabaseDep,
    page: PageDep,
    domain: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[str | None, Query(pattern="^(active|inactive)$")] = None,
    group_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> NodesPublic:
    """Nodes with status, group and last heartbeat; filter by domain, status or group."""
    with db.read() as session:
        rows, total = crud.list_nodes(
            session,
            domain=domain,
            status=status,
            group_id=group_id,
            offset=page.offset,
            limit=page.limit,
        )
        return NodesPublic(data=[NodePublic.model_validate(n) for n in rows], count=total)


@router.get("/{node_id}", response_model=NodePublic, responses={404: {}})
def get_node(db: DatabaseDep, node_id: NodeIdPath) -> NodePublic:
    """One node."""
    with db.read() as session:
        return NodePublic.model_validate(crud.get_node(session, node_id=node_id))
