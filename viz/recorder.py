"""Recorder: polls the registry in a background thread, streams the snapshots it takes to
a file and keeps the latest of them in memory."""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx

from node.registry_client import RegistryClient, RegistryClientError
from viz.snapshot import Snapshot, SnapshotFetcher, file_header, load_snapshots, save_snapshots

__all__ = ["DEFAULT_KEEP", "Recorder"]

log = logging.getLogger(__name__)

# A snapshot that could not be taken: the registry unreachable or refusing
# (RegistryClientError), or an answer that does not fit its schema (pydantic's
# ValidationError is a ValueError). The recorder logs it and polls again.
_SKIPPED = (RegistryClientError, ValueError)
# Snapshots a recorder keeps in memory by default: a long run's history lives in its file.
DEFAULT_KEEP = 500


class Recorder:
    """Takes a snapshot of the registry every `interval` seconds until stop().

    Polling costs three small HTTP requests per snapshot (more past 1000 nodes, groups or
    new events) and never draws, so it can run next to training. With `path`, each snapshot
    is appended to that JSON-lines file as it is taken, so the file holds the whole run (an
    interrupted one too); memory holds only the latest `keep` snapshots (None: all of
    them), so a run of any length costs bounded memory. It reads through a RegistryClient
    with `retries` (short, so polling keeps its pace) and `timeout` in seconds;
    `transport` replaces httpx's own; `ca_cert` is the PEM CA an https registry's
    certificate chains to. When the registry is away the background thread
    counts the failure in `errors`, logs it and tries again at the next interval.
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
        keep: int | None = DEFAULT_KEEP,
        ca_cert: Path | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        if keep is not None and keep < 1:
            raise ValueError("keep must be at least 1 snapshot (None: keep them all)")
        self.registry_url = registry_url.rstrip("/")
        self.interval = interval
        self.path = path
        self.on_snapshot = on_snapshot
        self.errors = 0
        self._snapshots: deque[Snapshot] = deque(maxlen=keep)
        self._taken = 0
        self._lock = threading.Lock()
        self._fetch_lock = threading.Lock()
        self._stop = threading.Event()
        http = (
            None
            if transport is None
            else httpx.Client(base_url=self.registry_url, timeout=timeout, transport=transport)
        )
        self._registry = RegistryClient(
            self.registry_url,
            timeout=timeout,
            retries=retries,
            backoff=0.1,
            client=http,
            ca_cert=ca_cert,
        )
        self._http = http
        self._fetcher = SnapshotFetcher(self._registry)
        self._thread: threading.Thread | None = None
        self._file: IO[str] | None = None

    @property
    def snapshots(self) -> list[Snapshot]:
        """A copy of the snapshots in memory: the latest `keep` taken, oldest first (the
        file, with a `path`, holds every one)."""
        with self._lock:
            return list(self._snapshots)

    @property
    def taken(self) -> int:
        """How many snapshots were taken so far (in memory or not)."""
        with self._lock:
            return self._taken

    def snapshots_since(self, index: int) -> list[Snapshot]:
        """The snapshots in memory whose `index` is at least `index`, oldest first (those
        that already left the memory window are skipped)."""
        with self._lock:
            return [s for s in self._snapshots if s.index >= index]

    def snapshot(self) -> Snapshot:
        """Take one snapshot now (also what the background thread does each interval)."""
        with self._fetch_lock:  # the event cursor must advance one fetch at a time
            snap = self._fetcher.fetch()
        with self._lock:
            self._snapshots.append(snap)
            self._taken += 1
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
        """Stop polling; with `final`, take one last snapshot so the end state is recorded.
        Returns the snapshots in memory (the latest `keep`)."""
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
        """Write the snapshots in memory (the latest `keep`) to a JSON-lines file."""
        save_snapshots(path, self.snapshots, registry_url=self.registry_url)

    @staticmethod
    def load(path: Path) -> list[Snapshot]:
        """Snapshots from a saved file, for replay."""
        return load_snapshots(path)

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
