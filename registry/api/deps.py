"""Injected dependencies: settings, database, sessions, the calling node."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from registry.db import Database
from registry.events import EventBus
from registry.settings import RegistrySettings
from registry.storage import ModelStore

__all__ = [
    "BEARER",
    "AdminDep",
    "BusDep",
    "DatabaseDep",
    "Page",
    "PageDep",
    "SettingsDep",
    "StoreDep",
    "TokenDep",
    "is_admin_token",
    "request_token",
]

# The one bearer scheme of /docs; the fast heartbeat route names it too.
BEARER = HTTPBearer(auto_error=False, description="The node's token from /nodes/register.")


async def get_settings(request: Request) -> RegistrySettings:
    """The app's settings."""
    settings: RegistrySettings = request.app.state.settings
    return settings


async def get_db(request: Request) -> Database:
    """The app's database."""
    db: Database = request.app.state.db
    return db


async def get_bus(request: Request) -> EventBus:
    """The app's event bus."""
    bus: EventBus = request.app.state.bus
    return bus


async def get_store(request: Request) -> ModelStore:
    """The app's model store."""
    store: ModelStore = request.app.state.store
    return store


async def bearer_token(
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> str | None:
    """The bearer token, if any (checked by the handler against the database)."""
    return creds.credentials if creds else None


async def require_admin(
    request: Request, token: Annotated[str | None, Depends(bearer_token)]
) -> None:
    """Admin calls: 401 without a token, 403 with any other token (a node's, say)."""
    from registry.errors import AuthError, ForbiddenError

    if not token:
        raise AuthError("this call needs the admin token (Authorization: Bearer <token>)")
    if not is_admin_token(request, token):
        raise ForbiddenError("only the admin token may do this")


def is_admin_token(request: Request, token: str) -> bool:
    """Whether `token` is the registry's admin token (compared in constant time)."""
    expected: str | None = getattr(request.app.state, "admin_token", None)
    return expected is not None and secrets.compare_digest(token.encode(), expected.encode())


@dataclass(frozen=True)
class Page:
    """offset/limit query parameters."""

    offset: int
    limit: int


# Every dependency here is async on purpose: FastAPI runs a sync dependency in the
# threadpool, one thread hop per dependency per request.
async def page_params(
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Page:
    """The page asked for."""
    return Page(offset, limit)


SettingsDep = Annotated[RegistrySettings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_db)]
BusDep = Annotated[EventBus, Depends(get_bus)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
TokenDep = Annotated[str | None, Depends(bearer_token)]
PageDep = Annotated[Page, Depends(page_params)]
AdminDep = Depends(require_admin)


def request_token(request: Request) -> str | None:
    """What `TokenDep` yields, for the fast routes outside FastAPI: the credentials of an
    `Authorization: Bearer` header, None without one."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() or None if scheme.lower() == "bearer" else None
