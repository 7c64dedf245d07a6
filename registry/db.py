"""Database engine and sessions: SQLite (WAL, foreign keys, immediate writes) or PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from registry.readcache import ReadVersions

__all__ = ["Database", "GroupCommit"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_BEGIN_OPTION = "mycelium_sqlite_begin"
EVENTS_PENDING = "mycelium_events_added"
# Set by a transaction that only records heartbeats: it leaves GET /groups as it was.
HEARTBEATS_ONLY = "mycelium_heartbeats_only"


def _configure_sqlite(engine: Engine) -> None:
    """WAL, foreign keys, and BEGIN IMMEDIATE for write transactions.

    pysqlite's own transaction handling starts transactions lazily as DEFERRED;
    two writers that both read first then deadlock on the upgrade to a write lock.
    Writers therefore take the write lock up front; readers do not block anyone (WAL).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """Owns the engine and hands out read and write sessions."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            # Room for every threadpool thread (40) plus the writers: a connection opened
            # beyond the pool is closed again after one request, and reopening costs PRAGMAs.
            kwargs["pool_size"] = 64
            kwargs["max_overflow"] = 64
        else:
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 30
            kwargs["pool_pre_ping"] = True
        self.engine = create_engine(url, **kwargs)
        write_engine = self.engine
        if self.is_sqlite:
            _configure_sqlite(self.engine)
            write_engine = self.engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        self.on_events_committed: Callable[[], None] | None = None
        # What cached read answers are built at (registry.readcache); bumped per commit.
        self.read_versions = ReadVersions()
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(write_engine, expire_on_commit=False)
        # SQLite has one writer at a time, and a writer that finds the lock taken polls
        # with sleeps of up to 100 ms: in-process writers queue on this lock instead.
        # (Re-entrant, so a nested write fails in SQLite as before instead of hanging.)
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if self.is_sqlite else contextlib.nullcontext()
        )
        self._committers: dict[str, GroupCommit[Any, Any]] = {}
        self._committers_lock = threading.Lock()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for queries; rolled back at the end."""
        with self._reader() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that commits on success and rolls back on error."""
        with self._write_lock, self._writer() as session:
            with session.begin():
                yield session
            events = session.info.pop(EVENTS_PENDING, False)
            beats_only = session.info.pop(HEARTBEATS_ONLY, False) and not events
            self.read_versions.bump(heartbeats_only=beats_only)
            if events and self.on_events_committed:
                self.on_events_committed()

    def group_commit(
        self, name: str, apply: Callable[[Session, Sequence[T]], Sequence[R | Exception]]
    ) -> GroupCommit[T, R]:
        """The group-commit writer called `name`, started with `apply` on first use."""
        with self._committers_lock:
            committer = self._committers.get(name)
            if committer is None:
                committer = self._committers[name] = GroupCommit(self, apply, name=name)
            return committer

    def dispose(self) -> None:
        """Finish pending group commits and close every pooled connection."""
        with self._committers_lock:
            committers = list(self._committers.values())
            self._committers.clear()
        for committer in committers:
            committer.close()
        self.engine.dispose()


_Pending = tuple[T, asyncio.AbstractEventLoop, "asyncio.Future[R]"]


def _settle(fut: asyncio.Future[Any], outcome: object) -> None:
    if fut.done():  # the request was cancelled (client gone); its write stands
        return
    if isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)


def _settle_all(pairs: list[tuple[asyncio.Future[Any], object]]) -> None:
    for fut, outcome in pairs:
        _settle(fut, outcome)


class GroupCommit(Generic[T, R]):
    """One thread that writes many small requests in one transaction per batch.

    `submit(item)` queues an item and waits; the thread takes everything queued (up to
    `max_batch`), calls `apply(session, items)` inside one `Database.write()` transaction
    and, only after it committed, hands each caller its outcome: a result, or an
    exception to raise (per-item errors must come before that item's writes). While one
    batch commits the next one gathers, so the commit cost is shared by all its items
    and writers never wait on each other's locks. If the transaction fails, every item
    of the batch gets that error.
    """

    def __init__(
        self,
        db: Database,
        apply: Callable[[Session, Sequence[T]], Sequence[R | Exception]],
        *,
        name: str = "batch",
        max_batch: int = 256,
    ) -> None:
        self._db = db
        self._apply = apply
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending[T, R] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"commit-{name}", daemon=True)
        self._closed = False
        self._thread.start()

    async def submit(self, item: T) -> R:
        """Queue `item`; its outcome once its batch has committed."""
        if self._closed:
            raise RuntimeError("the database is shutting down")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._queue.put((item, loop, fut))
        return await fut

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Pending[T, R]]) -> None:
        outcomes: Sequence[R | Exception]
        try:
            with self._db.write() as session:
                outcomes = self._apply(session, [item for item, _, _ in batch])
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"{self._apply!r} gave {len(outcomes)} outcomes")
        except Exception as exc:  # the transaction failed: every caller gets the reason
            log.warning("group commit of %d items failed: %s", len(batch), exc)
            outcomes = [exc] * len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], object]]] = {}
        for (_, loop, fut), outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((fut, outcome))
        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(_settle_all, pairs)
