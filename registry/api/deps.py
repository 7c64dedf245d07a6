"""Injected dependencies: settings, database, sessions, the calling node."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from registry.db import Database
from registry.events import EventBus
from registry.settings import RegistrySettings
from registry.storage import ModelStore

__all__ = [
    "BusDep",
    "DatabaseDep",
    "Page",
    "PageDep",
    "SettingsDep",
    "StoreDep",
    "TokenDep",
]

_bearer = HTTPBearer(auto_error=False, description="The node's token from /nodes/register.")


def get_settings(request: Request) -> RegistrySettings:
    """The app's settings."""
    settings: RegistrySettings = request.app.state.settings
    return settings


def get_db(request: Request) -> Database:
    """The app's database."""
    db: Database = request.app.state.db
    return db


def get_bus(request: Request) -> EventBus:
    """The app's event bus."""
    bus: EventBus = request.app.state.bus
    return bus


def get_store(request: Request) -> ModelStore:
    """The app's model store."""
    store: ModelStore = request.app.state.store
    return store


def bearer_token(
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    """The bearer token, if any (checked by the handler against the database)."""
    return creds.credentials if creds else None


class Page:
    """offset/limit query parameters."""

    def __init__(
        self,
        offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> None:
        self.offset = offset
        self.limit = limit


SettingsDep = Annotated[RegistrySettings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_db)]
BusDep = Annotated[EventBus, Depends(get_bus)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
TokenDep = Annotated[str | None, Depends(bearer_token)]
PageDep = Annotated[Page, Depends()]
