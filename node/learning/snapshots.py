"""The latest snapshot of each group, fetched once per change and decoded once, shared by
every node of a process.

A node scoring candidate groups needs each group's latest snapshot; N nodes of one process
(``node.runtime.network.InProcessNetwork``) need the same ones. ``SnapshotStore`` holds one
per group: asked with the round the group listing names (``GroupPublic.model_round``) it
answers from memory when it holds that round, and otherwise asks the registry with the
held snapshot's ``ETag`` (``RegistryClient.download_model(..., known=...)``): ``304 Not
Modified`` keeps it, a new snapshot is downloaded and decoded once (``SnapshotCache``).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from node.errors import RemoteInputError
from node.learning.weights import SnapshotCache, Weights, WeightsSignature
from node.registry_client import ModelBlob

__all__ = ["ConditionalSnapshotSource", "LatestSnapshot", "SnapshotStore"]


class ConditionalSnapshotSource(Protocol):
    """Conditional snapshot downloads (``RegistryClient`` fits)."""

    def download_model(
        self, group_id: int, round: int | None = None, *, known: ModelBlob | None = None
    ) -> ModelBlob | None:
        """The latest snapshot; ``known`` itself while it is still the latest."""


class LatestSnapshot(NamedTuple):
    """A group's latest snapshot: its ``round``, ``sha256`` (hex) and checked ``weights``
    (the signature's shapes; shared by every caller: read-only)."""

    round: int
    sha256: str
    weights: Weights


@dataclass
class _Held:
    blob: ModelBlob  # round and hash only: the bytes are not kept
    result: LatestSnapshot | RemoteInputError


class SnapshotStore:
    """The latest snapshot per group and model (tensor shapes and dtype kinds), shared by
    the agents of a process.

    Thread-safe: one lock per group, so two threads asking for one group download it once,
    and different groups are fetched in parallel. A snapshot that fails its checks is held
    as failed: its error is raised again, without another download, until it changes.
    """

    def __init__(self, cache: SnapshotCache | None = None) -> None:
        self.cache = cache if cache is not None else SnapshotCache()
        self._held: dict[tuple[int, int], _Held] = {}
        self._locks: dict[tuple[int, int], threading.Lock] = {}
        self._lock = threading.Lock()
        self.downloads = 0  # snapshots whose bytes were fetched (not 304s)

    def latest(
        self,
        client: ConditionalSnapshotSource,
        group_id: int,
        signature: WeightsSignature,
        model_round: int | None = None,
    ) -> LatestSnapshot | None:
        """The group's latest snapshot, checked against ``signature``; None when the group
        has none.

        ``model_round``: the round of the group's latest snapshot as a listing gave it
        (None: unknown). When it is the round held, no request is made; otherwise one
        conditional download (``304``: the held snapshot stays, as of ``model_round``).

        Raises ``RemoteInputError`` (``SerializationError``, ``WeightsMismatchError``,
        ``NonFiniteWeightsError``) when the snapshot fails its checks, and
        ``RegistryClientError`` when the download fails.
        """
        # What decoding checks (names aside: a snapshot's tensors are numbered).
        key = (group_id, hash((signature.shapes, signature.kinds)))
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            held = self._held.get(key)
            if held is None or model_round is None or held.blob.round != model_round:
                held = self._fetch(client, key, held, signature, model_round)
                if held is None:
                    return None
        if isinstance(held.result, RemoteInputError):
            raise held.result
        return held.result

    def put(
        self,
        group_id: int,
        signature: WeightsSignature,
        round_: int,
        data: bytes,
        weights: Weights,
    ) -> None:
        """Hold a snapshot this process just uploaded (``data``, the bytes sent, decoding
        to the already checked ``weights``) as the group's latest, so no one here downloads
        it back: the next listing names its round; a revalidation gets 304 for its hash."""
        key = (group_id, hash((signature.shapes, signature.kinds)))
        sha256 = hashlib.sha256(data).hexdigest()
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            self._held[key] = _Held(
                ModelBlob(b"", round_, sha256), LatestSnapshot(round_, sha256, weights)
            )

    def _fetch(
        self,
        client: ConditionalSnapshotSource,
        key: tuple[int, int],
        held: _Held | None,
        signature: WeightsSignature,
        model_round: int | None,
    ) -> _Held | None:
        known = held.blob if held is not None else None
        blob = client.download_model(key[0], known=known)
        if blob is None:
            self._held.pop(key, None)
            return None
        if held is not None and blob is known:
            # Same bytes; the listing's round (a re-upload of identical bytes) when given.
            if model_round is not None and model_round != known.round:
                held = self._renumber(held, model_round)
                self._held[key] = held
            return held
        self.downloads += 1
        result: LatestSnapshot | RemoteInputError
        try:
            weights = self.cache.weights(blob.sha256, blob.data, signature)
            result = LatestSnapshot(blob.round, blob.sha256, weights)
        except RemoteInputError as exc:
            result = exc
        held = _Held(ModelBlob(b"", blob.round, blob.sha256), result)
        self._held[key] = held
        return held

    @staticmethod
    def _renumber(held: _Held, round_: int) -> _Held:
        blob = ModelBlob(b"", round_, held.blob.sha256)
        result = held.result
        if isinstance(result, LatestSnapshot):
            result = result._replace(round=round_)
        return _Held(blob, result)
