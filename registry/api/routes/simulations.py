"""Routes for simulations: start one (admin), list and show records, stream a run's log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Path, Request, status
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from registry import simulations
from registry.api.deps import AdminDep, DatabaseDep, PageDep, SettingsDep
from registry.schemas import SimulationCreate, SimulationPublic, SimulationsPublic
from registry.simulations import FINAL, SimulationManager

router = APIRouter(prefix="/simulations", tags=["simulations"])

SimIdPath = Annotated[int, Path(ge=1, le=2**31 - 1)]
POLL_SECONDS = 1.0
BATCH = 500


def _manager(request: Request) -> SimulationManager:
    manager: SimulationManager = request.app.state.simulations
    return manager


@router.post(
    "",
    response_model=SimulationPublic,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[AdminDep],
    responses={401: {}, 403: {}, 429: {}},
)
async def start_simulation(
    request: Request, settings: SettingsDep, body: SimulationCreate
) -> SimulationPublic:
    """Start a simulation against this registry (admin token); 429 when enough are running."""
    url = settings.public_url or str(request.base_url)
    return await run_in_threadpool(_manager(request).start, body, url.rstrip("/"))


@router.get("", response_model=SimulationsPublic)
def list_simulations(db: DatabaseDep, page: PageDep) -> SimulationsPublic:
    """Simulation records, newest first (parameters, status, times, final metrics)."""
    with db.read() as session:
        rows, total = simulations.list_simulations(session, offset=page.offset, limit=page.limit)
        data = [
            SimulationPublic.model_validate(r).model_copy(update={"summary": None}) for r in rows
        ]
    return SimulationsPublic(data=data, count=total)


@router.get("/{sim_id}", response_model=SimulationPublic, responses={404: {}})
def get_simulation(db: DatabaseDep, sim_id: SimIdPath) -> SimulationPublic:
    """One simulation record with its summary."""
    with db.read() as session:
        return SimulationPublic.model_validate(simulations.get_simulation(session, sim_id=sim_id))


@router.get(
    "/{sim_id}/stream",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "SSE stream."},
        404: {},
    },
)
async def stream_simulation(
    request: Request,
    db: DatabaseDep,
    sim_id: SimIdPath,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> EventSourceResponse:
    """The run's log as Server-Sent Events (`log`), from the start, then live; `end` with
    the record when it has finished."""

    def record() -> SimulationPublic:
        with db.read() as session:
            return SimulationPublic.model_validate(
                simulations.get_simulation(session, sim_id=sim_id)
            )

    def fetch(after: int) -> tuple[str, list[tuple[int, str]]]:
        with db.read() as session:
            # Status first: lines are all written before a final status is.
            state = simulations.get_simulation(session, sim_id=sim_id).status
            rows = simulations.log_lines(session, sim_id=sim_id, after_id=after, limit=BATCH)
            return state, [(r.id, r.line) for r in rows]

    await run_in_threadpool(record)  # 404 before the stream starts
    manager = _manager(request)
    start = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0

    async def gen() -> AsyncIterator[ServerSentEvent]:
        cursor = start
        while not request.app.state.shutting_down:
            state, batch = await run_in_threadpool(fetch, cursor)
            for line_id, line in batch:
                cursor = line_id
                yield ServerSentEvent(data=line, event="log", id=str(line_id))
            if len(batch) < BATCH:
                if state in FINAL:
                    final = await run_in_threadpool(record)
                    payload = final.model_dump(mode="json", exclude={"summary"})
                    yield ServerSentEvent(data=json.dumps(payload), event="end")
                    return
                if await request.is_disconnected():
                    return
                await manager.logs.wait(POLL_SECONDS)
            else:
                await asyncio.sleep(0)

    return EventSourceResponse(gen(), ping=15)
