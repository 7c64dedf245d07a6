"""Routes for nodes: register, heartbeat, list, show."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from registry import crud
from registry.api.deps import DatabaseDep, PageDep, TokenDep
from registry.schemas import Heartbeat, NodePublic, NodeRegister, NodeRegistered, NodesPublic

router = APIRouter(prefix="/nodes", tags=["nodes"])

NodeIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")]


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


@router.post("/{node_id}/heartbeat", response_model=NodePublic, responses={401: {}, 403: {}})
def heartbeat(
    db: DatabaseDep, token: TokenDep, node_id: NodeIdPath, body: Heartbeat | None = None
) -> NodePublic:
    """Liveness plus the node's own latest metrics; only the node itself may send it."""
    with db.write() as session:
        caller = crud.authenticate(session, token=token)
        node = crud.heartbeat(
            session, caller=caller, node_id=node_id, metrics=body.metrics if body else {}
        )
        return NodePublic.model_validate(node)


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
