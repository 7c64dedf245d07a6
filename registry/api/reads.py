"""The cached reads: GET /groups, /groups/{group_id} and /nodes, answered from memory.

Each answer is the JSON FastAPI would give (`TypeAdapter.dump_json` of the response
model, byte for byte), built once per change of the state it shows
(`registry.readcache`) and tagged with an `ETag`; `If-None-Match` with that tag gets
`304 Not Modified` and no body. `Cache-Control: no-cache` makes HTTP caches revalidate.
The handlers here run as plain Starlette routes ahead of FastAPI's routing (`FAST_ROUTES`,
as the heartbeat does); the FastAPI routes of the same paths call the same functions and
give /docs its description. The steady-state path (nothing changed) reads no database.

`GET /groups` with a node's bearer token lists that node's domain only; asking for
another domain is 403, an unknown token 401. Without a token (dashboard, viz) or with
the admin token it lists every domain, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Annotated, Any, TypeVar

from fastapi import Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from registry import crud
from registry.api.deps import is_admin_token, request_token
from registry.api.validation import invalid_response
from registry.db import Database
from registry.errors import AuthError, ForbiddenError, RegistryError
from registry.readcache import Answer, AnswerCache, ChangeWatcher, etag_matches, etag_of
from registry.schemas import GroupDetail, GroupsPublic, NodePublic, NodesPublic

__all__ = [
    "FAST_ROUTES",
    "READ_RESPONSES",
    "IfNoneMatchHeader",
    "ReadState",
    "get_group",
    "list_groups",
    "list_nodes",
]

MAX_ID = 2**31 - 1
MAX_CALLERS = 16384  # token lookups kept per worker; emptied when full

# Documented on the FastAPI routes of these paths (what /docs shows).
IfNoneMatchHeader = Annotated[
    str | None,
    Header(description="An ETag from an earlier answer: 304 with no body while it still holds."),
]
_ETAG_HEADER = {"description": "The answer's entity tag.", "schema": {"type": "string"}}
READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            "ETag": _ETAG_HEADER,
            "Cache-Control": {"description": "`no-cache`", "schema": {"type": "string"}},
        }
    },
    304: {
        "description": "Not Modified: the answer is still the one `If-None-Match` names",
        "headers": {"ETag": _ETAG_HEADER},
    },
}


class _Page(BaseModel):
    offset: Annotated[int, Field(ge=0, le=MAX_ID)] = 0
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class _GroupsQuery(_Page):
    domain: Annotated[str | None, Field(max_length=64)] = None
    include_archived: bool = False


class _NodesQuery(_Page):
    domain: Annotated[str | None, Field(max_length=64)] = None
    status: Annotated[str | None, Field(pattern="^(active|inactive)$")] = None
    group_id: Annotated[int | None, Field(ge=1, le=MAX_ID)] = None


class _GroupPath(BaseModel):
    group_id: Annotated[int, Field(ge=1, le=MAX_ID)]


_GROUPS = TypeAdapter(GroupsPublic)
_GROUP = TypeAdapter(GroupDetail)
_NODES = TypeAdapter(NodesPublic)
_Caller = tuple[str, str] | None  # (node id, domain), None for an unknown token


class ReadState:
    """One worker's cached answers, token lookups and change watcher, over `db`.

    `start()` starts the watcher (`registry.readcache.ChangeWatcher`, polling every
    `watch_interval_s` seconds), `stop()` ends it."""

    def __init__(self, db: Database, *, watch_interval_s: float | None = None) -> None:
        self.db = db
        self.answers = AnswerCache()
        self._callers: dict[str, tuple[int, _Caller]] = {}  # token digest -> caller
        kwargs = {} if watch_interval_s is None else {"interval_s": watch_interval_s}
        self.watcher = ChangeWatcher(db.engine, db.read_versions, **kwargs)

    def start(self) -> ReadState:
        """Start watching for other workers' writes."""
        self.watcher.start()
        return self

    def stop(self) -> None:
        """Stop the watcher."""
        self.watcher.stop()

    async def answer(
        self, key: Hashable, version: Callable[[], int], build: Callable[[Database], Answer]
    ) -> Answer:
        """The cached answer for `key`, built in the threadpool when stale."""
        found = self.answers.lookup(key, version())
        if found is not None:
            return found
        return await run_in_threadpool(
            self.answers.get_or_build, key, version, lambda: build(self.db)
        )

    async def caller(self, token: str) -> tuple[str, str]:
        """(node id, domain) of the node holding `token`; AuthError when none does.

        Cached by the token's SHA-256 while the registry's state is unchanged (a token
        rotation or a re-register changes it), so a known caller costs no query."""
        digest = crud.hash_token(token)
        version = self.db.read_versions.state
        entry = self._callers.get(digest)
        if entry is None or entry[0] != version:
            entry = (version, await run_in_threadpool(self._lookup, token))
            if len(self._callers) >= MAX_CALLERS:
                self._callers.clear()
            self._callers[digest] = entry
        if entry[1] is None:
            raise AuthError(crud.INVALID_TOKEN)
        return entry[1]

    def _lookup(self, token: str) -> _Caller:
        with self.db.read() as session:
            try:
                node = crud.authenticate(session, token=token)
            except AuthError:
                return None
            return node.id, node.domain


def _state(request: Request) -> ReadState:
    reads: ReadState = request.app.state.reads
    return reads


def _send(request: Request, answer: Answer, *, vary_on_token: bool = False) -> Response:
    """The answer, or 304 when the request's If-None-Match already names it."""
    if answer.etag is None:
        return Response(answer.body, status_code=answer.status, media_type="application/json")
    headers = {"ETag": answer.etag, "Cache-Control": "no-cache"}
    if vary_on_token:
        headers["Vary"] = "Authorization"
    if etag_matches(request.headers.get("if-none-match"), answer.etag):
        return Response(status_code=304, headers=headers)
    return Response(
        answer.body, status_code=answer.status, media_type="application/json", headers=headers
    )


def _ok(body: bytes) -> Answer:
    return Answer(200, body, etag_of(body))


def _error(exc: RegistryError) -> Answer:
    body = JSONResponse({"detail": exc.reason}).body
    return Answer(exc.status, bytes(body), None)


Q = TypeVar("Q", bound=BaseModel)


def _query(model: type[Q], request: Request) -> Q | Response:
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        return invalid_response(exc.errors(include_url=False), loc_prefix=("query",))


async def list_groups(request: Request) -> Response:
    """Groups with member count, capacity, performance and round; filter by domain.

    A node's bearer token limits the list to the node's domain (403 for another
    `domain`, 401 for an unknown token); without one, or with the admin token, every
    domain is listed. 304 when `If-None-Match` names the current answer."""
    query = _query(_GroupsQuery, request)
    if isinstance(query, Response):
        return query
    reads = _state(request)
    domain = query.domain
    token = request_token(request)
    if token is not None and not is_admin_token(request, token):
        node_id, own = await reads.caller(token)
        if domain is None:
            domain = own
        elif domain != own:
            raise ForbiddenError(
                f"node '{node_id}' is of domain '{own}': it may not list domain '{domain}'"
            )

    def build(db: Database) -> Answer:
        with db.read() as session:
            rows, total = crud.list_groups(
                session,
                domain=domain,
                include_archived=query.include_archived,
                offset=query.offset,
                limit=query.limit,
            )
            return _ok(_GROUPS.dump_json(GroupsPublic(data=rows, count=total), by_alias=True))

    key = ("groups", domain, query.include_archived, query.offset, query.limit)
    versions = reads.db.read_versions
    answer = await reads.answer(key, lambda: versions.state, build)
    return _send(request, answer, vary_on_token=True)


async def get_group(request: Request) -> Response:
    """One group with its members; 304 when `If-None-Match` names the current answer."""
    try:
        group_id = _GroupPath.model_validate(request.path_params).group_id
    except ValidationError as exc:
        return invalid_response(exc.errors(include_url=False), loc_prefix=("path",))

    def build(db: Database) -> Answer:
        with db.read() as session:
            try:
                group, members = crud.get_group(session, group_id=group_id)
            except RegistryError as exc:
                return _error(exc)
            public = crud.group_public(group, len(members))
            detail = GroupDetail(
                **public.model_dump(), members=[NodePublic.model_validate(m) for m in members]
            )
            return _ok(_GROUP.dump_json(detail, by_alias=True))

    versions = _state(request).db.read_versions
    answer = await _state(request).answer(("group", group_id), lambda: versions.nodes, build)
    return _send(request, answer)


async def list_nodes(request: Request) -> Response:
    """Nodes with status, group and last heartbeat; filter by domain, status or group.
    304 when `If-None-Match` names the current answer."""
    query = _query(_NodesQuery, request)
    if isinstance(query, Response):
        return query

    def build(db: Database) -> Answer:
        with db.read() as session:
            rows, total = crud.list_nodes(
                session,
                domain=query.domain,
                status=query.status,
                group_id=query.group_id,
                offset=query.offset,
                limit=query.limit,
            )
            page = NodesPublic(data=[NodePublic.model_validate(n) for n in rows], count=total)
            return _ok(_NODES.dump_json(page, by_alias=True))

    key = ("nodes", query.domain, query.status, query.group_id, query.offset, query.limit)
    versions = _state(request).db.read_versions
    answer = await _state(request).answer(key, lambda: versions.nodes, build)
    return _send(request, answer)


# Placed ahead of FastAPI's routes by create_app; FastAPI's routes of the same paths
# (registry.api.routes.groups/nodes) describe them in the OpenAPI document.
FAST_ROUTES = [
    Route("/groups", list_groups, methods=["GET"]),
    Route("/groups/{group_id}", get_group, methods=["GET"]),
    Route("/nodes", list_nodes, methods=["GET"]),
]
