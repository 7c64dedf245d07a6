"""Recorder: polls the registry in a background thread and keeps the snapshots it takes."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx

from node.registry_client import RegistryClient, RegistryClientError
from viz.snapshot import Snapshot, SnapshotFetcher, file_header, load_snapshots, save_snapshots

__all__ = ["Recorder"]

log = logging.getLogger(__name__)

# A snapshot that could not be taken: the registry unreachable or refusing
# (RegistryClientError), or an answer that does not fit its schema (pydantic's
# ValidationError is a ValueError). The recorder logs it and polls again.
_SKIPPED = (RegistryClientError, ValueError)


class Recorder:
    """Takes a snapshot of the registry every `interval` seconds until stop().

    Polling costs three small HTTP requests per snapshot (more past 1000 nodes, groups or
    new events) and never draws, so it can run next to training. With `path`, each snapshot
    is also appended to that JSON-lines file as it is taken, so an interrupted run still
    leaves a replayable file. It reads through a RegistryClient with `retries` (short, so
    polling keeps its pace) and `timeout` in seconds; `transport` replaces httpx's own.
    When the registry is away the background thread counts the failure in `errors`, logs
    it and tries again at the next interval.
    """

    def __init__(
        self,
        registry_url: str,
        interval: float = 1.0,
        *,
        path: Path | None = None,
        on_snapshot: Callable[[Snapshot], None] | None = None,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        retries: int = 1,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.registry_url = registry_url.rstrip("/")
        self.interval = interval
        self.path = path
        self.on_snapshot = on_snapshot
        self.errors = 0
        self._snapshots: list[Snapshot] = []
        self._lock = threading.Lock()
        self._fetch_lock = threading.Lock()
        self._stop = threading.Event()
        http = (
            None
            if transport is None
            else httpx.Client(base_url=self.registry_url, timeout=timeout, transport=transport)
        )
        self._registry = RegistryClient(
            self.registry_url, timeout=timeout, retries=retries, backoff=0.1, client=http
        )
        self._http = http
        self._fetcher = SnapshotFetcher(self._registry)
        self._thread: threading.Thread | None = None
        self._file: IO[str] | None = None

    @property
    def snapshots(self) -> list[Snapshot]:
        """A copy of the snapshots taken so far."""
        with self._lock:
            return list(self._snapshots)

    def snapshot(self) -> Snapshot:
        """Take one snapshot now (also what the background thread does each interval)."""
        with self._fetch_lock:  # the event cursor must advance one fetch at a time
            snap = self._fetcher.fetch()
        with self._lock:
            self._snapshots.append(snap)
            if self._file is not None:
                self._file.write(json.dumps(snap.to_json(), separators=(",", ":")) + "\n")
                self._file.flush()
        if self.on_snapshot is not None:
            self.on_snapshot(snap)
        return snap

    def start(self) -> Recorder:
        """Start polling in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("recorder already started")
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", encoding="utf-8")
            self._file.write(json.dumps(file_header(self.registry_url)) + "\n")
        self._thread = threading.Thread(target=self._run, name="viz-recorder", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.snapshot()
            except _SKIPPED as exc:
                # The registry may be starting or shutting down; keep the run going.
                self.errors += 1
                log.debug("snapshot failed: %s", exc)
            self._stop.wait(self.interval)

    def stop(self, *, final: bool = True) -> list[Snapshot]:
        """Stop polling; with `final`, take one last snapshot so the end state is recorded."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 10)
        if final:
            try:
                self.snapshot()
            except _SKIPPED as exc:
                log.debug("final snapshot failed: %s", exc)
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
        self._registry.close()
        if self._http is not None:
            self._http.close()
        return self.snapshots

    def save(self, path: Path) -> None:
        """Write every snapshot taken so far to a JSON-lines file."""
        save_snapshots(path, self.snapshots, registry_url=self.registry_url)

    @staticmethod
    def load(path: Path) -> list[Snapshot]:
        """Snapshots from a saved file, for replay."""
        return load_snapshots(path)

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
