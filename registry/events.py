"""Event types, recording, and a thread-safe wake-up for live streams."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from registry.db import EVENTS_PENDING
from registry.models import Event, Group, Node

__all__ = [
    "BULK_RECORDED",
    "EVENT_TYPES",
    "EventBus",
    "EventType",
    "event_domain",
    "record_event",
    "record_events",
]


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
    SIBLINGS_UPDATED = "siblings_updated"
    GROUPS_MERGED = "groups_merged"
    GROUP_SPLIT = "group_split"
    REWARD = "reward"
    MEMBER_FLAGGED = "member_flagged"
    MEMBER_QUARANTINED = "member_quarantined"
    SIMULATION_STARTED = "simulation_started"
    SIMULATION_FINISHED = "simulation_finished"


# Every event type's name, for checking a client's filter.
EVENT_TYPES = frozenset(v for k, v in vars(EventType).items() if k.isupper())


def record_event(
    session: Session,
    type_: str,
    *,
    node_id: str | None = None,
    group_id: int | None = None,
    **data: Any,
) -> None:
    """Add an event to the current transaction (it appears when that commits), with its
    domain (``event_domain``) so streams can filter by it."""
    domain = data.get("domain")
    if not isinstance(domain, str):
        domain = event_domain(session, node_id=node_id, group_id=group_id)
    session.add(Event(type=type_, node_id=node_id, group_id=group_id, domain=domain, data=data))
    session.info[EVENTS_PENDING] = True


# session.info key: (type, data) of the events `record_events` inserted in this transaction,
# which ORM hooks cannot see (registry.metrics counts them at commit).
BULK_RECORDED = "mycelium_bulk_events"


def record_events(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert many events in one statement (hot paths such as batched joins).

    Each row is ``{"type", "node_id", "group_id", "domain", "data"}``; the caller knows the
    domain (``event_domain`` would cost a query per row). Like ``record_event``, they appear
    when the transaction commits.
    """
    if not rows:
        return
    session.execute(insert(cast(Table, Event.__table__)), rows)
    session.info[EVENTS_PENDING] = True
    session.info.setdefault(BULK_RECORDED, []).extend((r["type"], r["data"]) for r in rows)


def event_domain(session: Session, *, node_id: str | None, group_id: int | None) -> str | None:
    """The domain an event belongs to: its group's, else its node's, else None (events of
    neither, such as simulations'). Objects the transaction already holds cost no query;
    others one primary-key SELECT."""
    with session.no_autoflush:
        if group_id is not None:
            group = session.get(Group, group_id)
            if group is not None:
                return group.domain
        if node_id is not None:
            node = session.get(Node, node_id)
            if node is not None:
                return node.domain
    return None


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

    def listen(self) -> asyncio.Event:
        """An event of the running loop that every ``notify`` sets until ``unlisten``;
        the listener clears it, so no notification between two waits is lost."""
        ev = asyncio.Event()
        with self._lock:
            self._waiters.add((asyncio.get_running_loop(), ev))
        return ev

    def unlisten(self, ev: asyncio.Event) -> None:
        """Stop setting ``ev`` (from ``listen``)."""
        with self._lock:
            self._waiters = {w for w in self._waiters if w[1] is not ev}

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
