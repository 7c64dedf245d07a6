"""Model weights as data: to bytes and back (``np.savez``, no pickle), and the checks every
list of weights from elsewhere passes before it is used (shapes, dtypes, finite values)."""

from __future__ import annotations

import io
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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

_KEY_PREFIX = "w"


def _key(index: int) -> str:
    return f"{_KEY_PREFIX}{index}"


def weights_to_bytes(weights: list[np.ndarray]) -> bytes:
    """Encode a list of arrays as an ``.npz`` blob (no pickle; object arrays refused)."""
    buffer = io.BytesIO()
    arrays = {_key(i): np.asarray(w) for i, w in enumerate(weights)}
    try:
        np.savez(buffer, allow_pickle=False, **arrays)
    except ValueError as exc:
        raise SerializationError(f"Weights cannot be encoded without pickle: {exc}") from exc
    return buffer.getvalue()


def bytes_to_weights(blob: bytes) -> list[np.ndarray]:
    """Decode a blob made by ``weights_to_bytes``; a corrupt blob raises SerializationError."""
    try:
        loaded = np.load(io.BytesIO(blob), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise SerializationError("Not a weights blob: a bare array, not an .npz archive")
        with loaded as npz:
            expected = [_key(i) for i in range(len(npz.files))]
            if sorted(npz.files) != sorted(expected):
                raise SerializationError(
                    f"Not a weights blob: unexpected entries {sorted(npz.files)[:5]}"
                )
            return [npz[key] for key in expected]
    except SerializationError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise SerializationError(
            f"Corrupt weights blob ({len(blob)} bytes): {type(exc).__name__}: {exc}"
        ) from exc


@dataclass(frozen=True)
class WeightsSignature:
    """What a model's weights look like: one ``(shape, dtype kind)`` per tensor, in order.

    Dtype *kinds* are compared (``"f"`` float, ``"i"`` signed int, ...), so a float64
    aggregate fits a float32 model, but an integer tensor never stands in for a float one.
    """

    shapes: tuple[tuple[int, ...], ...]
    kinds: tuple[str, ...]

    @classmethod
    def of(cls, weights: Sequence[np.ndarray]) -> WeightsSignature:
        """The signature of ``weights`` (e.g. a learner's own ``get_weights()``)."""
        arrays = [np.asarray(w) for w in weights]
        return cls(tuple(a.shape for a in arrays), tuple(a.dtype.kind for a in arrays))


def check_weights(weights: Sequence[object], signature: WeightsSignature) -> Weights:
    """``weights`` as arrays, once they fit ``signature`` and hold only finite values.

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
    if not np.isfinite(value) or value < 0 or value != int(value):
        raise RemoteInputError(f"{what} {value!r} is not a non-negative whole number")
    return int(value)


def decode_weights(blob: bytes, signature: WeightsSignature) -> Weights:
    """``bytes_to_weights`` then ``check_weights``: a snapshot from elsewhere, made safe to use.

    Raises ``SerializationError``, ``WeightsMismatchError`` or ``NonFiniteWeightsError``.
    """
    return check_weights(bytes_to_weights(blob), signature)


class SnapshotCache:
    """Checked snapshots by content hash, so N nodes do not each decode the same bytes.

    A snapshot that failed its checks is remembered as failed (its error is raised
    again), so a bad snapshot costs one decode, not one per node that looks at it.
    Holds at most ``limit`` entries, least recently used out first.
    """

    def __init__(self, limit: int = 64) -> None:
        self._items: OrderedDict[str, Weights | RemoteInputError] = OrderedDict()
        self._limit = limit

    def weights(self, sha256: str, data: bytes, signature: WeightsSignature) -> Weights:
        """The weights encoded in ``data``, checked against ``signature`` (cached by hash).

        Raises the ``RemoteInputError`` the checks raised.
        """
        key = f"{sha256}/{hash(signature)}"
        hit = self._items.get(key)
        if hit is None:
            try:
                hit = decode_weights(data, signature)
            except RemoteInputError as exc:
                hit = exc
            self._items[key] = hit
            while len(self._items) > self._limit:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        if isinstance(hit, RemoteInputError):
            raise hit
        return hit
