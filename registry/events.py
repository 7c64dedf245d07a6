"""Event types, recording, and a thread-safe wake-up for live streams."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from sqlalchemy.orm import Session

from registry.db import EVENTS_PENDING
from registry.models import Event

__all__ = ["EventBus", "EventType", "record_event"]


class EventType:
    """Names of every event the registry records."""

    REGISTERED = "registered"
    UPDATED = "node_updated"
    REACTIVATED = "reactivated"
    TOKEN_ROTATED = "token_rotated"
    GROUP_CREATED = "group_created"
    JOINED = "joined"
    LEFT = "left"
    MIGRATED = "migrated"
    PERFORMANCE = "performance_reported"
    MODEL_UPLOADED = "model_uploaded"
    SNAPSHOT_REJECTED = "snapshot_rejected"
    SIGNATURE_LEARNED = "signature_learned"
    EXPIRED = "expired"
    GROUP_ARCHIVED = "group_archived"
    HOST_CLAIMED = "host_claimed"
    HOST_RELEASED = "host_released"
    REWARD = "reward"
    MEMBER_FLAGGED = "member_flagged"
    MEMBER_QUARANTINED = "member_quarantined"
    SIMULATION_STARTED = "simulation_started"
    SIMULATION_FINISHED = "simulation_finished"


def record_event(
    session: Session,
    type_: str,
    *,
    node_id: str | None = None,
    group_id: int | None = None,
    **data: Any,
) -> None:
    """Add an event to the current transaction (it appears when that commits)."""
    session.add(Event(type=type_, node_id=node_id, group_id=group_id, data=data))
    session.info[EVENTS_PENDING] = True


class EventBus:
    """Wakes SSE streams when events commit; streams also poll, for other workers' events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def notify(self) -> None:
        """Wake every waiting stream; safe to call from any thread."""
        with self._lock:
            waiters = list(self._waiters)
        for loop, ev in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(ev.set)

    async def wait(self, timeout: float) -> None:
        """Return when notified or after `timeout` seconds."""
        ev = asyncio.Event()
        key = (asyncio.get_running_loop(), ev)
        with self._lock:
            self._waiters.add(key)
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.discard(key)
