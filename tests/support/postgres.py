"""The local PostgreSQL 15 server, started for the tests, with a fresh database per use."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import psycopg

ROLE = "mycelium_test"
PASSWORD = "mycelium_test"
ADMIN_URL_ENV = "MYCELIUM_TEST_POSTGRES_ADMIN_URL"


def _run_as_postgres(sql: str) -> None:
    subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-v", "ON_ERROR_STOP=1", "-qc", sql],
        check=True,
        capture_output=True,
    )


def ensure_server() -> str:
    """Start the cluster if needed and return an admin URL (a role that may create databases)."""
    if ADMIN_URL_ENV in os.environ:
        return os.environ[ADMIN_URL_ENV]
    if shutil.which("pg_ctlcluster") is None:
        raise RuntimeError("PostgreSQL 15 is not installed: run `make system-deps` (as root)")
    status = subprocess.run(["pg_ctlcluster", "15", "main", "status"], capture_output=True)
    if status.returncode != 0:
        subprocess.run(["pg_ctlcluster", "15", "main", "start"], check=True)
    url = f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:5432/postgres"
    deadline = time.monotonic() + 30
    while True:
        try:
            _run_as_postgres(
                f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='{ROLE}') THEN "
                f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'; END IF; END$$;"
            )
            # DROP DATABASE ... WITH (FORCE) must end every session on a test database,
            # an autovacuum worker's too, which needs this (seen: "must be a member of the
            # role whose process is being terminated or member of pg_signal_backend").
            _run_as_postgres(f"GRANT pg_signal_backend TO {ROLE}")
            with psycopg.connect(url, connect_timeout=3):
                return url
        except (subprocess.CalledProcessError, psycopg.OperationalError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class FreshDatabase:
    """A new empty database; `url` is an SQLAlchemy URL; drop() removes it."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.name = f"mycelium_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        self.url = f"{base}/{self.name}"

    def drop(self) -> None:
        """Drop the database, closing any session left on it."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
