"""Model weights as data: to bytes and back, and the checks every list of weights from
elsewhere passes before it is used (shapes, dtype kinds, finite values).

The format and its bounded decoding are ``registry.wire``'s, shared with the registry;
this module raises the node's errors (``node.errors``) for what that module refuses.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

import registry.wire as wire
from node.errors import (
    NonFiniteWeightsError,
    RemoteInputError,
    SerializationError,
    WeightsMismatchError,
)

__all__ = [
    "SnapshotCache",
    "Weights",
    "WeightsSignature",
    "bytes_to_weights",
    "check_count",
    "check_weights",
    "decode_weights",
    "weights_to_bytes",
]

Weights = list[np.ndarray]

# The model signature (``registry.wire.ModelSignature``) under the node's name for it: one
# (name, shape, dtype) per tensor. ``WeightsSignature.of(learner.get_weights(),
# learner.weight_names)`` is the signature a node declares to the registry.
WeightsSignature = wire.ModelSignature


def _node_error(exc: wire.WireError) -> RemoteInputError:
    """The node's error for what ``registry.wire`` refused."""
    if isinstance(exc, wire.SignatureMismatchError):
        return WeightsMismatchError(str(exc))
    if isinstance(exc, wire.NonFiniteError):
        return NonFiniteWeightsError(str(exc))
    return SerializationError(str(exc))


def weights_to_bytes(weights: Sequence[np.ndarray]) -> bytes:
    """Encode arrays as a snapshot (uncompressed ``.npz``, no pickle), in order.

    Raises ``SerializationError`` for an array no snapshot may carry (objects, strings).
    """
    try:
        return wire.weights_to_bytes(weights)
    except wire.WireError as exc:
        raise _node_error(exc) from exc


def bytes_to_weights(
    blob: bytes,
    signature: WeightsSignature | None = None,
    *,
    max_bytes: int | None = None,
) -> Weights:
    """Decode a snapshot made by ``weights_to_bytes``, bounded before any data is read: by
    ``signature``'s shapes (dtypes compared by kind) when given, by ``max_bytes`` when given
    (default: ``registry.wire.DEFAULT_MAX_BYTES`` without a signature).

    Raises ``SerializationError`` (not a snapshot, compressed, pickle, over the cap) or
    ``WeightsMismatchError`` (does not fit ``signature``). Values are not checked.
    """
    try:
        return wire.bytes_to_weights(
            blob, signature, max_bytes=max_bytes, exact_dtypes=False, reader=True
        )
    except wire.WireError as exc:
        raise _node_error(exc) from exc


def check_weights(weights: Sequence[object], signature: WeightsSignature) -> Weights:
    """``weights`` as arrays, once they fit ``signature`` and hold only finite values.

    Dtype *kinds* are compared (``"f"`` float, ``"i"`` signed int, ...), so a float64
    aggregate fits a float32 model, but an integer tensor never stands in for a float one
    (the registry, which stores snapshots for everyone, compares exact dtypes).

    Raises ``WeightsMismatchError`` (tensor count, shape or dtype kind differ) or
    ``NonFiniteWeightsError`` (a NaN or infinity); both are ``RemoteInputError``.
    """
    if len(weights) != len(signature.shapes):
        raise WeightsMismatchError(
            f"Got {len(weights)} arrays for a model with {len(signature.shapes)} tensors"
        )
    arrays: Weights = []
    for i, (w, shape, kind) in enumerate(
        zip(weights, signature.shapes, signature.kinds, strict=True)
    ):
        if not isinstance(w, np.ndarray):
            raise WeightsMismatchError(f"Tensor {i} is a {type(w).__name__}, not an array")
        if w.shape != shape:
            raise WeightsMismatchError(f"Tensor {i}: shape {w.shape} does not match {shape}")
        if w.dtype.kind != kind:
            raise WeightsMismatchError(
                f"Tensor {i}: dtype {w.dtype} is not of the model's kind {kind!r}"
            )
        if w.dtype.kind in "fc" and not np.isfinite(w).all():
            raise NonFiniteWeightsError(f"Tensor {i} holds NaN or infinite values")
        arrays.append(w)
    return arrays


def check_count(value: object, *, what: str) -> int:
    """``value`` as a count from elsewhere (examples behind an update, a model's age).

    Raises ``RemoteInputError`` naming ``what`` unless it is a non-negative integer.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RemoteInputError(f"{what} {value!r} is not a number")
    if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
        raise RemoteInputError(f"{what} {value!r} is not a non-negative whole number")
    if value < 0:
        raise RemoteInputError(f"{what} {value!r} is not a non-negative whole number")
    return int(value)


def decode_weights(blob: bytes, signature: WeightsSignature) -> Weights:
    """``bytes_to_weights`` then ``check_weights``: a snapshot from elsewhere, made safe to use.

    Raises ``SerializationError``, ``WeightsMismatchError`` or ``NonFiniteWeightsError``.
    """
    return check_weights(bytes_to_weights(blob, signature), signature)


class SnapshotCache:
    """Checked snapshots by content hash, so N nodes do not each decode the same bytes.

    A snapshot that failed its checks is remembered as failed (its error is raised
    again), so a bad snapshot costs one decode, not one per node that looks at it.
    Holds at most ``limit`` entries, least recently used out first. Thread-safe (two
    threads may both decode one new snapshot; one result is kept).
    """

    def __init__(self, limit: int = 64) -> None:
        self._items: OrderedDict[str, Weights | RemoteInputError] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def weights(self, sha256: str, data: bytes, signature: WeightsSignature) -> Weights:
        """The weights encoded in ``data``, checked against ``signature`` (cached by hash).

        Raises the ``RemoteInputError`` the checks raised.
        """
        key = f"{sha256}/{hash(signature)}"
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
        if hit is None:
            try:
                hit = decode_weights(data, signature)
            except RemoteInputError as exc:
                hit = exc
            with self._lock:
                self._items[key] = hit
                while len(self._items) > self._limit:
                    self._items.popitem(last=False)
        if isinstance(hit, RemoteInputError):
            raise hit
        return hit
