"""Routes for events: a pageable log and a live Server-Sent Events stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from registry import crud
from registry.api.deps import BusDep, DatabaseDep
from registry.events import EVENT_TYPES
from registry.feed import EventFeed, EventFilter, FedEvent
from registry.schemas import EventPublic, EventsPublic

router = APIRouter(prefix="/events", tags=["events"])

AfterId = Annotated[int, Query(ge=0, le=2**62, description="Only events with a larger id.")]
TypeFilter = Annotated[str | None, Query(max_length=32)]
TypesFilter = Annotated[
    str | None,
    Query(max_length=1024, description="Comma-separated event types; any of them passes."),
]
DomainFilter = Annotated[
    str | None, Query(max_length=64, description="Only events of this domain's nodes and groups.")
]
NodeFilter = Annotated[str | None, Query(max_length=128)]
GroupFilter = Annotated[int | None, Query(ge=1, le=2**31 - 1)]

# Streams wake on local commits at once and poll for other workers' events this often.
POLL_SECONDS = 1.0
BATCH = 500


def parse_types(raw: str | None, *, param: str = "types") -> frozenset[str] | None:
    """The event types of a comma-separated ``types=`` (or the one of ``type=``; None when
    not given). Raises RequestValidationError (a 422) naming each type the registry does
    not know."""
    if raw is None:
        return None
    types = frozenset(t.strip() for t in raw.split(",") if t.strip())
    unknown = sorted(types - EVENT_TYPES)
    if unknown or not types:
        msg = (
            f"unknown event type(s) {', '.join(map(repr, unknown))}"
            if unknown
            else "no event type given"
        )
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", param),
                    "msg": f"{msg}; known: {', '.join(sorted(EVENT_TYPES))}",
                    "input": raw,
                }
            ]
        )
    return types


def event_feed(request: Request, db: DatabaseDep, bus: BusDep) -> EventFeed:
    """This worker's shared event feed, made at the first stream."""
    state = request.app.state
    feed: EventFeed | None = getattr(state, "event_feed", None)
    if feed is None:
        feed = state.event_feed = EventFeed(
            db, bus, stopping=lambda: bool(state.shutting_down), batch=BATCH, poll_s=POLL_SECONDS
        )
    return feed


@router.get("", response_model=EventsPublic)
def list_events(
    db: DatabaseDep,
    after_id: AfterId = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    type: TypeFilter = None,
    types: TypesFilter = None,
    domain: DomainFilter = None,
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
    first one's id). Filters narrow: `type`, `types` (comma-separated), `domain`,
    `node_id`, `group_id`. Old events are pruned by the registry's retention settings."""
    wanted = parse_types(types)
    parse_types(type, param="type")
    with db.read() as session:
        rows = crud.list_events(
            session,
            after_id=after_id,
            limit=limit,
            type_=type,
            types=wanted,
            domain=domain,
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
    types: TypesFilter = None,
    domain: DomainFilter = None,
    node_id: NodeFilter = None,
    group_id: GroupFilter = None,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> EventSourceResponse:
    """Live events as Server-Sent Events; resumes after `after_id` or the Last-Event-ID
    header. Filters as for GET /events (`types` comma-separated, `domain`)."""
    wanted = parse_types(types)
    parse_types(type, param="type")
    if type is not None:
        wanted = wanted & {type} if wanted is not None else frozenset({type})
    keep = EventFilter(types=wanted, domain=domain, node_id=node_id, group_id=group_id)
    feed = event_feed(request, db, bus)
    start = after_id
    if last_event_id and last_event_id.isdigit():
        start = max(start, int(last_event_id))

    def fetch(after: int) -> list[FedEvent]:
        with db.read() as session:
            rows = crud.list_events(
                session,
                after_id=after,
                limit=BATCH,
                types=keep.types,
                domain=domain,
                node_id=node_id,
                group_id=group_id,
            )
            return [FedEvent.of(EventPublic.model_validate(e)) for e in rows]

    def sse(item: FedEvent) -> ServerSentEvent:
        return ServerSentEvent(data=item.json, event=item.event.type, id=str(item.event.id))

    async def gen() -> AsyncIterator[ServerSentEvent]:
        cursor = start
        async with feed.subscription():
            while not request.app.state.shutting_down:
                if cursor < feed.floor:  # older than the feed holds: catch up on our own
                    head = feed.head
                    batch = await run_in_threadpool(fetch, cursor)
                    for item in batch:
                        cursor = item.event.id
                        yield sse(item)
                    if len(batch) < BATCH:
                        cursor = max(cursor, head)
                    await asyncio.sleep(0)
                    continue
                changed, head, items = feed.changed, feed.head, feed.after(cursor)
                for item in items:
                    if keep.matches(item.event):
                        yield sse(item)
                cursor = max(cursor, head)
                if await request.is_disconnected():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), POLL_SECONDS)

    return EventSourceResponse(gen(), ping=15)
