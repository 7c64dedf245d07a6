"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import FreshDatabase, ensure_server
from tests.support.registry_proc import RegistryProcess
from tests.support.tls import TestPKI, make_pki

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The local PostgreSQL server, started if it is not running."""
    return ensure_server()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """A fresh database of each backend: None means the default SQLite file."""
    if request.param == "sqlite":
        yield None
        return
    db = FreshDatabase(request.getfixturevalue("postgres_admin_url"))
    try:
        yield db.url
    finally:
        db.drop()


@pytest.fixture
def registry(tmp_path: Path, database_url: str | None) -> Iterator[RegistryProcess]:
    """A running registry process on SQLite and on PostgreSQL."""
    with RegistryProcess(tmp_path / "registry", database_url=database_url) as proc:
        yield proc


@pytest.fixture(scope="module")
def sqlite_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """One SQLite registry shared by a module's tests (each uses its own node ids)."""
    with RegistryProcess(tmp_path_factory.mktemp("registry")) as proc:
        yield proc


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """A throwaway CA and its server certificate for 127.0.0.1 and localhost."""
    return make_pki(tmp_path_factory.mktemp("pki"))
