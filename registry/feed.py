"""One reader of new events per worker, fanned out to every open SSE stream.

Without it each stream queried the database on every wake-up: N streams, N queries per
commit. The feed's pump makes one unfiltered query per wake-up (a local commit, or every
``poll_s`` seconds for other workers' commits), keeps the newest ``keep`` events, each
serialised once, and wakes the streams, which filter in memory. A stream resuming from an
id older than the feed holds catches up with its own filtered queries first.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from registry import crud
from registry.db import Database
from registry.events import EventBus
from registry.models import Event
from registry.schemas import EventPublic

__all__ = ["EventFeed", "EventFilter", "FedEvent"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventFilter:
    """What one stream wants; None matches anything."""

    types: frozenset[str] | None = None
    domain: str | None = None
    node_id: str | None = None
    group_id: int | None = None

    def matches(self, event: EventPublic) -> bool:
        """Whether ``event`` passes every filter given."""
        return (
            (self.types is None or event.type in self.types)
            and (self.domain is None or event.domain == self.domain)
            and (self.node_id is None or event.node_id == self.node_id)
            and (self.group_id is None or event.group_id == self.group_id)
        )


@dataclass(frozen=True)
class FedEvent:
    """An event and its JSON, serialised once for every stream."""

    event: EventPublic
    json: str

    @classmethod
    def of(cls, event: EventPublic) -> FedEvent:
        """Wrap ``event`` with its JSON text."""
        return cls(event, json.dumps(event.model_dump(mode="json")))


class EventFeed:
    """The newest events of the database, read once per wake-up for all streams.

    The feed holds every event with ``floor < id <= head`` (ids as committed when read).
    A stream calls ``subscription()`` while open; the pump runs while anyone subscribes.
    """

    def __init__(
        self,
        db: Database,
        bus: EventBus,
        *,
        stopping: Callable[[], bool],
        keep: int = 2000,
        batch: int = 500,
        poll_s: float = 1.0,
    ) -> None:
        self._db, self._bus, self._stopping = db, bus, stopping
        self._keep, self._batch, self._poll_s = keep, batch, poll_s
        self.floor = 0
        self.head = 0
        self._ids: list[int] = []
        self._items: list[FedEvent] = []
        self._subscribers = 0
        self._task: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self.changed = asyncio.Event()  # replaced by a fresh one at each change

    # --- for streams -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def subscription(self) -> AsyncIterator[None]:
        """Count a stream as open, starting the pump (at the newest event) if it is not
        running."""
        self._subscribers += 1
        try:
            async with self._start_lock:
                if self._task is None or self._task.done():
                    self.floor = self.head = await run_in_threadpool(self._last_id)
                    self._ids, self._items = [], []
                    self.changed = asyncio.Event()
                    self._task = asyncio.create_task(self._pump(), name="event-feed")
            yield
        finally:
            self._subscribers -= 1

    def after(self, cursor: int) -> list[FedEvent]:
        """The held events with id > ``cursor`` (``cursor >= floor``), oldest first."""
        return self._items[bisect.bisect_right(self._ids, cursor) :]

    # --- the pump ----------------------------------------------------------------------

    def _last_id(self) -> int:
        with self._db.read() as session:
            rows = crud.list_events(session, after_id=0, limit=1, newest=True)
            return rows[-1].id if rows else 0

    def _fetch(self, after: int) -> list[FedEvent]:
        with self._db.read() as session:
            rows: Collection[Event] = crud.list_events(session, after_id=after, limit=self._batch)
            return [FedEvent.of(EventPublic.model_validate(e)) for e in rows]

    async def _pump(self) -> None:
        woken = self._bus.listen()
        try:
            while self._subscribers > 0 and not self._stopping():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), self._poll_s)
                woken.clear()  # a commit from here on wakes the next round
                if self._stopping():
                    break
                try:
                    await self._read_new()
                except Exception:  # the database busy or gone: streams wait, the pump retries
                    log.warning("event feed: reading new events failed", exc_info=True)
        finally:
            self._bus.unlisten(woken)
            self._wake_streams()

    async def _read_new(self) -> None:
        got = False
        while True:
            batch = await run_in_threadpool(self._fetch, self.head)
            if batch:
                got = True
                self._ids.extend(item.event.id for item in batch)
                self._items.extend(batch)
                self.head = batch[-1].event.id
            if len(batch) < self._batch:
                break
        if len(self._items) > 2 * self._keep:  # trim in steps, not on every event
            self.floor = self._ids[-self._keep - 1]
            self._ids, self._items = self._ids[-self._keep :], self._items[-self._keep :]
        if got:
            self._wake_streams()

    def _wake_streams(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()
