"""Routes for nodes: register, heartbeat, list, show."""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.openapi.constants import REF_TEMPLATE
from fastapi.openapi.utils import (
    validation_error_definition,
    validation_error_response_definition,
)
from pydantic import ValidationError
from pydantic.json_schema import models_json_schema
from sqlalchemy.orm import Session
from starlette.routing import Route

from registry import crud, snapshots
from registry.api import reads
from registry.api.deps import (
    BEARER,
    AdminDep,
    DatabaseDep,
    PageDep,
    SettingsDep,
    TokenDep,
    request_token,
)
from registry.api.validation import invalid_response
from registry.db import HEARTBEATS_ONLY, Database, GroupCommit
from registry.errors import RegistryError
from registry.schemas import (
    NODE_ID_PATTERN,
    Heartbeat,
    NodePublic,
    NodeRegister,
    NodeRegistered,
    NodesPublic,
    NodeToken,
    TokenRotate,
)

router = APIRouter(prefix="/nodes", tags=["nodes"])

NodeIdPath = Annotated[str, Path(pattern=NODE_ID_PATTERN)]


@router.post(
    "/register",
    response_model=NodeRegistered,
    responses={201: {"model": NodeRegistered}, 401: {}, 403: {}, 409: {}},
)
def register_node(
    db: DatabaseDep, settings: SettingsDep, token: TokenDep, body: NodeRegister, response: Response
) -> NodeRegistered:
    """Register a node (201) or update it (200, needs its token); idempotent with a token.

    Credentials: send a secret of your own as `Authorization: Bearer <secret>` on the first
    register (at least 32 URL-safe characters, e.g. `secrets.token_urlsafe(32)`; 422 when
    weaker, 409 when another node holds it) and keep it: the same node and secret again is
    200 with `created: false`, so a retry after a lost answer is harmless. Without one the
    registry generates a token and returns it once, in `token`. Re-registering a known node
    needs its token (401 without, 403 with another); an admin can set a new one with
    `POST /nodes/{node_id}/token`. 409 when `model_signature` is not its domain's."""
    signature = snapshots.parse_declaration(
        body.model_signature, max_model_bytes=settings.max_model_bytes
    )
    with db.write() as session:
        node, new_token, created = crud.register_node(session, body=body, token=token)
        if signature is not None:
            snapshots.check_declaration(session, domain=body.domain, signature=signature)
        out = NodeRegistered(node=NodePublic.model_validate(node), token=new_token, created=created)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return out


@router.post(
    "/{node_id}/token",
    response_model=NodeToken,
    dependencies=[AdminDep],
    responses={401: {}, 403: {}, 404: {}, 409: {}},
)
def rotate_token(
    db: DatabaseDep, node_id: NodeIdPath, body: TokenRotate | None = None
) -> NodeToken:
    """Admin only: give a node a new credential (its old token stops working at once).

    Body `{"token": "<secret>"}` sets a secret of the node's choosing (at least 32 URL-safe
    characters; 422 when weaker); an empty body has the registry generate one and return it
    once in `token`. The recovery for a node that lost its credential file. 401 without the
    admin token, 403 with another token (a node's), 404 for an unknown node; recorded as a
    `token_rotated` event."""
    with db.write() as session:
        generated = crud.rotate_token(
            session, node_id=node_id, token=body.token if body is not None else None
        )
    return NodeToken(node_id=node_id, token=generated)


# Heartbeats are the registry's hottest path (every node, every interval). They are
# served by `heartbeat_fast`, a plain Starlette route placed first in the route table:
# FastAPI's per-request machinery (handler rebuild, dependency solving, content-type
# parsing) cost several times the work itself (bench/registry_throughput.py). FastAPI
# documents only its own routes, so `document_fast_routes` adds this one to the schema.
HEARTBEAT_PATH = "/nodes/{node_id}/heartbeat"
_NODE_ID = re.compile(NODE_ID_PATTERN)


async def _beat(
    request: Request, token: str | None, node_id: str, metrics: dict[str, float]
) -> Response:
    """Queue the beat for the group-commit writer; answer after the commit that stored it."""
    db: Database = request.app.state.db
    writer: GroupCommit[crud.HeartbeatIn, NodePublic] = db.group_commit("heartbeat", _heartbeats)
    node = await writer.submit(crud.HeartbeatIn(token=token, node_id=node_id, metrics=metrics))
    return Response(node.model_dump_json(), media_type="application/json")


def _heartbeats(
    session: Session, beats: Sequence[crud.HeartbeatIn]
) -> list[NodePublic | RegistryError]:
    """`crud.heartbeat`, marked as leaving GET /groups as it was (registry.readcache)."""
    session.info[HEARTBEATS_ONLY] = True
    return crud.heartbeat(session, beats=beats)


async def heartbeat_fast(request: Request) -> Response:
    """Liveness plus the node's own latest metrics; only the node itself may send it."""
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
    return await _beat(request, request_token(request), node_id, metrics)


FAST_ROUTES = [Route(HEARTBEAT_PATH, heartbeat_fast, methods=["POST"])]


def _heartbeat_operation(body: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI operation of `heartbeat_fast`, given the `$ref`s of its body and answer."""
    return {
        "tags": list(router.tags),
        "summary": "Heartbeat",
        "description": inspect.getdoc(heartbeat_fast),
        # The id FastAPI derived when it served this route; generated clients name calls by it.
        "operationId": "heartbeat_nodes__node_id__heartbeat_post",
        "security": [{BEARER.scheme_name: []}],
        "parameters": [
            {
                "name": "node_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": NODE_ID_PATTERN, "title": "Node Id"},
            }
        ],
        # Optional: an empty body is a beat without metrics.
        "requestBody": {
            "content": {
                "application/json": {"schema": {"anyOf": [body, {"type": "null"}], "title": "Body"}}
            }
        },
        "responses": {
            "200": {
                "description": "Successful Response",
                "content": {"application/json": {"schema": node}},
            },
            "401": {"description": "Unauthorized"},
            "403": {"description": "Forbidden"},
            "422": {
                "description": "Validation Error",
                "content": {
                    "application/json": {
                        "schema": {"$ref": REF_TEMPLATE.format(model="HTTPValidationError")}
                    }
                },
            },
        },
    }


def document_fast_routes(openapi: dict[str, Any]) -> None:
    """Add `FAST_ROUTES`, which FastAPI cannot see, to the OpenAPI document it built.

    Adds the heartbeat's path item right after /nodes/register (the order of this module,
    hence of /docs), and the schemas and security scheme it names that are not there yet.
    """
    refs, defs = models_json_schema(
        [(Heartbeat, "validation"), (NodePublic, "serialization")], ref_template=REF_TEMPLATE
    )
    components = openapi.setdefault("components", {})
    schemas = {
        **defs.get("$defs", {}),
        "ValidationError": validation_error_definition,
        "HTTPValidationError": validation_error_response_definition,
        **components.get("schemas", {}),
    }
    components["schemas"] = dict(sorted(schemas.items()))
    components.setdefault("securitySchemes", {}).setdefault(
        BEARER.scheme_name, BEARER.model.model_dump(mode="json", by_alias=True, exclude_none=True)
    )
    operation = _heartbeat_operation(
        refs[(Heartbeat, "validation")], refs[(NodePublic, "serialization")]
    )
    paths: dict[str, Any] = {}
    for path, item in openapi.get("paths", {}).items():
        paths[path] = item
        if path == f"{router.prefix}/register":
            paths[HEARTBEAT_PATH] = {"post": operation}
    paths.setdefault(HEARTBEAT_PATH, {"post": operation})
    openapi["paths"] = paths


@router.get("", response_model=NodesPublic, responses=reads.READ_RESPONSES)
async def list_nodes(
    request: Request,
    page: PageDep,
    domain: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[str | None, Query(pattern="^(active|inactive)$")] = None,
    group_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    if_none_match: reads.IfNoneMatchHeader = None,
) -> Response:
    """Nodes with status, group and last heartbeat; filter by domain, status or group.
    Tagged with an `ETag`; 304 when `If-None-Match` names the current answer."""
    return await reads.list_nodes(request)


@router.get("/{node_id}", response_model=NodePublic, responses={404: {}})
def get_node(db: DatabaseDep, node_id: NodeIdPath) -> NodePublic:
    """One node."""
    with db.read() as session:
        return NodePublic.model_validate(crud.get_node(session, node_id=node_id))
