"""Prometheus metrics of the registry (prometheus-client), served at `GET /metrics`.

Three sources, each metric named ``mycelium_registry_*``:

- `MetricsMiddleware`: every HTTP request, by method, route *template* (never the raw
  path: ``/nodes/{node_id}/heartbeat``, ``<unmatched>`` for no route) and status;
  4xx answers again as rejected inputs by status class.
- Committed events (a SQLAlchemy ``after_commit`` hook on every session): joins,
  migrations, snapshot bytes uploaded, rejected snapshots, ledger payouts, every event
  type. Counted once, by the worker whose transaction committed them.
- `DatabaseCollector`, at scrape time from the database: nodes by status, groups by
  state, stored snapshot bytes. These are the same whichever worker answers.

With several workers (`mycelium registry --workers N`) the CLI gives every worker one
``PROMETHEUS_MULTIPROC_DIR``; prometheus-client then keeps each worker's values in files
there and a scrape, whichever worker takes it, sums them (`MultiProcessCollector`).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.db import Database
from registry.events import BULK_RECORDED, EventType
from registry.models import Event, Group, ModelSnapshot, Node

__all__ = [
    "CONTENT_TYPE_LATEST",
    "LEADER",
    "UNMATCHED",
    "DatabaseCollector",
    "MetricsMiddleware",
    "exposition",
    "mark_worker_exited",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "<unmatched>"
REJECTED_CLASSES = frozenset({401, 403, 404, 409, 413, 422, 429})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Heartbeats answer in about a millisecond; uploads and joins take longer.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "mycelium_registry_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "mycelium_registry_request_duration_seconds",
    "Seconds from request to the end of the response, by method and route template "
    "(a stream counts until it closes).",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
REJECTED = Counter(
    "mycelium_registry_rejected_inputs",
    "Requests refused, by reason: the 4xx status (401, 403, 404, 409, 413, 422, 429, "
    "other_4xx), and snapshot_rejected for uploads that did not decode or fit (those "
    "are also counted as 422).",
    ["reason"],
)
EVENTS = Counter("mycelium_registry_events", "Events committed, by type.", ["type"])
JOINS = Counter("mycelium_registry_joins", "Nodes that joined a group (migrations included).")
MIGRATIONS = Counter("mycelium_registry_migrations", "Nodes that moved from one group to another.")
SNAPSHOT_UPLOADED_BYTES = Counter(
    "mycelium_registry_snapshot_uploaded_bytes", "Bytes of model snapshots accepted."
)
PAYOUTS = Counter("mycelium_registry_ledger_payouts", "Ledger entries written (one per reward).")
PAID_TOKENS = Counter(
    "mycelium_registry_ledger_paid_tokens", "Tokens paid by positive ledger entries."
)
LEADER = Gauge(
    "mycelium_registry_leader",
    "1 in the worker that runs the sweeper and simulations; summed over live workers.",
    multiprocess_mode="livesum",
)

_PENDING = "mycelium_metrics_events"


def _collect_events(session: Session, _flush_context: Any) -> None:
    new = [(obj.type, obj.data) for obj in session.new if isinstance(obj, Event)]
    if new:
        session.info.setdefault(_PENDING, []).extend(new)


def _count_events(session: Session) -> None:
    added = [*session.info.pop(_PENDING, ()), *session.info.pop(BULK_RECORDED, ())]
    for type_, data in added:
        EVENTS.labels(type_).inc()
        if type_ in (EventType.JOINED, EventType.MIGRATED):
            JOINS.inc()
            if type_ == EventType.MIGRATED:
                MIGRATIONS.inc()
        elif type_ == EventType.MODEL_UPLOADED:
            size = (data or {}).get("size")
            if isinstance(size, int) and size > 0:
                SNAPSHOT_UPLOADED_BYTES.inc(size)
        elif type_ == EventType.SNAPSHOT_REJECTED:
            REJECTED.labels("snapshot_rejected").inc()
        elif type_ == EventType.REWARD:
            PAYOUTS.inc()
            amount = (data or {}).get("amount")
            if isinstance(amount, int | float) and math.isfinite(amount) and amount > 0:
                PAID_TOKENS.inc(amount)


def _forget_events(session: Session, *_: Any) -> None:
    session.info.pop(_PENDING, None)
    session.info.pop(BULK_RECORDED, None)


if not event.contains(Session, "after_commit", _count_events):
    event.listen(Session, "after_flush", _collect_events)
    event.listen(Session, "after_commit", _count_events)
    event.listen(Session, "after_soft_rollback", _forget_events)


class MetricsMiddleware:
    """Counts and times every HTTP request by route template; costs a few µs a request.

    Reads the route the router chose from the scope after the call (FastAPI puts the
    `APIRoute` in ``scope["route"]``; Starlette routes, such as the fast heartbeat, and
    mounts leave their endpoint in ``scope["endpoint"]``).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._paths: dict[Any, str] | None = None
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self._observe(scope, status, time.perf_counter() - started)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        method = scope["method"] if scope["method"] in METHODS else "OTHER"
        key = (method, self._template(scope), status)
        children = self._children.get(key)
        if children is None:
            reason = (
                (str(status) if status in REJECTED_CLASSES else "other_4xx")
                if 400 <= status < 500
                else None
            )
            children = self._children[key] = (
                REQUESTS.labels(method, key[1], str(status)),
                LATENCY.labels(method, key[1]),
                REJECTED.labels(reason) if reason else None,
            )
        children[0].inc()
        children[1].observe(seconds)
        if children[2] is not None:
            children[2].inc()

    def _template(self, scope: Scope) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return UNMATCHED
        if self._paths is None:
            self._paths = _route_paths(scope.get("app"))
        return self._paths.get(endpoint, UNMATCHED)


def _route_paths(app: Any) -> dict[Any, str]:
    """Endpoint (or mounted app) -> path template, for the routes of `app`."""
    paths: dict[Any, str] = {}
    for route in getattr(app, "routes", ()):
        if isinstance(route, Mount):
            paths[route.app] = route.path
        elif hasattr(route, "endpoint"):
            paths[route.endpoint] = route.path
    return paths


class DatabaseCollector(Collector):
    """Gauges read from the database at each scrape: nodes by status, groups by state,
    bytes of stored (not pruned) snapshots."""

    def __init__(self, database: Callable[[], Database]) -> None:
        self._database = database

    def collect(self) -> Iterator[Metric]:
        """Three small aggregate queries; database errors propagate (the scrape fails)."""
        with self._database().read() as session:
            by_status = dict(
                session.execute(select(Node.status, func.count()).group_by(Node.status)).all()
            )
            archived = Group.archived_at.is_not(None)
            groups = dict(session.execute(select(archived, func.count()).group_by(archived)).all())
            stored = session.scalar(
                select(func.coalesce(func.sum(ModelSnapshot.size), 0)).where(
                    ModelSnapshot.pruned.is_(False)
                )
            )
        nodes = GaugeMetricFamily(
            "mycelium_registry_nodes", "Registered nodes by status.", labels=["status"]
        )
        for status in sorted({"active", "inactive", *by_status}):
            nodes.add_metric([status], by_status.get(status, 0))
        yield nodes
        state = GaugeMetricFamily(
            "mycelium_registry_groups", "Groups by state (active, archived).", labels=["state"]
        )
        state.add_metric(["active"], groups.get(False, 0))
        state.add_metric(["archived"], groups.get(True, 0))
        yield state
        yield GaugeMetricFamily(
            "mycelium_registry_snapshot_stored_bytes",
            "Bytes of model snapshots kept on disk.",
            value=int(stored or 0),
        )


def _multiproc_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


_LIVE_FILE = re.compile(r"gauge_live\w*_(\d+)\.db")


def _reap_dead_workers(folder: Path) -> None:
    """Drop the live gauges of workers that died without exiting (SIGKILL)."""
    for entry in folder.iterdir():
        match = _LIVE_FILE.fullmatch(entry.name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, str(folder))
        except PermissionError:  # alive, someone else's
            pass


def exposition(database: CollectorRegistry) -> bytes:
    """The text format of every metric: this process's (or, in multiprocess mode, every
    worker's summed) and those of `database`, a registry holding a DatabaseCollector."""
    folder = _multiproc_dir()
    if folder is None:
        processes = REGISTRY
    else:
        _reap_dead_workers(folder)
        processes = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(processes, str(folder))
    return generate_latest(processes) + generate_latest(database)


def mark_worker_exited() -> None:
    """In multiprocess mode, drop this worker's live gauges (its counters still count)."""
    folder = _multiproc_dir()
    if folder is not None:
        multiprocess.mark_process_dead(os.getpid(), str(folder))
