"""Counting what a node refused: every input from elsewhere that failed its checks.

Each refusal is one log line (the input, the reason) and one count by kind, so a node's
heartbeat can carry how much it refused (``rejected_inputs``) and a user can see a
stranger at work without reading logs.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Mapping

from node.errors import RemoteInputError

__all__ = ["Rejections"]

log = logging.getLogger(__name__)


class Rejections:
    """Refused inputs of one node (or one group's host), counted by error kind.

    Thread-safe: a node's Flower client, host and decision loop may record at once.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def record(self, what: str, exc: RemoteInputError) -> None:
        """Count ``exc`` (by its class name) and log one line: ``what`` was skipped, why."""
        with self._lock:
            self._counts[type(exc).__name__] += 1
        log.warning("%s: %s skipped: %s", self.owner, what, exc)

    def add(self, counts: Mapping[str, int]) -> None:
        """Count refusals recorded elsewhere (a worker process logged them already)."""
        with self._lock:
            self._counts.update(counts)

    @property
    def total(self) -> int:
        """Inputs refused so far."""
        with self._lock:
            return sum(self._counts.values())

    def counts(self) -> dict[str, int]:
        """Inputs refused so far, by error kind (``NonFiniteWeightsError``: 3, ...)."""
        with self._lock:
            return dict(self._counts)
