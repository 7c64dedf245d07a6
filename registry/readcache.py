"""Read answers built once per change: versions, a cross-worker change watcher, ETags.

`GET /groups`, `GET /groups/{id}` and `GET /nodes` change only when something is written.
Each worker keeps two counters (`ReadVersions`): `state` moves on every committed write
except a heartbeat-only batch, `nodes` moves on every committed write, heartbeats
included (they change `last_heartbeat`, `metrics` and `status`). `Database.write` bumps
them right after its commit, before the writer answers, so within one worker a read
after a write sees it (read-your-writes).

Writes made elsewhere (another uvicorn worker, another process on the same database) are
seen by `ChangeWatcher`, a thread that polls a marker every database commit moves:
SQLite's `PRAGMA data_version` (on a connection of its own), PostgreSQL's
`pg_current_wal_insert_lsn()`. On a change it bumps both counters, and once more on the
following poll (a PostgreSQL commit is in the WAL a moment before it is visible). So a
write through another worker shows in this worker's answers within two poll intervals
(`interval_s`, 0.2 s by default: at most ~0.4 s plus one rebuild). The marker cannot
tell a heartbeat from other writes, nor this worker's commits from others', so under
steady heartbeats `/groups` is rebuilt about once per poll (its ETag stays while its
bytes do).

`AnswerCache` keeps, per query, the serialised answer with its ETag and the version it
was built at; the request path compares two integers and answers from memory. The ETag
is a hash of the bytes, so equal answers carry equal tags in every worker.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from sqlalchemy import Engine, text

__all__ = [
    "Answer",
    "AnswerCache",
    "ChangeWatcher",
    "ReadVersions",
    "etag_matches",
    "etag_of",
]

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.2


class ReadVersions:
    """Two counters read answers are built at; thread-safe, ints only (never reset)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.state = 0  # every write but heartbeat-only batches
        self.nodes = 0  # every write

    def bump(self, *, heartbeats_only: bool = False) -> None:
        """A commit happened: `heartbeats_only` when it changed nothing but node liveness."""
        with self._lock:
            self.nodes += 1
            if not heartbeats_only:
                self.state += 1


def etag_of(body: bytes) -> str:
    """A strong entity tag for `body`: 24 hex digits of its BLAKE2b hash, quoted."""
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an `If-None-Match` header matches `etag` (RFC 9110 13.1.2: `*`, a list,
    weak comparison, so `W/"x"` matches `"x"`). A header that does not parse matches
    nothing."""
    if not if_none_match:
        return False
    value = if_none_match.strip()
    if value == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == opaque for tag in value.split(","))


@dataclass(frozen=True)
class Answer:
    """A built answer: HTTP status, JSON body bytes, and its ETag (200s only)."""

    status: int
    body: bytes
    etag: str | None


class AnswerCache:
    """Answers by key, each valid while the version it was built at is current.

    `get_or_build(key, version, build)` returns the stored answer when it was built at
    `version`, else calls `build()` once (concurrent callers of the same key wait for
    it) and stores the result. At most `max_entries` answers are kept; when full, the
    cache is emptied (a flood of distinct queries costs rebuilds, never memory).
    """

    def __init__(self, *, max_entries: int = 4096) -> None:
        self._max = max_entries
        self._entries: dict[Hashable, tuple[int, Answer]] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()
        self.builds = 0

    def lookup(self, key: Hashable, version: int) -> Answer | None:
        """The stored answer for `key` if built at `version`; no locking, no I/O."""
        entry = self._entries.get(key)
        return entry[1] if entry is not None and entry[0] == version else None

    def get_or_build(
        self, key: Hashable, version: Callable[[], int], build: Callable[[], Answer]
    ) -> Answer:
        """The answer for `key` at the current `version()`, building it if needed.

        `version` is read before `build` runs, so a write committed during the build
        leaves the entry stale and the next call rebuilds."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            at = version()
            found = self.lookup(key, at)
            if found is not None:
                return found
            answer = build()
            with self._guard:
                if len(self._entries) >= self._max:
                    self._entries.clear()
                    self._locks = {key: lock}
                self._entries[key] = (at, answer)
                self.builds += 1
            return answer


class ChangeWatcher:
    """A daemon thread that bumps `versions` when the database changed from elsewhere.

    Polls every `interval_s` seconds on a connection of its own: `PRAGMA data_version`
    on SQLite, `pg_current_wal_insert_lsn()` on PostgreSQL; each poll is one cheap
    statement. A failing poll is logged and retried, and bumps the versions (the state
    is unknown, so answers are rebuilt rather than trusted)."""

    def __init__(
        self, engine: Engine, versions: ReadVersions, *, interval_s: float = WATCH_INTERVAL_S
    ) -> None:
        self._engine = engine
        self._versions = versions
        self._interval_s = interval_s
        self._stop = threading.Event()
        sqlite = engine.dialect.name == "sqlite"
        self._query = text(
            "PRAGMA data_version" if sqlite else "SELECT pg_current_wal_insert_lsn()::text"
        )
        self._thread = threading.Thread(target=self._run, name="read-watcher", daemon=True)

    def start(self) -> ChangeWatcher:
        """Start polling."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and close the connection (waits up to a few intervals)."""
        self._stop.set()
        self._thread.join(timeout=max(5.0, 5 * self._interval_s))

    def _run(self) -> None:
        last: object = None
        changed_last_poll = failing = False
        while not self._stop.is_set():
            try:
                with self._engine.connect() as conn:
                    while not self._stop.is_set():
                        marker = conn.execute(self._query).scalar()
                        conn.rollback()  # hold no transaction (and no SQLite snapshot)
                        failing = False
                        changed = marker != last
                        if changed or changed_last_poll:
                            self._versions.bump()
                        changed_last_poll = changed
                        last = marker
                        self._stop.wait(self._interval_s)
            except Exception as exc:  # keep watching through any database failure
                if not failing:  # once per outage, not once per poll
                    log.warning("read cache: change marker unavailable (%s); retrying", exc)
                failing = True
                self._versions.bump()
                last = None
                self._stop.wait(self._interval_s)
