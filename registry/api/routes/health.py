"""Health check: the process answers and the database responds."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from registry.api.deps import DatabaseDep

router = APIRouter(tags=["health"])


@router.api_route(
    "/healthz", methods=["GET", "HEAD"], responses={503: {"description": "Database unreachable."}}
)
def healthz(db: DatabaseDep) -> JSONResponse:
    """200 when the registry and its database answer, 503 otherwise (HEAD too, for load
    balancers that check with it)."""
    try:
        with db.read() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:  # any database failure means unhealthy, with the reason
        return JSONResponse({"status": "unavailable", "reason": str(exc)[:200]}, status_code=503)
    return JSONResponse({"status": "ok", "database": "sqlite" if db.is_sqlite else "postgresql"})
