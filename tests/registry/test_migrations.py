"""The Alembic migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from registry.migrate import alembic_config, upgrade
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


def test_domain_signatures_migrate_up_and_down_keeping_the_rest(
    database_url: str | None, tmp_path: Path
) -> None:
    # Prepare: a database at 0003 with a group in it
    url = database_url or f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url, "0003")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO groups (name, domain, max_capacity, created_at, updated_at, round, "
                "performance, host_epoch) VALUES ('g', 'digits', 5, CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP, 0, '{}', 0)"
            )
        )

    # Execute: up to 0004, then down again
    upgrade(url, "0004")
    tables_up = set(inspect(engine).get_table_names())
    columns = {c["name"] for c in inspect(engine).get_columns("domain_signatures")}
    command.downgrade(alembic_config(url), "0003")
    engine.dispose()
    tables_down = set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        groups = conn.execute(text("SELECT name FROM groups")).scalars().all()
    engine.dispose()

    # Assert
    assert "domain_signatures" in tables_up
    assert columns == {"domain", "signature", "max_bytes", "source", "declared_by", "declared_at"}
    assert "domain_signatures" not in tables_down
    assert tables_down == tables_up - {"domain_signatures"}
    assert groups == ["g"]


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


def test_event_domains_are_backfilled_from_groups_then_nodes(
    database_url: str | None, tmp_path: Path
) -> None:
    # Prepare: a database at 0006 with a node, its group, and events of each and of neither
    url = database_url or f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url, "0006")
    engine = create_engine(url)
    now = "CURRENT_TIMESTAMP"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO groups (id, name, domain, max_capacity, created_at, updated_at, "
                f"round, performance, host_epoch, aggregation) VALUES (7, 'g', 'alpha', 5, {now}, "
                f"{now}, 0, '{{}}', 0, 'fedavg')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO nodes (id, address, domain, status, capabilities, metrics, "
                "token_hash, registered_at, updated_at, last_heartbeat) VALUES ('n', 'h:1', "
                f"'beta', 'active', '{{}}', '{{}}', 'x', {now}, {now}, {now})"
            )
        )
        for node, group in (("'n'", "7"), ("'n'", "NULL"), ("NULL", "NULL")):
            conn.execute(
                text(
                    "INSERT INTO events (type, node_id, group_id, data, created_at) "
                    f"VALUES ('joined', {node}, {group}, '{{}}', {now})"
                )
            )

    # Execute
    upgrade(url, "0007")
    with engine.connect() as conn:
        domains = conn.execute(text("SELECT domain FROM events ORDER BY id")).scalars().all()
    engine.dispose()

    # Assert: the group's domain wins, then the node's; an event of neither has none
    assert domains == ["alpha", "beta", None]


def test_group_links_migrate_up_and_down_keeping_the_groups(
    database_url: str | None, tmp_path: Path
) -> None:
    # Prepare: a database at 0008 with two groups
    url = database_url or f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url, "0008")
    engine = create_engine(url)
    now = "CURRENT_TIMESTAMP"
    with engine.begin() as conn:
        for gid in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO groups (id, name, domain, max_capacity, created_at, updated_at, "
                    f"round, performance, host_epoch, aggregation, mode) VALUES ({gid}, 'g{gid}', "
                    f"'digits', 5, {now}, {now}, 0, '{{}}', 0, 'fedavg', 'rounds')"
                )
            )

    # Execute: up to 0009, store a link, then down again
    upgrade(url, "0009")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO group_links (group_id, sibling_id, fit, own_fit, loss, examples, "
                f"round, updated_at) VALUES (1, 2, 0.8, 0.7, NULL, 30, 4, {now})"
            )
        )
    columns = {c["name"] for c in inspect(engine).get_columns("group_links")}
    engine.dispose()
    command.downgrade(alembic_config(url), "0008")
    tables_down = set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        groups = conn.execute(text("SELECT name FROM groups ORDER BY id")).scalars().all()
    engine.dispose()

    # Assert
    assert columns == {
        "id",
        "group_id",
        "sibling_id",
        "fit",
        "own_fit",
        "loss",
        "examples",
        "round",
        "updated_at",
    }
    assert "group_links" not in tables_down
    assert groups == ["g1", "g2"]
