"""Routes for events: a pageable log and a live Server-Sent Events stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from registry import crud
from registry.api.deps import BusDep, DatabaseDep
from registry.schemas import EventPublic, EventsPublic

router = APIRouter(prefix="/events", tags=["events"])

AfterId = Annotated[int, Query(ge=0, le=2**62, description="Only events with a larger id.")]
TypeFilter = Annotated[str | None, Query(max_length=32)]
NodeFilter = Annotated[str | None, Query(max_length=128)]
GroupFilter = Annotated[int | None, Query(ge=1, le=2**31 - 1)]

# Streams wake on local commits at once and poll for other workers' events this often.
POLL_SECONDS = 1.0
BATCH = 500


@router.get("", response_model=EventsPublic)
def list_events(
    db: DatabaseDep,
    after_id: AfterId = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    type: TypeFilter = None,
    node_id: NodeFilter = None,
    group_id: GroupFilter = None,
    before: Annotated[
        int | None,
        Query(ge=1, le=2**62, description="Only events with a smaller id, the newest of them."),
    ] = None,
    latest: Annotated[
        bool, Query(description="The newest `limit` events (as `before` past the last id).")
    ] = False,
) -> EventsPublic:
    """State changes, oldest first: the first `limit` after `after_id` (continue from
    `last_id`), or with `before`/`latest` the newest `limit` below it (page back from the
    first one's id). Old events are pruned by the registry's retention settings."""
    with db.read() as session:
        rows = crud.list_events(
            session,
            after_id=after_id,
            limit=limit,
            type_=type,
            node_id=node_id,
            group_id=group_id,
            before=before,
            newest=latest or before is not None,
        )
        data = [EventPublic.model_validate(e) for e in rows]
    return EventsPublic(data=data, last_id=data[-1].id if data else after_id)


@router.get(
    "/stream",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "SSE stream."}},
)
async def stream_events(
    request: Request,
    db: DatabaseDep,
    bus: BusDep,
    after_id: AfterId = 0,
    type: TypeFilter = None,
    node_id: NodeFilter = None,
    group_id: GroupFilter = None,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> EventSourceResponse:
    """Live events as Server-Sent Events; resumes after `after_id` or the Last-Event-ID header."""
    start = after_id
    if last_event_id and last_event_id.isdigit():
        start = max(start, int(last_event_id))

    def fetch(after: int) -> list[EventPublic]:
        with db.read() as session:
            rows = crud.list_events(
                session, after_id=after, limit=BATCH, type_=type, node_id=node_id, group_id=group_id
            )
            return [EventPublic.model_validate(e) for e in rows]

    async def gen() -> AsyncIterator[ServerSentEvent]:
        cursor = start
        while not request.app.state.shutting_down:
            batch = await run_in_threadpool(fetch, cursor)
            for ev in batch:
                cursor = ev.id
                yield ServerSentEvent(
                    data=json.dumps(ev.model_dump(mode="json")), event=ev.type, id=str(ev.id)
                )
            if len(batch) < BATCH:
                if await request.is_disconnected():
                    return
                await bus.wait(POLL_SECONDS)
            else:
                await asyncio.sleep(0)

    return EventSourceResponse(gen(), ping=15)
