"""Prometheus metrics (`GET /metrics`): open by default, as Prometheus expects."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool

from registry.api.deps import SettingsDep, TokenDep
from registry.errors import AuthError, ForbiddenError
from registry.metrics import CONTENT_TYPE_LATEST, DatabaseCollector, exposition

router = APIRouter(tags=["metrics"])


def database_registry(request: Request) -> CollectorRegistry:
    """The app's registry of scrape-time database gauges, made on first use."""
    state = request.app.state
    found: CollectorRegistry | None = getattr(state, "metrics_database", None)
    if found is None:
        found = CollectorRegistry(auto_describe=False)
        found.register(DatabaseCollector(lambda: state.db))
        state.metrics_database = found
    return found


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."},
        401: {"description": "A metrics token is set and none was given."},
        403: {"description": "A metrics token is set and another was given."},
    },
)
async def metrics(request: Request, settings: SettingsDep, token: TokenDep) -> Response:
    """Request counts and latencies per route, nodes by status, groups, joins, migrations,
    snapshot bytes, rejected inputs, ledger payouts (needs the metrics token if one is set)."""
    expected = settings.metrics_token
    if expected is not None:
        if not token:
            raise AuthError("this registry's metrics need its metrics token (Bearer)")
        if not secrets.compare_digest(token.encode(), expected.encode()):
            raise ForbiddenError("only the metrics token may read the metrics")
    body = await run_in_threadpool(exposition, database_registry(request))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
