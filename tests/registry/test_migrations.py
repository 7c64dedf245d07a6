"""The Alembic migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from registry.migrate import upgrade
from registry.models import Base
from tests.support.registry_proc import RegistryProcess


def test_migrated_schema_matches_models(database_url: str | None, tmp_path: Path) -> None:
    url = database_url or f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    upgrade(url)  # idempotent: a second start changes nothing
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_unreachable_database_is_a_clear_cli_error(tmp_path: Path) -> None:
    reg = RegistryProcess(
        tmp_path / "r", database_url="postgresql+psycopg://nobody:x@127.0.0.1:1/none"
    )
    try:
        reg.start(timeout=20)
    except RuntimeError as exc:
        message = str(exc)
    else:  # pragma: no cover - would mean it started against nothing
        reg.stop()
        raise AssertionError("registry started without a database")
    assert "error: cannot prepare database" in message
    assert "Traceback" not in message
