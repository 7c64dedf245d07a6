"""Liveness sweeper: expires silent nodes, archives groups left empty past a grace period
and, every `prune_interval_s`, prunes old history (registry.retention)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from registry import crud
from registry.db import Database
from registry.models import utcnow
from registry.retention import prune_once
from registry.settings import RegistrySettings

__all__ = ["Sweeper", "sweep_once"]

log = logging.getLogger(__name__)


def sweep_once(
    db: Database, settings: RegistrySettings, *, started_at: dt.datetime | None = None
) -> tuple[int, int]:
    """One pass: returns (nodes expired, groups archived).

    Nodes are not expired until the registry has been up for one TTL: after a restart
    (or an outage) every node gets a full TTL to check back in, instead of all being
    expired at the first sweep for the silence the outage caused.
    """
    now = utcnow()
    ttl = settings.effective_ttl
    stale: list[str] = []
    if started_at is None or (now - started_at).total_seconds() >= ttl:
        with db.read() as session:
            stale = crud.stale_node_ids(session, now=now, ttl=ttl)
    expired = 0
    for node_id in stale:  # one short transaction each, so joins are never held up long
        with db.write() as session:
            expired += crud.expire_nodes(session, node_id=node_id, now=now, ttl=ttl)
    with db.write() as session:
        archived = crud.archive_empty_groups(session, now=now, grace=settings.archive_grace)
    if expired or archived:
        log.info("liveness: expired %s nodes, archived %s groups", expired, len(archived))
    return expired, len(archived)


class Sweeper:
    """Runs sweep_once every `sweep_interval` seconds in a daemon thread, and prune_once
    at the first sweep and then every `prune_interval_s` seconds."""

    def __init__(
        self, db: Database, settings: RegistrySettings, *, started_at: dt.datetime | None = None
    ) -> None:
        self._db = db
        self._settings = settings
        self._stop = threading.Event()
        # When the registry started (a worker taking the lead later keeps that time).
        self._started_at = started_at or utcnow()
        self._thread = threading.Thread(target=self._run, name="liveness-sweeper", daemon=True)

    def start(self) -> None:
        """Start sweeping."""
        self._thread.start()

    def stop(self) -> None:
        """Stop and wait for the current pass to end."""
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        next_prune = time.monotonic()
        while not self._stop.wait(self._settings.sweep_interval):
            try:
                sweep_once(self._db, self._settings, started_at=self._started_at)
            except Exception:  # keep sweeping through transient database errors
                log.exception("liveness sweep failed")
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self._settings.prune_interval_s
                try:
                    prune_once(self._db, self._settings)
                except Exception:  # the next pass tries again
                    log.exception("retention pruning failed")
