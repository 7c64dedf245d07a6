"""Builds the registry app: `create_app(settings)`."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.models import OpenAPI
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.api import reads
from registry.api.routes import (
    dashboard,
    domains,
    events,
    groups,
    health,
    ledger,
    links,
    metrics,
    models,
    nodes,
)
from registry.api.routes import simulations as simulation_routes
from registry.api.validation import invalid_response
from registry.cli import LOG_FORMAT, LOG_LEVEL_ENV
from registry.credentials import load_or_create_admin_token
from registry.db import Database
from registry.errors import RegistryError
from registry.events import EventBus
from registry.leader import background_jobs
from registry.metrics import MetricsMiddleware, mark_worker_exited
from registry.migrate import upgrade
from registry.ratelimit import RateLimitMiddleware, document_rate_limits, parse_limits
from registry.settings import RegistrySettings, build_settings
from registry.simulations import SimulationManager
from registry.storage import ModelStore

__all__ = ["create_app", "create_app_from_env"]

log = logging.getLogger(__name__)

DESCRIPTION = """The lookup table of a Mycelium network: groups, nodes, performance, models.

Calls that change a node's or a group's state need the node's bearer token: a secret the
node chose and sent with its first `POST /nodes/register`, or the one that call generated
and returned once. An admin can issue a new one (`POST /nodes/{node_id}/token`).
"""


class BodyLimitMiddleware:
    """413 for JSON bodies over the limit (model uploads have their own, larger limit)."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].endswith("/model"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                resp = JSONResponse(
                    {"detail": f"request body exceeds {self.limit} bytes"}, status_code=413
                )
                await resp(scope, receive, send)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, f"request body exceeds {self.limit} bytes")
            return message

        await self.app(scope, counting_receive, send)


class RegistryApp(FastAPI):
    """FastAPI whose OpenAPI document also lists the fast routes, which it cannot see."""

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document of /openapi.json and /docs, built once."""
        if self.openapi_schema is None:
            schema = super().openapi()
            nodes.document_fast_routes(schema)
            document_rate_limits(schema)
            # Checked against the OpenAPI model and serialised as FastAPI does its own part.
            self.openapi_schema = jsonable_encoder(
                OpenAPI(**schema), by_alias=True, exclude_none=True
            )
        return self.openapi_schema


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid_response(exc.errors())

    @app.exception_handler(RegistryError)
    async def _registry_error(_: Request, exc: RegistryError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.reason}, status_code=exc.status, headers=headers)

    @app.exception_handler(IntegrityError)
    async def _integrity(_: Request, exc: IntegrityError) -> JSONResponse:
        log.info("integrity conflict: %s", exc.orig)
        return JSONResponse(
            {"detail": "conflicting concurrent change; retry the request"}, status_code=409
        )

    @app.exception_handler(OperationalError)
    async def _operational(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc.orig)
        return JSONResponse(
            {"detail": "database busy or unavailable; retry shortly"},
            status_code=503,
            headers={"Retry-After": "1"},
        )


def create_app(settings: RegistrySettings | None = None) -> FastAPI:
    """The registry ASGI app; migrates the database on start unless told not to."""
    settings = settings or build_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if settings.auto_migrate:
            upgrade(settings.effective_database_url)
        db = Database(settings.effective_database_url)
        bus = EventBus()
        db.on_events_committed = bus.notify
        app.state.db = db
        app.state.bus = bus
        app.state.store = ModelStore(settings.models_dir)
        app.state.reads = reads.ReadState(db).start()
        app.state.shutting_down = False
        app.state.admin_token = settings.admin_token
        if app.state.admin_token is None:  # every worker reads the same file
            app.state.admin_token = load_or_create_admin_token(settings.admin_token_path)
            log.info(
                "admin token: in %s (set MYCELIUM_REGISTRY_ADMIN_TOKEN to choose one)",
                settings.admin_token_path,
            )
        app.state.simulations = manager = SimulationManager(db, settings)
        leadership = background_jobs(db, settings, manager)
        leadership.start()
        log.info("registry ready: database %s", db.engine.url.render_as_string(hide_password=True))
        try:
            yield
        finally:
            app.state.shutting_down = True
            bus.notify()
            leadership.stop()
            manager.shutdown()
            app.state.reads.stop()
            db.dispose()
            mark_worker_exited()

    app = RegistryApp(
        title="Mycelium Net registry",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_request_bytes)
    # Added last, so it runs first: a refused write costs no body read.
    app.add_middleware(
        RateLimitMiddleware,
        per_token=parse_limits(settings.rate_limit_per_token),
        per_address=parse_limits(settings.rate_limit_per_address),
    )
    app.add_middleware(MetricsMiddleware)  # outermost: refusals are counted too
    _error_handlers(app)
    for module in (
        groups,
        models,
        domains,
        nodes,
        events,
        health,
        ledger,
        links,
        metrics,
        simulation_routes,
        dashboard,
    ):
        app.include_router(module.router)
    # Hot paths served ahead of FastAPI's routing (documented by RegistryApp.openapi).
    app.router.routes[0:0] = [*nodes.FAST_ROUTES, *groups.FAST_ROUTES, *reads.FAST_ROUTES]
    app.mount("/static", StaticFiles(directory=dashboard.STATIC_DIR), name="static")
    return app


# A registry process keeps its imports, routes and pools for life; a full collection walked
# them all and stalled every request in flight (measured: heartbeat p99 at half load fell
# from ~70-115 ms to ~20-60 ms with collection off, on a loaded 2-core machine).
GC_THRESHOLDS = (10_000, 20, 20)


def tune_gc() -> None:
    """Exempt what exists now from garbage collection (``gc.freeze``) and collect the young
    generation less often: fewer and shorter pauses for a long-running server process."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def create_app_from_env(**_: Any) -> FastAPI:
    """App factory for uvicorn workers: settings come from MYCELIUM_REGISTRY_* variables;
    the worker's garbage collector is tuned for a server (``tune_gc``)."""
    level = os.environ.get(LOG_LEVEL_ENV)
    if level and not logging.getLogger().handlers:  # a spawned worker: log like the CLI
        logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    app = create_app(build_settings())
    tune_gc()
    return app
