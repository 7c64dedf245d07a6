"""Leader election among the registry's workers: exactly one runs the background jobs.

`mycelium registry --workers N` starts N processes that each build the app. Requests
go to any of them, but the liveness sweeper (with retention pruning) and the simulation
manager's runner must run once per registry, so each worker asks for a lease and the one
that holds it leads:

- PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) held on a
  dedicated connection for as long as the worker leads. The server drops it with the
  connection: a worker that dies or loses its connection loses the lead.
- SQLite: an exclusive ``fcntl.flock`` on ``<data-dir>/leader.lock``. The kernel drops
  it when the process dies, however it dies, so there is no expiry to tune, no clock to
  trust and no renewal write competing for SQLite's one write lock (a lease row would
  need all three). SQLite is one file on one machine, as are the workers sharing it.

Workers that do not lead keep serving requests and try to take the lease every
`leader_check_s` seconds, so a dead leader is replaced within that time; the leader
checks its lease as often and stops its jobs when the lease is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import Connection, Engine, text

from registry.db import Database
from registry.liveness import Sweeper
from registry.metrics import LEADER
from registry.models import utcnow
from registry.settings import RegistrySettings
from registry.simulations import SimulationManager

__all__ = [
    "ADVISORY_LOCK_KEY",
    "AdvisoryLease",
    "FileLease",
    "Leadership",
    "Lease",
    "background_jobs",
]

log = logging.getLogger(__name__)

# "mycelium leader" in a bigint; other advisory keys (simulations.py) are different.
ADVISORY_LOCK_KEY = 0x6D79_6C65_6164


class Lease(Protocol):
    """Something at most one process holds at a time."""

    def acquire(self) -> bool:
        """Take the lease if free; True when this process now holds it."""
        ...

    def held(self) -> bool:
        """Whether the lease taken by `acquire` is still held."""
        ...

    def release(self) -> None:
        """Give the lease up (idempotent)."""
        ...


class FileLease:
    """An exclusive `flock` on a file; the kernel releases it when the holder dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def acquire(self) -> bool:
        """Lock the file without waiting; OSError when it cannot be opened."""
        if self._file is not None:
            return True
        handle = self.path.open("ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        return True

    def held(self) -> bool:
        """A flock lasts as long as its open file."""
        return self._file is not None

    def release(self) -> None:
        """Unlock by closing the file."""
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None


class AdvisoryLease:
    """A PostgreSQL session-level advisory lock on a connection kept for the purpose."""

    def __init__(self, engine: Engine, key: int = ADVISORY_LOCK_KEY) -> None:
        self._engine = engine
        self._key = key
        self._conn: Connection | None = None

    def acquire(self) -> bool:
        """`pg_try_advisory_lock` on a fresh autocommit connection; DB errors propagate."""
        if self._conn is not None:
            return True
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key}))
        except Exception:
            conn.invalidate()
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def held(self) -> bool:
        """The lock lives as long as its connection; a failed round trip means it is gone."""
        if self._conn is None:
            return False
        try:
            self._conn.scalar(text("SELECT 1"))
        except Exception:
            log.warning("leader: lost the database connection holding the lead")
            self._drop(invalidate=True)
            return False
        return True

    def release(self) -> None:
        """Unlock and return the connection to the pool."""
        if self._conn is None:
            return
        try:
            self._conn.scalar(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
        except Exception:  # the connection is gone, and the lock with it
            self._drop(invalidate=True)
            return
        self._drop(invalidate=False)

    def _drop(self, *, invalidate: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                if invalidate:
                    conn.invalidate()
                conn.close()


class Leadership:
    """Keeps trying to take `lease`; runs `on_elected` when it does and `on_deposed` when
    it is lost or given up (at `stop`). Both run on this object's thread (or in `stop`)."""

    def __init__(
        self,
        lease: Lease,
        *,
        check_s: float,
        on_elected: Callable[[], None],
        on_deposed: Callable[[], None],
    ) -> None:
        self._lease = lease
        self._check_s = check_s
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._stop = threading.Event()
        self._leading = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="registry-leader", daemon=True)

    @property
    def leading(self) -> bool:
        """Whether this worker runs the background jobs now."""
        return self._leading

    def start(self) -> None:
        """Try at once, then every `check_s` seconds."""
        self._thread.start()

    def stop(self) -> None:
        """Stop trying; if leading, stop the jobs and release the lease."""
        self._stop.set()
        self._thread.join(timeout=30)
        with self._lock:
            if self._leading:
                self._step_down()
            self._lease.release()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    self._check()
                except Exception:  # the database is away: try again next time
                    log.exception("leader: lease check failed")
            self._stop.wait(self._check_s)

    def _check(self) -> None:
        if self._leading:
            if not self._lease.held():
                self._step_down()
            return
        if self._lease.acquire():
            self._leading = True
            log.info("leader: worker pid %d runs the sweeper and simulations", os.getpid())
            try:
                self._on_elected()
            except Exception:
                log.exception("leader: could not start the background jobs; giving up the lead")
                self._step_down()
                self._lease.release()

    def _step_down(self) -> None:
        self._leading = False
        log.info("leader: worker pid %d no longer leads", os.getpid())
        try:
            self._on_deposed()
        except Exception:
            log.exception("leader: stopping the background jobs failed")


def background_jobs(
    db: Database, settings: RegistrySettings, simulations: SimulationManager
) -> Leadership:
    """The leadership (not yet started) that runs the liveness sweeper and `simulations`
    in this worker while it leads: an advisory lock on PostgreSQL, a lock on
    ``<data-dir>/leader.lock`` on SQLite."""
    lease: Lease = (
        FileLease(settings.data_dir / "leader.lock") if db.is_sqlite else AdvisoryLease(db.engine)
    )
    started_at = utcnow()
    sweepers: list[Sweeper] = []

    def elected() -> None:
        simulations.lead()
        sweeper = Sweeper(db, settings, started_at=started_at)
        sweepers.append(sweeper)
        sweeper.start()
        LEADER.set(1)

    def deposed() -> None:
        LEADER.set(0)
        while sweepers:
            sweepers.pop().stop()
        simulations.step_down()

    return Leadership(
        lease, check_s=settings.leader_check_s, on_elected=elected, on_deposed=deposed
    )
